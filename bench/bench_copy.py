"""How much of each packet to copy to user space: whole packets, headers only, or headers until a handler reads on.

Method: iperf3 (Debian's) sends TCP for SECONDS seconds from a router lab's
client to an iperf3 server; the router's FORWARD chain queues every TCP packet
to a pktlab session (GSO packets whole, the default), whose handler reads the
TCP header and accepts.  The figure is what the receiving iperf3 got.
Configurations, REPEATS times in alternation, a fresh lab each time, median
reported:
  (0) no queue, for scale;
  (a) copy="full": every packet copied whole (up to 64 KiB for a GSO packet);
  (b) copy="headers": the first 128 bytes of each packet;
  (c) copy="auto" with the same handler: it never reads past the headers, so
      the copy stays at 128 bytes;
  (d) copy="auto" with a handler that also reads the first payload byte of the
      data stream: its first packet is queued again whole, and from then on
      every packet is copied whole, as in (a).
Each run checks what its mode promises: (b) and (c) saw no packet copied
whole beyond 128 bytes, (d) read every payload byte it asked for.
Run: `.venv/bin/python bench/bench_copy.py` (as root).
"""

from __future__ import annotations

import os
import statistics
import time
from collections.abc import Callable

from bench_tcp_rewrite import PORT, iperf
from harness import alternate, run_one_if_asked

import pktlab

SECONDS = float(os.environ.get("BENCH_SECONDS", "3"))
REPEATS = int(os.environ.get("BENCH_REPEATS", "5"))
QUEUE = 1


def no_queue(lab: pktlab.Lab) -> dict[str, float]:
    return {"bps": iperf(lab), "copied": 0.0, "recopied": 0, "us_per_packet": 0.0}


def through(copy: str, read_payload: bool = False) -> Callable[[pktlab.Lab], dict[str, float]]:
    def run(lab: pktlab.Lab) -> dict[str, float]:
        seen = {"packets": 0, "copied": 0, "payload_reads": 0}

        def read_header(pkt):  # type: ignore[no-untyped-def]
            t = pkt.tcp
            seen["packets"] += 1
            seen["copied"] += pkt.copied
            if read_payload and t is not None and t.dport == PORT and len(pkt) > 1000:
                t.payload[:1]  # noqa: B018 - the read is the point
                seen["payload_reads"] += 1
            return pkt.accept() if t is not None and t.dport >= 0 else None

        s = pktlab.attach(QUEUE, rule="-p tcp", hook="FORWARD", netns=lab.router, deadline=None, max_len=1 << 16,
                          copy=copy)  # fmt: skip
        try:
            s.add_handler(read_header, "bench")
            cpu = time.process_time()  # this process's CPU time: the reader thread (the host's steal excluded)
            bps = iperf(lab)
            cpu = time.process_time() - cpu
            assert not s.errors, s.errors[:1]
            mean = seen["copied"] / max(1, seen["packets"])
            if copy != "full" and not read_payload:
                assert mean <= 128, f"copy={copy}: {mean:.0f} bytes copied per packet"
            if read_payload:
                assert seen["payload_reads"] > 0
            us = cpu / max(1, seen["packets"]) * 1e6
            return {"bps": bps, "copied": mean, "recopied": s.status().recopied, "us_per_packet": us}
        finally:
            s.detach()

    return run


CONFIGS: dict[str, Callable[[pktlab.Lab], dict[str, float]]] = {
    "(0) no queue": no_queue,
    '(a) copy="full"': through("full"),
    '(b) copy="headers"': through("headers"),
    '(c) copy="auto", the handler reads headers only': through("auto"),
    '(d) copy="auto", the handler reads payload too': through("auto", read_payload=True),
}


def main() -> int:
    if (code := run_one_if_asked(CONFIGS, "router")) is not None:
        return code
    show = lambda _, r: (f"{r['bps'] / 1e9:.3f} Gbit/s, {r['copied']:,.0f} B copied per packet, "  # noqa: E731
                         f"{r['us_per_packet']:.2f} µs of the reader's CPU per packet")
    runs = alternate(__file__, CONFIGS, REPEATS, show)
    meds = {name: statistics.median(r["bps"] for r in rs) for name, rs in runs.items()}
    full, none = meds['(a) copy="full"'], meds["(0) no queue"]
    print(f"\nTCP via iperf3 through a router lab, {SECONDS:g} s per run, median of {REPEATS}, {os.cpu_count()} CPUs\n")
    cpu_full = statistics.median(r["us_per_packet"] for r in runs['(a) copy="full"'])
    print("| configuration | received Gbit/s | ratio to (a) | ratio to (0) | bytes copied per packet | "
          "reader CPU µs per packet | ratio to (a) | runs (Gbit/s) | runs (µs per packet) |")
    print("|---|---|---|---|---|---|---|---|---|")
    for name, rs in runs.items():
        copied = statistics.median(r["copied"] for r in rs)
        us = statistics.median(r["us_per_packet"] for r in rs)
        each = ", ".join(f"{r['bps'] / 1e9:.3f}" for r in rs)
        each_us = ", ".join(f"{r['us_per_packet']:.2f}" for r in rs)
        print(f"| {name} | {meds[name] / 1e9:.3f} | {meds[name] / full:.1%} | {meds[name] / none:.1%} | "
              f"{copied:,.0f} | {us:.2f} | {us / cpu_full:.1%} | {each} | {each_us} |")  # fmt: skip
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
