"""Sequence adjustment applied to packets: what the dispatcher calls for accepted TCP packets.

The dispatcher (``pipeline/_dispatch.pyx``) hands over the packet as the
handlers left it and the bytes it arrived with; this module reads the TCP
fields of both, asks :class:`~pktlab.pipeline.seqadj.SeqAdjuster` what the
packet must carry for the connection to stay consistent, and writes that
through the views (sequence and acknowledgement numbers, SACK edges, the
payload), so that the usual fix-up recomputes lengths and checksums.  Live
and on captures alike: both sources go through the one dispatcher.
"""

from __future__ import annotations

import threading

from ..errors import PacketFormatError
from ..packet.model import Packet
from .seqadj import MOD, Adjusted, Segment, SeqAdjError, SeqAdjuster

__all__ = ["TcpAdjust", "SeqAdjError"]

SACK = 5


def _sack_blocks(options: bytes) -> tuple[list[tuple[int, int]], int]:
    """The SACK blocks of a TCP option list and where the first block starts in it (-1: none)."""
    i = 0
    while i < len(options):
        kind = options[i]
        if kind == 0:
            break
        if kind == 1:
            i += 1
            continue
        if i + 1 >= len(options) or options[i + 1] < 2:
            break  # a malformed option list: nothing to read after it
        size = options[i + 1]
        if kind == SACK and size >= 10 and i + size <= len(options):
            at = i + 2
            blocks = [
                (int.from_bytes(options[j : j + 4], "big"), int.from_bytes(options[j + 4 : j + 8], "big"))
                for j in range(at, i + size - 7, 8)
            ]
            return blocks, at
        i += size
    return [], -1


def stream_key(data: bytes, l3: int, tcp: int) -> bytes:
    """A TCP segment's stream: source and destination address, then ports, as the dispatcher notes them."""
    if data[l3] >> 4 == 4:
        return bytes(data[l3 + 12 : l3 + 20]) + bytes(data[tcp : tcp + 4])
    return bytes(data[l3 + 8 : l3 + 40]) + bytes(data[tcp : tcp + 4])


class TcpAdjust:
    """One session's sequence adjustment (see :mod:`pktlab.pipeline.seqadj`)."""

    def __init__(self, adjuster: SeqAdjuster | None = None, headroom: int = 64) -> None:
        self.adjuster = adjuster if adjuster is not None else SeqAdjuster()
        self.headroom = headroom
        self.clamp = True  # take headroom off SYNs' MSS (the dispatcher: only while a handler may grow segments)
        self._lock = threading.Lock()  # the reader thread and a held packet's verdict from the notebook

    @property
    def active(self) -> bool:
        """Whether any connection has state, so that every accepted TCP packet must be looked at."""
        return len(self.adjuster) > 0

    def expire(self, now: float) -> None:
        """Let connections that were idle or ended long enough before ``now`` go (at most once a second)."""
        with self._lock:
            self.adjuster.expire(now)

    def _clamp_mss(self, pkt: Packet) -> None:
        """Take ``headroom`` bytes off a SYN's MSS option: segments a handler grows then still fit the path.

        Without it a full-sized segment grown by a rewrite is larger than the
        link's MTU and is dropped on the way (with DF set, as TCP sends them).
        """
        t = pkt.tcp
        opts = t.options
        i = 0
        while i + 1 < len(opts) and opts[i] != 0:
            if opts[i] == 1:
                i += 1
                continue
            size = opts[i + 1]
            if size < 2:
                return
            if opts[i] == 2 and size == 4 and i + 4 <= len(opts):
                mss = int.from_bytes(opts[i + 2 : i + 4], "big")
                new = max(536, mss - self.headroom)
                if new < mss:
                    at = t.offset + 20 + i + 2
                    pkt.raw[at : at + 2] = new.to_bytes(2, "big")
                return
            i += size

    def apply(
        self, pkt: Packet, original: bytes, rewrite: bool = True, wait: bool = False, high: dict | None = None
    ) -> None:
        """Make the accepted TCP packet ``pkt`` consistent with its connection, in place.

        ``original``: the packet's bytes as it arrived (``pkt`` may hold a handler's
        rewrite).  ``rewrite=False`` adjusts the packet as it arrived instead (what
        the error verdict sends).  Raises :class:`SeqAdjError`, changing nothing,
        when the handler's rewrite cannot be made consistent, and ``SeqAdjWait`` (with
        ``wait``) for a segment that comes after a gap in its stream.  ``high``: how far each stream
        has gone through accepted packets (the dispatcher's; keys as :func:`stream_key` makes them).
        """
        # the packet as it arrived: the packet itself when no handler changed it (no second parse).  Not with
        # rewrite=False: the dispatcher then clears _modified of a packet that may still hold a refused rewrite
        same = rewrite and not pkt.modified
        orig = pkt if same else pkt.like(original)
        try:
            o = orig.tcp
            t = pkt.tcp if rewrite else o
            if o is None or t is None:
                return
            ipo = orig.ip or orig.ipv6
            o_opts = o.options
            sack, at = _sack_blocks(o_opts)
            seg = Segment(ipo.src, o.sport, ipo.dst, o.dport, o.seq, o.ack, o.flagbits, o.payload, sack)
            sent_end = high.get(stream_key(original, max(pkt.ip_offset, 0), o.offset)) if high else None
            out = t.payload if rewrite and pkt.modified else None
        except PacketFormatError:  # a TCP header that cannot be read as it arrived: nothing to adjust by
            return
        with self._lock:
            res = self.adjuster.adjust(seg, out, pkt.time, sent_end=sent_end, wait=wait)
        if res is not None:
            self._write(pkt, original, seg, res, o_opts, at, rewrite)
        if o.flagbits & 0x02 and self.headroom > 0 and self.clamp:
            self._clamp_mss(pkt)

    def _write(
        self, pkt: Packet, original: bytes, seg: Segment, res: Adjusted, o_opts: bytes, at: int, rewrite: bool
    ) -> None:
        """Put what the adjuster says into the packet's fields."""
        t = pkt.tcp
        if not rewrite:  # adjust the packet as it arrived: it replaces whatever the handlers did
            pkt.set_payload(original[max(pkt.ip_offset, 0) :])
            t = pkt.tcp
        if res.seq != seg.seq:
            t.seq = (res.seq + t.seq - seg.seq) % MOD  # a handler's own change of the field is kept
        if res.ack != seg.ack:
            t.ack = (res.ack + t.ack - seg.ack) % MOD
        if res.sack != seg.sack and at >= 0 and t.options[:at] == o_opts[:at]:
            # the option keeps its place and size; blocks that map to nothing make room for NOPs
            size = o_opts[at - 1]
            opt = bytes([SACK, 2 + 8 * len(res.sack)]) if res.sack else b""
            opt += b"".join(a.to_bytes(4, "big") + b.to_bytes(4, "big") for a, b in res.sack)
            start = t.offset + 20 + at - 2
            pkt.raw[start : start + size] = opt + b"\x01" * (size - len(opt))
        if res.payload != t.payload:
            t.payload = res.payload
        pkt._dirty = True
