"""64-byte UDP packets/s through a lab server's INPUT hook: no rule vs an offloaded accept vs a pktlab handler.

Method: iperf3 (Debian's) in the lab sends 64-byte UDP datagrams as fast as
it can for SECONDS seconds from the client to an iperf3 server in the server
namespace; the figure is what the receiving iperf3 got per second.
Configurations, REPEATS times in alternation, a fresh lab each time, median
reported:
  (a) no rule at all;
  (b) a pktlab session on the server's INPUT queue with the decision
      offloaded (``s.offload("udp and dst port 5201", "accept")``): every
      datagram meets the xt_bpf rule in front of the queue rule and is
      accepted there, in the kernel;
  (c) the same decision in a pktlab handler (``return pkt.accept()``), every
      datagram through the queue and the reader thread.  The queue is
      fail-closed here, so what arrives is what the handler accepted;
  (d) a handler that returns ``pkt.accept(flow=True)``: the first datagram of
      the flow goes through the queue, the kernel accepts the rest
      (conntrack, the connection's mark copied to the packet, and a mark rule
      in front of the queue rule; the session attached with
      ``flow_verdicts=True``);
  (e) a pktlab session with no handler (fail-closed: what arrives went through
      the queue): issue 16's "UDP 64 B, pktlab no handler" against (a);
  (t) no pktlab, conntrack on in the server's namespace (an nftables chain
      at INPUT with one ``ct mark`` rule that matches nothing): what tracking
      the connection costs, which (d) pays before any rule of pktlab's.
CPU accounting (second table): /proc/stat per CPU, and this process's and
its queue reader thread's /proc/self/.../stat, around each iperf3 run: how
busy each CPU was, CPU-microseconds per received datagram (all CPUs, all
processes, softirq included), and of those the notebook process's user and
system time (the reader's in brackets).  The last column is the most a
configuration with a queue could reach if pktlab's user-space part cost
nothing: every CPU busy, each datagram sent costing what the run's CPU time
minus the process's user time, spread over every datagram sent (also those
the full queue dropped), cost (the kernel's queue path, with pktlab's
batching); an upper bound, since a dropped datagram costs less than one
delivered.
Run: `.venv/bin/python bench/bench_offload.py` (as root; ``BENCH_CONFIGS=d,t`` runs
only those and (a)).
"""

from __future__ import annotations

import os
import statistics
from collections.abc import Callable

from harness import alternate, cpu_meter, run_one_if_asked, udp_flood

import pktlab

SECONDS = float(os.environ.get("BENCH_SECONDS", "3"))
REPEATS = int(os.environ.get("BENCH_REPEATS", "5"))
PORT = 5201


Result = tuple[float, float, dict]  # received datagrams/s, loss, CPU accounting (harness.cpu_meter)


def iperf(lab: pktlab.Lab, queue: int | None = 1) -> Result:
    """One run; the CPU accounting also holds where the datagrams not received were lost (``queue_dropped``:
    queue ``queue`` dropped them, its socket or the queue full; ``receiver_dropped``: the receiving socket)."""
    f = udp_flood(lab, PORT, SECONDS, queue=queue, meter=cpu_meter)
    cpu = f["cpu"]
    cpu["queue_dropped"], cpu["receiver_dropped"] = f["queue_dropped"], f["receiver_dropped"]
    return f["pps"], (1 - f["pps"] / f["sent_pps"]) if f["sent_pps"] else 1.0, cpu


def no_rule(lab: pktlab.Lab) -> Result:
    return iperf(lab, None)


def offloaded(lab: pktlab.Lab) -> Result:
    s = pktlab.attach(1, rule=f"-p udp --dport {PORT}", netns=lab.server, bypass=False, fail_open=False)
    try:
        s.offload(f"udp and dst port {PORT}", "accept")
        r = iperf(lab)
        assert s.record.n == 0, "a packet reached the queue past the offload"
        return r
    finally:
        s.detach()


def in_handler(lab: pktlab.Lab) -> Result:
    s = pktlab.attach(
        1, rule=f"-p udp --dport {PORT}", netns=lab.server, bypass=False, fail_open=False, max_len=1 << 16
    )
    try:

        @s.handler
        def accept_iperf(pkt):
            if pkt.udp.dport == PORT:
                return pkt.accept()
            return None

        return iperf(lab)
    finally:
        s.detach()


def flow_verdict(lab: pktlab.Lab) -> Result:
    s = pktlab.attach(1, rule=f"-p udp --dport {PORT}", netns=lab.server, bypass=False, fail_open=False,
                      flow_verdicts=True)  # fmt: skip
    try:

        @s.handler
        def accept_the_flow(pkt):
            return pkt.accept(flow=True)

        r = iperf(lab)
        assert len(s.flows_offloaded) >= 1, "no flow was decided in the kernel"
        return r
    finally:
        s.detach()


def no_handler(lab: pktlab.Lab) -> Result:
    s = pktlab.attach(1, rule=f"-p udp --dport {PORT}", netns=lab.server, bypass=False, fail_open=False)
    try:
        r = iperf(lab)
        assert s.record.n > 0, "no packet reached the queue"
        return r
    finally:
        s.detach()


def conntrack_only(lab: pktlab.Lab) -> Result:
    table = (
        "table inet pktlab_bench_ct {\n chain input {\n  type filter hook input priority 0;\n"
        "  ct mark 0x1 counter\n }\n}\n"
    )
    lab.server.run(["nft", "-f", "-"], input=table)
    try:
        return iperf(lab, None)
    finally:
        lab.server.run(["nft", "delete", "table", "inet", "pktlab_bench_ct"])


CONFIGS: dict[str, Callable[[pktlab.Lab], Result]] = {
    "(a) no rule": no_rule,
    "(b) offloaded accept (xt_bpf rule in front of the queue)": offloaded,
    "(c) the same decision in a pktlab handler": in_handler,
    "(d) the first datagram's handler accepts the flow in the kernel (pkt.accept(flow=True))": flow_verdict,
    "(e) pktlab, no handler": no_handler,
    "(t) no pktlab, conntrack on": conntrack_only,
}
if only := os.environ.get("BENCH_CONFIGS"):  # e.g. BENCH_CONFIGS=d,t: those and the baseline (a)
    CONFIGS = {k: v for k, v in CONFIGS.items() if k[1] == "a" or k[1] in only.split(",")}


def main() -> int:
    if (code := run_one_if_asked(CONFIGS)) is not None:
        return code
    runs = alternate(__file__, CONFIGS, REPEATS, lambda _, r: f"{r[0]:,.0f} pkt/s received, {r[1]:.1%} lost", 120)
    base = statistics.median(p for p, _, _ in runs["(a) no rule"])
    print(f"\n64-byte UDP via iperf3, {SECONDS:g} s per run, median of {REPEATS}, {os.cpu_count()} CPUs\n")
    print("| configuration | received pkt/s | ratio to (a) | sender-side loss (median) | of the sent: dropped at the "
          "queue / at the receiving socket | runs (pkt/s) |")  # fmt: skip
    print("|---|---|---|---|---|---|")
    for name, rs in runs.items():
        med = statistics.median(p for p, _, _ in rs)
        loss = statistics.median(x for _, x, _ in rs)
        shares = [statistics.median(c[k] for _, _, c in rs) for k in ("queue_dropped", "receiver_dropped")]
        where = " / ".join(f"{x:.1%}" for x in shares)
        all_runs = ", ".join(f"{p:,.0f}" for p, _, _ in rs)
        print(f"| {name} | {med:,.0f} | {med / base:.1%} | {loss:.1%} | {where} | {all_runs} |")
    print_cpu(runs)
    return 0


def print_cpu(runs: dict[str, list[Result]]) -> None:
    """Where the CPU time went, per configuration (medians over the runs)."""

    def per_pkt(r: Result, key: str) -> float:  # CPU-microseconds per received datagram
        return r[2][key] / (r[0] * SECONDS) * 1e6

    def ceiling(r: Result) -> float:  # received/s with every CPU busy and no user-space time, over (a)'s median
        # per datagram *sent*: as if each one the full queue dropped had cost as much as one delivered (it costs
        # less: it stops at the queue), so that a reader fast enough to lose none is not credited with their CPU
        sent = r[0] * SECONDS / (1 - r[1])
        return len(r[2]["busy"]) / ((r[2]["busy_cpu_s"] - r[2]["process_user_s"]) / sent) / base

    base = statistics.median(p for p, _, _ in runs["(a) no rule"])
    print("\nCPU during the iperf3 runs (medians; busy = not idle, softirq included)\n")
    print("| configuration | busy per CPU | steal | CPU-us per datagram | process user us (reader) "
          "| process sys us (reader) | ceiling if user space cost nothing |")  # fmt: skip
    print("|---|---|---|---|---|---|---|")
    for name, rs in runs.items():
        cpus = sorted(rs[0][2]["busy"])
        med = statistics.median
        busy = " / ".join(f"{med(r[2]['busy'][c] for r in rs):.0%}" for c in cpus)
        steal = " / ".join(f"{med(r[2]['steal'][c] for r in rs):.0%}" for c in cpus)
        cols = [f"{med(per_pkt(r, k) for r in rs):.2f}" for k in ("busy_cpu_s", "process_user_s", "reader_user_s",
                                                                   "process_sys_s", "reader_sys_s")]  # fmt: skip
        top = f"{med(ceiling(r) for r in rs):.1%} of (a)" if rs[0][2]["reader_threads"] else "no queue"
        print(f"| {name} | {busy} | {steal} | {cols[0]} | {cols[1]} ({cols[2]}) | {cols[3]} ({cols[4]}) | {top} |")


if __name__ == "__main__":
    raise SystemExit(main())
