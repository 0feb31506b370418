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
Run: `.venv/bin/python bench/bench_offload.py` (as root; ``BENCH_CONFIGS=d,t`` runs
only those and (a)).
"""

from __future__ import annotations

import os
import statistics
from collections.abc import Callable

from harness import alternate, iperf_udp64, run_one_if_asked

import pktlab

SECONDS = float(os.environ.get("BENCH_SECONDS", "3"))
REPEATS = int(os.environ.get("BENCH_REPEATS", "5"))
PORT = 5201


def iperf(lab: pktlab.Lab) -> tuple[float, float]:
    return iperf_udp64(lab, PORT, SECONDS)


def no_rule(lab: pktlab.Lab) -> tuple[float, float]:
    return iperf(lab)


def offloaded(lab: pktlab.Lab) -> tuple[float, float]:
    s = pktlab.attach(1, rule=f"-p udp --dport {PORT}", netns=lab.server, bypass=False, fail_open=False)
    try:
        s.offload(f"udp and dst port {PORT}", "accept")
        r = iperf(lab)
        assert s.record.n == 0, "a packet reached the queue past the offload"
        return r
    finally:
        s.detach()


def in_handler(lab: pktlab.Lab) -> tuple[float, float]:
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


def flow_verdict(lab: pktlab.Lab) -> tuple[float, float]:
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


def no_handler(lab: pktlab.Lab) -> tuple[float, float]:
    s = pktlab.attach(1, rule=f"-p udp --dport {PORT}", netns=lab.server, bypass=False, fail_open=False)
    try:
        r = iperf(lab)
        assert s.record.n > 0, "no packet reached the queue"
        return r
    finally:
        s.detach()


def conntrack_only(lab: pktlab.Lab) -> tuple[float, float]:
    table = (
        "table inet pktlab_bench_ct {\n chain input {\n  type filter hook input priority 0;\n"
        "  ct mark 0x1 counter\n }\n}\n"
    )
    lab.server.run(["nft", "-f", "-"], input=table)
    try:
        return iperf(lab)
    finally:
        lab.server.run(["nft", "delete", "table", "inet", "pktlab_bench_ct"])


CONFIGS: dict[str, Callable[[pktlab.Lab], tuple[float, float]]] = {
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
    base = statistics.median(p for p, _ in runs["(a) no rule"])
    print(f"\n64-byte UDP via iperf3, {SECONDS:g} s per run, median of {REPEATS}, {os.cpu_count()} CPUs\n")
    print("| configuration | received pkt/s | ratio to (a) | sender-side loss (median) | runs (pkt/s) |")
    print("|---|---|---|---|---|")
    for name, rs in runs.items():
        med = statistics.median(p for p, _ in rs)
        loss = statistics.median(x for _, x in rs)
        all_runs = ", ".join(f"{p:,.0f}" for p, _ in rs)
        print(f"| {name} | {med:,.0f} | {med / base:.1%} | {loss:.1%} | {all_runs} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
