"""Replay of a large capture: time and peak memory against iterating the same file with scapy.

Method: a capture of N (default 1,000,000) raw-IP UDP packets of 60-200 bytes
is written once (``make_capture``, deterministic; reused while its size is
right). Each configuration runs in a fresh Python process (so its peak RSS,
``ru_maxrss``, is its own), REPEATS times in alternation; the median time and
the highest peak RSS are reported, each as a ratio to (a) of the same run:
  (a) scapy's ``RawPcapReader`` iterating the file (every packet's bytes in hand);
  (b) ``pktlab.replay(path).run()`` with no handler: open to the last verdict;
  (c) the same with a handler reading ``pkt.udp.dport`` (returns None).
Goals (issue 14): (b) time <= 1.5 x (a), peak RSS <= (a) + 60 MiB.
Run: `.venv/bin/python bench/bench_replay.py` (no root needed).
"""

from __future__ import annotations

import json
import os
import random
import statistics
import struct
import subprocess
import sys
from pathlib import Path

N = int(os.environ.get("BENCH_PACKETS", "1000000"))
REPEATS = int(os.environ.get("BENCH_REPEATS", "3"))
CAPTURE = Path(os.environ.get("BENCH_CAPTURE", f"/tmp/pktlab-bench-{N}.pcap"))


def make_capture(path: Path, n: int) -> None:
    """n raw-IP (link type 101) IPv4/UDP packets of 60-200 bytes, numbered, 10 us apart."""
    rnd = random.Random(1)
    tmp = path.with_suffix(".tmp")
    with open(tmp, "wb") as f:
        f.write(struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 65535, 101))
        for i in range(n):
            size = rnd.randint(60, 200)
            payload = i.to_bytes(4, "big") + bytes(size - 28 - 4)
            ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, size, i & 0xFFFF, 0, 64, 17, 0,
                             bytes([10, 77, 1, 1]), bytes([10, 77, 1, 2]))  # fmt: skip
            udp = struct.pack("!HHHH", 40000 + i % 1000, 9000, size - 20, 0)
            t = 1_700_000_000 * 1_000_000 + i * 10
            f.write(struct.pack("<IIII", t // 1_000_000, t % 1_000_000, size, size) + ip + udp + payload)
    tmp.rename(path)


CHILD = r"""
import json, resource, sys, time
kind, path = sys.argv[1], sys.argv[2]
t0 = time.perf_counter()
n = 0
if kind == "a":
    from scapy.utils import RawPcapReader
    with RawPcapReader(path) as r:
        for data, meta in r:
            n += 1
else:
    import pktlab
    t0 = time.perf_counter()  # from opening the capture
    s = pktlab.replay(path, record_size=100_000)
    if kind == "c":
        def dport(pkt):
            pkt.udp.dport
        s.add_handler(dport, "dport")
    st = s.run()
    n = st.packets
    assert st.counters["errors"] == 0 and st.counters["accept"] == n, st
seconds = time.perf_counter() - t0
print(json.dumps({"n": n, "seconds": seconds, "rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""


def run(kind: str) -> dict[str, float]:
    out = subprocess.run([sys.executable, "-c", CHILD, kind, str(CAPTURE)], capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    if not CAPTURE.exists():
        print(f"writing {CAPTURE} ({N:,} packets)...", flush=True)
        make_capture(CAPTURE, N)
    size_mb = CAPTURE.stat().st_size / 1e6
    results: dict[str, list[dict[str, float]]] = {"a": [], "b": [], "c": []}
    for r in range(REPEATS):
        for kind in results:
            res = run(kind)
            assert res["n"] == N, (kind, res)
            results[kind].append(res)
            print(f"  run {r + 1} ({kind}): {res['seconds']:.2f} s, peak RSS {res['rss_mib']:.0f} MiB", flush=True)
    base_t = statistics.median(x["seconds"] for x in results["a"])
    base_rss = max(x["rss_mib"] for x in results["a"])
    print(f"\nreplay of {N:,} packets ({size_mb:.0f} MB), median of {REPEATS}, peak RSS the highest:")
    names = {"a": "scapy RawPcapReader (baseline)", "b": "pktlab replay, no handler", "c": "pktlab replay, udp.dport"}
    for kind, rows in results.items():
        t = statistics.median(x["seconds"] for x in rows)
        rss = max(x["rss_mib"] for x in rows)
        print(
            f"  ({kind}) {names[kind]:34s} {t:6.2f} s  {N / t:>10,.0f} pkt/s  time {t / base_t:5.2f}x  "
            f"peak RSS {rss:5.0f} MiB ({rss - base_rss:+.0f} MiB)"
        )


if __name__ == "__main__":
    main()
