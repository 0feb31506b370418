"""TCP throughput through a router's queue: a handler that grows every data segment vs one that only accepts.

Method: iperf3 (Debian's) sends TCP for SECONDS seconds from the lab client to
an iperf3 server, through the router, whose FORWARD chain queues every TCP
packet to a pktlab session.  The figure is what the receiving iperf3 got.
Configurations, REPEATS times in alternation, a fresh router lab each time,
median reported:
  (0) no queue, for scale;
  (a) the baseline: a handler that reads the TCP header and accepts;
  (b) a handler that grows every data segment of the client's iperf3 stream
      by 2 bytes (``tcp.payload += b"!!"``), so that every later segment of
      that direction has its sequence number shifted and every
      acknowledgement coming back is shifted back (pktlab.pipeline.seqadj).
      iperf3's control connection (small messages) is left alone;
  (c), (d): as (a) and (b) with the queue bound with ``gso=True``
      (NFQA_CFG_F_GSO): the kernel queues GSO packets whole, up to 64 KiB,
      instead of cutting each into ~45 segments first;
  (e) pktlab with no handler, GSO packets whole;
  (f), (g): bare NetfilterQueue (its own loop, a callback that only accepts,
      bench_queue.py's reader) on the same queue, without and with the GSO
      flag (set with pktlab's configure_queue: NetfilterQueue's API has none).
Run: `.venv/bin/python bench/bench_tcp_rewrite.py` (as root).
"""

from __future__ import annotations

import json
import os
import statistics
from collections.abc import Callable

from bench_queue import BareReader
from harness import alternate, iperf3_server, run_one_if_asked

import pktlab

SECONDS = float(os.environ.get("BENCH_SECONDS", "3"))
REPEATS = int(os.environ.get("BENCH_REPEATS", "5"))
PORT = 5201
QUEUE = 1


def iperf(lab: pktlab.Lab) -> float:
    """Bits per second the iperf3 server received in one TCP run."""
    with iperf3_server(lab, PORT):
        out = lab.client.run(
            ["iperf3", "-c", lab.server.addr, "-p", str(PORT), "-t", str(SECONDS), "-J"], timeout=SECONDS + 30
        ).stdout
    return json.loads(out)["end"]["sum_received"]["bits_per_second"]


def no_queue(lab: pktlab.Lab) -> float:
    return iperf(lab)


def _through(lab: pktlab.Lab, handler: Callable, gso: bool = False) -> float:
    s = pktlab.attach(QUEUE, rule="-p tcp", hook="FORWARD", netns=lab.router, deadline=None, max_len=1 << 16,
                      gso=gso)  # fmt: skip
    try:
        s.add_handler(handler, "bench")
        bps = iperf(lab)
        # a retransmission cut differently from the first time and grown at a new place cannot be made
        # consistent: pktlab refuses that rewrite (the packet goes as it arrived), as it should; nothing else may fail
        other = [e for e in s.errors if not e.error.startswith("SeqAdjError")]
        assert not other, other[:1]
        return bps
    finally:
        s.detach()


def read_and_accept(pkt):  # type: ignore[no-untyped-def]
    return pkt.accept() if pkt.tcp is not None and pkt.tcp.dport >= 0 else None


def grow(pkt):  # type: ignore[no-untyped-def]
    t = pkt.tcp
    if t is not None and t.dport == PORT and len(t.payload) >= 1000:  # the data stream, not the control one
        t.payload = t.payload + b"!!"
    return pkt.accept()


def rewrite_ttl(pkt):  # type: ignore[no-untyped-def]
    """Every data packet rewritten in the cheapest way: one byte of its IP header (no sequence adjustment, no
    payload made by the handler); its verdict still carries the whole packet, which the kernel copies in."""
    t = pkt.tcp
    if t is not None and t.dport == PORT and len(t.payload) >= 1000:
        pkt.ip.ttl -= 1
    return pkt.accept()


def accept_only(lab: pktlab.Lab) -> float:
    return _through(lab, read_and_accept)


def grow_every_segment(lab: pktlab.Lab) -> float:
    return _through(lab, grow)


def accept_only_gso(lab: pktlab.Lab) -> float:
    return _through(lab, read_and_accept, gso=True)


def grow_every_gso_packet(lab: pktlab.Lab) -> float:
    return _through(lab, grow, gso=True)


def no_handler_gso(lab: pktlab.Lab) -> float:
    s = pktlab.attach(QUEUE, rule="-p tcp", hook="FORWARD", netns=lab.router, deadline=None, max_len=1 << 16)
    try:
        return iperf(lab)
    finally:
        s.detach()


def bare(gso: bool) -> Callable[[pktlab.Lab], float]:
    def run(lab: pktlab.Lab) -> float:
        with BareReader(lab.router.netns, ("-p", "tcp"), hook="FORWARD", gso=gso) as reader:
            reader.start_reading()
            return iperf(lab)

    return run


CONFIGS: dict[str, Callable[[pktlab.Lab], float]] = {
    "(0) no queue": no_queue,
    "(a) queue, handler reads the header and accepts": accept_only,
    "(b) queue, handler grows every data segment by 2 bytes": grow_every_segment,
    "(c) as (a), the queue bound with gso=True (GSO packets whole)": accept_only_gso,
    "(d) as (b), gso=True: every GSO packet grown by 2 bytes": grow_every_gso_packet,
    "(e) pktlab, no handler, GSO packets whole": no_handler_gso,
    "(f) bare NetfilterQueue, accept-only callback (segments)": bare(False),
    "(g) bare NetfilterQueue, accept-only callback, GSO flag set": bare(True),
}


def main() -> int:
    if (code := run_one_if_asked(CONFIGS, "router")) is not None:
        return code
    runs = alternate(__file__, CONFIGS, REPEATS, lambda _, bps: f"{bps / 1e9:.3f} Gbit/s")
    base = statistics.median(runs["(a) queue, handler reads the header and accepts"])
    print(f"\nTCP via iperf3 through a router lab, {SECONDS:g} s per run, median of {REPEATS}, {os.cpu_count()} CPUs\n")
    print("| configuration | received Gbit/s | ratio to (a) | runs (Gbit/s) |")
    print("|---|---|---|---|")
    for name, rs in runs.items():
        med = statistics.median(rs)
        print(f"| {name} | {med / 1e9:.3f} | {med / base:.1%} | {', '.join(f'{r / 1e9:.3f}' for r in rs)} |")
    med = {name[:3]: statistics.median(rs) for name, rs in runs.items()}
    print(f"\npktlab without a handler, GSO (e): {med['(e)'] / med['(0)']:.1%} of no queue, "
          f"{med['(e)'] / med['(f)']:.1f}x bare NetfilterQueue on segments (f), "
          f"{med['(e)'] / med['(g)']:.1f}x bare NetfilterQueue with the GSO flag (g)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
