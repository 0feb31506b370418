"""What a link's delay line costs: the packet rate it sustains, and how late packets leave.

Method, in a fresh pair lab per configuration, REPEATS times in alternation:
  rate: ``lab.udp`` sends COUNT 64-byte datagrams client -> server at each
  offered RATES (paced, bounded), with (a) no conditions and (b) a 1 ms delay
  on the client -> server direction (the delay line: NFQUEUE hold + a thread
  that accepts each packet at its time); the figure is the share of the
  datagrams that arrived, and the received rate.  The fail-open queue holds
  16,384 packets: beyond what the line releases per second, the kernel passes
  the rest undelayed (counted by the line's session as "passed unseen").
  lateness: 50 pings 20 ms apart with 20 ms each way (40 ms expected); the
  figure is RTT - 40 ms (min, median, max), against the RTT of the bare link.
Run: `.venv/bin/python bench/bench_delay_line.py` (as root).
"""

from __future__ import annotations

import os
import statistics

import pktlab

REPEATS = int(os.environ.get("BENCH_REPEATS", "3"))
COUNT = int(os.environ.get("BENCH_COUNT", "20000"))
RATES = [int(r) for r in os.environ.get("BENCH_RATES", "5000,10000,20000,40000,80000").split(",")]


def udp_run(rate: int, delay: str | None) -> tuple[float, float, int]:
    """(delivered share, received datagrams/s, passed unseen by the delay line) of one run."""
    with pktlab.Lab() as lab:
        unseen = 0
        if delay:
            link = lab.link("client", "server").set(delay=delay, direction="a>b")
        r = lab.udp(COUNT, size=64, rate=rate, idle=0.5, timeout=60)
        if delay:
            line = link.ends["a>b"].delay_line
            unseen = line.session.status().passed_unseen or 0
        return r.unique / COUNT, r.unique / max(r.seconds, 1e-9), unseen


def lateness() -> tuple[list[float], list[float]]:
    with pktlab.Lab() as lab:
        bare = lab.ping(50, interval=0.02)
        lab.link("client", "server").set(delay="20ms")
        delayed = lab.ping(50, interval=0.02)
    return list(bare.rtts), [rtt - 40.0 for rtt in delayed.rtts]


def main() -> None:
    print(f"UDP 64 B, {COUNT} datagrams per run, median of {REPEATS} (alternated)")
    print(f"{'offered/s':>10} {'no delay: got':>14} {'rate/s':>9} {'1 ms delay: got':>16} {'rate/s':>9} "
          f"{'unseen':>7}")  # fmt: skip
    for rate in RATES:
        bare, line = [], []
        for _ in range(REPEATS):
            bare.append(udp_run(rate, None))
            line.append(udp_run(rate, "1ms"))
        b = [statistics.median(x) for x in zip(*bare, strict=True)]
        d = [statistics.median(x) for x in zip(*line, strict=True)]
        print(f"{rate:>10} {b[0]:>13.1%} {b[1]:>9.0f} {d[0]:>15.1%} {d[1]:>9.0f} {d[2]:>7.0f}")
    bare_rtt, late = lateness()
    print(f"ping over the bare link: min/median/max {min(bare_rtt):.3f}/{statistics.median(bare_rtt):.3f}/"
          f"{max(bare_rtt):.3f} ms")  # fmt: skip
    print(f"20 ms each way: RTT - 40 ms min/median/max {min(late):.3f}/{statistics.median(late):.3f}/"
          f"{max(late):.3f} ms")  # fmt: skip


if __name__ == "__main__":
    main()
