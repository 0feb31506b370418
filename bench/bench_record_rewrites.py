"""What keeping rewritten packets for ``s.follow(id, delivered=True)`` costs the dispatcher (issue 41).

The record keeps the first ``snaplen`` bytes of each packet a handler rewrote beside its entry; the
dispatcher hands them over after the verdict.  Measured through the one dispatcher on a capture (a replay:
no kernel, no lab, so only the dispatcher's own work is timed): PACKETS UDP datagrams, a handler rewriting
ip.ttl of every one, (a) with the record keeping the rewrites (the default) and (b) without
(``Dispatcher.rewrites = None``, what the dispatcher did before), alternated ROUNDS times in one process;
medians of the microseconds per packet and their ratio.  Also the time ``s.df`` takes to read a full record of
100,000 TCP segments at the TCP level (after the fact, never on the packet path).

Run: `.venv/bin/python bench/bench_record_rewrites.py [ROUNDS]` (no root needed; default 7).
"""

from __future__ import annotations

import statistics
import sys
import tempfile
import time
from pathlib import Path

import pktlab
from pktlab import testing
from pktlab.pipeline.record import Record

PACKETS = 20_000


def _run(path: Path, keep: bool) -> float:
    r = pktlab.replay(path, record_size=PACKETS)
    if not keep:
        r._dispatch.rewrites = None  # the dispatcher as it was before rewrites were kept
    r.add_handler(lambda pkt: setattr(pkt.ip, "ttl", 7), "ttl")
    t0 = time.perf_counter()
    r.run()
    seconds = time.perf_counter() - t0
    assert r.record.n == PACKETS and int(r.df["modified"].sum()) == PACKETS
    return seconds / PACKETS * 1e6


def _df_seconds() -> float:
    rec = Record(100_000)
    seg = testing.tcp(raw=True, flags="PA", seq=1000, ack=1, payload=b"x" * 100, src="10.0.0.1", dst="10.0.0.2")
    for i in range(100_000):
        rec.append(testing.entry(id=i, time=1.7e9 + i * 1e-5, packet=seg))
    t0 = time.perf_counter()
    rec.df()
    return time.perf_counter() - t0


def main(rounds: int) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        path = testing.capture(Path(tmp) / "udp.pcap", [testing.udp(seq=i, raw=True) for i in range(PACKETS)])
        keep, plain = [], []
        for _ in range(rounds):
            plain.append(_run(path, False))
            keep.append(_run(path, True))
    a, b = statistics.median(plain), statistics.median(keep)
    print(f"rewriting every packet, {PACKETS:,} datagrams through the dispatcher, {rounds} alternated rounds:")
    print(f"  (b) rewrites not kept: {a:.2f} us/packet (min {min(plain):.2f}, max {max(plain):.2f})")
    print(f"  (a) rewrites kept:     {b:.2f} us/packet (min {min(keep):.2f}, max {max(keep):.2f})")
    print(f"  (a)/(b) = {b / a:.3f}")
    print(f"s.df of a full record of 100,000 TCP segments: {_df_seconds():.2f} s")


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 7)
