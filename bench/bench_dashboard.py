"""Packets/s through the queue with the dashboard and controls open vs closed, same run.

Method: bench_queue's drain (65,000 queued 64-byte UDP datagrams, reader pinned alone on
one CPU), ROUNDS drains in a row per session so that the 2 Hz dashboard ticks several times
while the reader works; packets/s = all drained packets / all drain time.  (c) a handler
reading udp.dport, dashboard closed; (g) the same with ``s.dashboard()`` and
``s.controls()`` open, updating twice a second (no browser attached: this is the cost on
the kernel side of the notebook, sampling, aggregating and syncing the plots' models).
A fresh process and lab per measurement, configurations alternating, median of REPEATS.
Run: `.venv/bin/python bench/bench_dashboard.py` (as root).
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import bench_queue as bq  # noqa: E402

import pktlab  # noqa: E402

REPEATS = int(os.environ.get("BENCH_REPEATS", "5"))
ROUNDS = int(os.environ.get("BENCH_ROUNDS", "6"))


def measure(dashboard: bool) -> tuple[float, int]:
    with pktlab.Lab() as lab:
        s = pktlab.attach(bq.QUEUE, rule="-p udp --dport 9000", netns=lab.server, max_len=bq.MAX_LEN,
                          sock_bytes=bq.SOCK_BYTES, record_size=1 << 16)  # fmt: skip
        s.add_handler(bq.read_dport)
        d = controls = None
        if dashboard:
            d, controls = s.dashboard(), s.controls()
        try:
            total = seconds = 0.0
            for _ in range(ROUNDS):
                s.pause()
                assert s.source.thread_id is not None
                r = bq.drain(lab, s.resume, lambda: s.record.n, s.source.thread_id)
                total += r.queued
                seconds += r.queued / r.pps
            return total / seconds, d.updates if d is not None else 0
        finally:
            s.detach()
            if controls is not None:
                controls.close()


def main() -> int:
    if len(sys.argv) == 3 and sys.argv[1] == "--one":
        print(json.dumps(measure(sys.argv[2] == "open")))
        return 0
    names = {"(c) dashboard closed": "closed", "(g) dashboard and controls open, 2 Hz": "open"}
    runs: dict[str, list[float]] = {k: [] for k in names}
    ticks = []
    for _ in range(REPEATS):
        for name, arg in names.items():
            out = subprocess.run([sys.executable, __file__, "--one", arg], capture_output=True, text=True,
                                 timeout=300, check=True).stdout  # fmt: skip
            pps, updates = json.loads(out.strip().splitlines()[-1])
            runs[name].append(pps)
            if arg == "open":
                ticks.append(updates)
            print(f"  {name}: {pps:,.0f} pkt/s", file=sys.stderr)
    base = statistics.median(runs["(c) dashboard closed"])
    print(f"\n{ROUNDS} drains of {bq.N:,} packets per run, median of {REPEATS}; dashboard updates per run: {ticks}\n")
    print("| configuration | reader pkt/s | ratio to (c) | runs (pkt/s) |\n|---|---|---|---|")
    for name, rs in runs.items():
        med = statistics.median(rs)
        print(f"| {name} | {med:,.0f} | {med / base:.1%} | {', '.join(f'{x:,.0f}' for x in rs)} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
