"""64-byte UDP packets/s through a lab with pktlab.trace on against off.

Method: iperf3 (bench_offload's harness) sends 64-byte UDP datagrams as fast as
it can for SECONDS seconds from the lab client to the server; the figure is
what the receiving iperf3 got per second.  Configurations, REPEATS times in
alternation, a fresh lab each time, median reported:
  (a) no trace;
  (b) a trace of 10 ICMP packets on both hosts while the UDP flood runs: every
      datagram meets the trace's raw rules (BPF filter, no match) and the
      tracepoint script (a received packet is remembered until it is freed);
  (c) a trace of 10 UDP packets: the kernel flags the first 10 per host and
      direction, every other datagram costs what it costs in (b) plus the
      limit's token check.
The script reports what the trace of (c) got (packets, lost events).
Run: `.venv/bin/python bench/bench_tracing.py` (as root).
"""

from __future__ import annotations

import os
import statistics
from collections.abc import Callable

from bench_offload import PORT, REPEATS, SECONDS, iperf
from harness import alternate, run_one_if_asked

import pktlab


def no_trace(lab: pktlab.Lab) -> dict[str, float]:
    pps, loss = iperf(lab)
    return {"pps": pps, "loss": loss}


def traced(expr: str) -> Callable[[pktlab.Lab], dict[str, float]]:
    def run(lab: pktlab.Lab) -> dict[str, float]:
        tr = pktlab.trace(lab, expr, count=10, timeout=SECONDS + 30)
        try:
            pps, loss = iperf(lab)
        finally:
            t = tr.stop()
        return {"pps": pps, "loss": loss, "traced": len(t), "lost": t.lost}

    return run


CONFIGS: dict[str, Callable[[pktlab.Lab], dict[str, float]]] = {
    "(a) no trace": no_trace,
    "(b) tracing 10 ICMP packets (none in the flood)": traced("icmp"),
    f"(c) tracing 10 packets of the flood (udp port {PORT})": traced(f"udp and dst port {PORT}"),
}


def main() -> int:
    if (code := run_one_if_asked(CONFIGS)) is not None:
        return code
    def show(name: str, r: dict[str, float]) -> str:
        extra = f", traced {r['traced']}, lost events {r['lost']}" if "traced" in r else ""
        return f"{r['pps']:,.0f} pkt/s received, {r['loss']:.1%} lost{extra}"

    runs = alternate(__file__, CONFIGS, REPEATS, show)
    base = statistics.median(r["pps"] for r in runs["(a) no trace"])
    print(f"\n64-byte UDP via iperf3, {SECONDS:g} s per run, median of {REPEATS}, {os.cpu_count()} CPUs\n")
    print("| configuration | received pkt/s | ratio to (a) | loss (median) | packets traced | runs (pkt/s) |")
    print("|---|---|---|---|---|---|")
    for name, rs in runs.items():
        med = statistics.median(r["pps"] for r in rs)
        loss = statistics.median(r["loss"] for r in rs)
        traced_n = ", ".join(f"{r['traced']:.0f}" for r in rs) if "traced" in rs[0] else "-"
        all_runs = ", ".join(f"{r['pps']:,.0f}" for r in rs)
        print(f"| {name} | {med:,.0f} | {med / base:.1%} | {loss:.1%} | {traced_n} | {all_runs} |")
    lost = [r["lost"] for rs in runs.values() for r in rs if "lost" in r]
    print(f"\nkernel events lost by the traces: {', '.join(f'{x:.0f}' for x in lost)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
