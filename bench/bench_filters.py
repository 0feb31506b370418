"""64-byte UDP datagrams/s through a lab server's INPUT hook: a BPF filter in the kernel against it in user space.

Notebook 07's question, measured long enough for this machine's noise: iperf3
(Debian's) sends 64-byte UDP datagrams to port 9000 as fast as it can for
SECONDS seconds; the figure is what the receiving iperf3 got per second.
Configurations, REPEATS times in alternation, a fresh lab each time, median
reported:
  (a) no rule at all;
  (b) a pktlab session whose ``filter=`` is notebook 07's shortest
      expression (23 BPF instructions): the program runs in the kernel (xt_bpf)
      in front of the queue, matches no datagram (their source port is not 7),
      so none is queued; the script checks that none reached the queue;
  (c) the same with the longest expression, 64 instructions (xt_bpf's limit);
  (d) the 64-instruction program run in user space: every datagram queued
      (fail-closed, so what arrives is what the handler filtered), a handler
      calling ``prog.matches(pkt)``.
Run: `.venv/bin/python bench/bench_filters.py` (as root).
"""

from __future__ import annotations

import os
import statistics
from collections.abc import Callable

from harness import alternate, iperf_udp64, run_one_if_asked

import pktlab

SECONDS = float(os.environ.get("BENCH_SECONDS", "3"))
REPEATS = int(os.environ.get("BENCH_REPEATS", "5"))
PORT = 9000
RULE = f"-p udp --dport {PORT}"


def expression(k: int) -> str:
    """Notebook 07's filters: each ``and not src port N`` one instruction more; the last test fails."""
    return f"udp and dst port {PORT}" + "".join(f" and not src port {100 + n}" for n in range(k)) + " and src port 7"


def no_rule(lab: pktlab.Lab) -> tuple[float, float]:
    return iperf_udp64(lab, PORT, SECONDS)


def in_kernel(k: int) -> Callable[[pktlab.Lab], tuple[float, float]]:
    def run(lab: pktlab.Lab) -> tuple[float, float]:
        with pktlab.attach(1, rule=RULE, filter=expression(k), netns=lab.server, fail_open=False) as s:
            r = iperf_udp64(lab, PORT, SECONDS)
            assert s.status().packets == 0, "a datagram reached the queue past the kernel's filter"
            return r

    return run


def in_user_space(lab: pktlab.Lab) -> tuple[float, float]:
    prog = pktlab.bpf.compile(expression(41))
    with pktlab.attach(1, rule=RULE, netns=lab.server, fail_open=False) as s:

        @s.handler
        def bpf_in_user_space(pkt):
            return pkt.drop() if prog.matches(pkt) else None

        r = iperf_udp64(lab, PORT, SECONDS)
        assert not s.errors and s.status().packets > 0
        return r


CONFIGS: dict[str, Callable[[pktlab.Lab], tuple[float, float]]] = {
    "(a) no rule": no_rule,
    f"(b) filter in the kernel, {len(pktlab.bpf.compile(expression(0)))} instructions": in_kernel(0),
    f"(c) filter in the kernel, {len(pktlab.bpf.compile(expression(41)))} instructions": in_kernel(41),
    f"(d) the {len(pktlab.bpf.compile(expression(41)))}-instruction filter in a handler": in_user_space,
}


def main() -> int:
    if (code := run_one_if_asked(CONFIGS)) is not None:
        return code
    runs = alternate(__file__, CONFIGS, REPEATS, lambda _, r: f"{r[0]:,.0f} pkt/s received, {r[1]:.1%} lost", 120)
    meds = {name: statistics.median(p for p, _ in rs) for name, rs in runs.items()}
    base = meds["(a) no rule"]
    print(f"\n64-byte UDP via iperf3, {SECONDS:g} s per run, median of {REPEATS}, {os.cpu_count()} CPUs\n")
    print("| configuration | received pkt/s | ratio to (a) | sender-side loss (median) | runs (pkt/s) |")
    print("|---|---|---|---|---|")
    for name, rs in runs.items():
        loss = statistics.median(x for _, x in rs)
        all_runs = ", ".join(f"{p:,.0f}" for p, _ in rs)
        print(f"| {name} | {meds[name]:,.0f} | {meds[name] / base:.1%} | {loss:.1%} | {all_runs} |")
    kern, user = list(meds.values())[2], list(meds.values())[3]
    ratios = sorted(k[0] / u[0] for k, u in zip(list(runs.values())[2], list(runs.values())[3], strict=True))
    print(f"\nkernel / user space at 64 instructions: {kern / user:.2f}x (per round: "
          + ", ".join(f"{r:.2f}" for r in ratios) + ")")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
