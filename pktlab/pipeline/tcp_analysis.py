"""The record read at the TCP level, after the fact: flows, sides, relative sequence numbers, Wireshark's markers.

Nothing here runs on the packet path: it reads the record's entries (their
first ``snaplen`` bytes hold the headers) when ``s.df`` or ``s.flow(id)`` is
asked for.  Every packet gets the id of its flow (the same for both
directions, numbered in order of first appearance) and its ``side``: the
client is the side that sent a SYN without ACK, else the first packet's
source.  TCP segments get their flags as letters, sequence and
acknowledgement numbers relative to each direction's first (raw kept), the
payload length from the IP header's lengths (so a cut packet still counts
whole) and the window, and the markers of Wireshark's TCP analysis
(``packet-tcp.c``'s rules: retransmission, fast retransmission, spurious
retransmission, out-of-order, duplicate ACK, keep-alive) so that the same
capture reads the same in both.
"""

from __future__ import annotations

import ipaddress
import struct
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, NamedTuple

from ..errors import PacketFormatError
from ..packet.model import ipv6_upper
from .flows import PROTO_NAMES

__all__ = ["COLUMNS", "FLOW_COLUMNS", "Followed", "analyse", "follow", "flow_summary"]

# the columns the TCP analysis adds to ``s.df``, with what each holds (the docs' reference is made from this)
COLUMNS: dict[str, str] = {
    "t": "seconds since the record's first packet",
    "flow": "the flow's id, one for both directions, numbered as flows appear (None: not TCP, UDP or ICMP echo)",
    "side": "client (the side that sent the SYN, else the first packet's source) or server",
    "flags": "TCP flags as letters (e.g. AP)",
    "seq": "sequence number relative to the direction's ISN",
    "ack": "acknowledgement number relative to the other direction's ISN",
    "len": "TCP payload bytes, from the IP lengths (a packet cut by snaplen still counts whole)",
    "win": "the window field as sent (not scaled)",
    "analysis": "Wireshark's marker: retransmission, fast retransmission, spurious retransmission, out-of-order, "
    "duplicate ack or keep-alive (None: none)",
    "seq_raw": "the sequence number as sent",
    "ack_raw": "the acknowledgement number as sent",
}
FIN, SYN, RST, PSH, ACK, URG, ECE, CWR = 0x01, 0x02, 0x04, 0x08, 0x10, 0x20, 0x40, 0x80
_LETTERS = ((CWR, "C"), (ECE, "E"), (URG, "U"), (ACK, "A"), (PSH, "P"), (RST, "R"), (SYN, "S"), (FIN, "F"))
MOD = 1 << 32
_ECHO = {1: (0, 8), 58: (128, 129)}  # ICMP and ICMPv6 echo request and reply types
DEFAULT_OOO_NS = 3_000_000  # Wireshark's out-of-order window before it has measured the handshake's RTT
FAST_RETRANS_NS = 20_000_000  # a retransmission within 20 ms of the second duplicate ACK is a fast one


def _lt(a: int, b: int) -> bool:
    """Sequence-number order (RFC 1982): a before b."""
    return a != b and (b - a) % MOD < (1 << 31)


def flag_letters(flags: int) -> str:
    return "".join(letter for bit, letter in _LETTERS if flags & bit)


@dataclass
class _Direction:
    """What Wireshark keeps per direction of a connection (``tcp_analyze_seq_info`` and the flow's window)."""

    base: int | None = None  # relative numbers count from here (the ISN when the SYN was seen)
    nextseq: int = 0  # the highest sequence number seen + the segment's length (0: none yet)
    nextseq_ns: int = 0  # when nextseq last advanced
    maxseqtobeacked: int = 0  # the highest in-order sequence number: an ACK beyond it acks a packet not seen
    lastack: int = 0
    lastack_ns: int = 0
    lastwin: int = -1
    dupacks: int = 0  # duplicate ACKs in a row (-1: an ACK of a packet not seen came first)
    keepalive: bool = False  # the last segment was a keep-alive (its answer is no duplicate ACK)


@dataclass
class _Conn:
    key: tuple
    id: int
    client: tuple  # (address, port) of the client
    dirs: dict[bool, _Direction] = field(default_factory=lambda: {True: _Direction(), False: _Direction()})
    syn_ns: int = 0
    first_rtt_ns: int = 0  # SYN to the ACK of the SYN-ACK: Wireshark's out-of-order window once known
    fins: set[bool] = field(default_factory=set)  # the sides (from the client?) that sent a FIN
    reset: bool = False
    synack: bool = False

    @property
    def closed(self) -> bool:
        return self.reset or len(self.fins) == 2

    @property
    def tcp_state(self) -> str:
        """What the flags seen say of the connection (the same words as ``pkt.flow.tcp_state``)."""
        if self.reset:
            return "reset"
        if len(self.fins) == 2:
            return "closed"
        if self.fins:
            return "fin-wait"
        return "syn-sent" if self.syn_ns and not self.synack else "established"


@dataclass(frozen=True)
class _Seg:
    proto: int
    src: tuple
    dst: tuple
    flags: int = 0
    seq: int = 0
    ack: int = 0
    length: int = 0
    win: int = 0
    payload_at: int = 0  # where the TCP payload starts in the recorded bytes
    whole: bool = False  # a TCP header was recorded whole (the fields above are read from it)


def _parse(head: bytes, size: int) -> _Seg | None:
    """Addresses, ports and the TCP header of a recorded packet; None when it is not IP."""
    try:
        v = head[0] >> 4
        if v == 4 and len(head) >= 20 and head[0] & 15 >= 5:
            ihl = (head[0] & 15) * 4
            proto = head[9]
            src, dst = head[12:16], head[16:20]
            total = int.from_bytes(head[2:4], "big") or size  # 0: a GSO packet over 64 KiB
            frag = int.from_bytes(head[6:8], "big") & 0x1FFF
            off, l4len = ihl, total - ihl
        elif v == 6 and len(head) >= 40:
            proto, off, later = ipv6_upper(head, 0)
            src, dst = head[8:24], head[24:40]
            frag = later
            l4len = (int.from_bytes(head[4:6], "big") or size - 40) + 40 - off
        else:
            return None
        if proto in (1, 58) and not frag and len(head) >= off + 8 and head[off] in _ECHO[proto]:
            ident = int.from_bytes(head[off + 4 : off + 6], "big")  # an echo's id names the exchange (as pkt.flow)
            return _Seg(proto, (bytes(src), ident), (bytes(dst), ident))
        if proto not in (6, 17) or frag or len(head) < off + 4:
            return _Seg(proto, (bytes(src), None), (bytes(dst), None))
        sport, dport = struct.unpack_from("!HH", head, off)
        if proto == 17 or len(head) < off + 20:
            return _Seg(proto, (bytes(src), sport), (bytes(dst), dport))
        seq, ack, doff, flags, win = struct.unpack_from("!IIBBH", head, off + 4)
        hdr = (doff >> 4) * 4
        return _Seg(6, (bytes(src), sport), (bytes(dst), dport), flags, seq, ack, l4len - hdr, win, off + hdr, True)
    except (IndexError, ValueError, struct.error, PacketFormatError):
        return None


def analyse(entries: Iterable[Any]) -> list[dict[str, Any]]:
    """One dict of :data:`COLUMNS` per entry (in the order given: the record's arrival order)."""
    return _analyse(entries)[0]


def _analyse(entries: Iterable[Any]) -> tuple[list[dict[str, Any]], list[_Conn | None], list[_Seg | None]]:
    """The rows of :func:`analyse`, each entry's connection and its parsed headers."""
    conns: dict[tuple, _Conn] = {}
    out: list[dict[str, Any]] = []
    rows_conn: list[_Conn | None] = []
    segs: list[_Seg | None] = []
    next_id = 0
    t0: float | None = None
    for e in entries:
        t0 = e.time if t0 is None else t0
        row: dict[str, Any] = dict.fromkeys(COLUMNS)
        row["t"] = e.time - t0
        out.append(row)
        seg = _parse(bytes(e.head), e.size)
        segs.append(seg)
        if seg is None:
            rows_conn.append(None)
            continue
        key = (seg.proto, *sorted((seg.src, seg.dst)))
        conn = conns.get(key)
        if conn is None or (conn.closed and seg.whole and seg.flags & (SYN | ACK) == SYN):  # new, or ports reused
            client = seg.dst if seg.whole and seg.flags & (SYN | ACK) == SYN | ACK else seg.src
            conn = conns[key] = _Conn(key, next_id, client)
            next_id += 1
        row["flow"] = conn.id
        fwd_is_client = seg.src == conn.client
        row["side"] = "client" if fwd_is_client else "server"
        if seg.whole:
            _tcp(conn, seg, fwd_is_client, int(e.time * 1e6) * 1000, row)  # µs: what an exported pcapng keeps
            if seg.flags & RST:
                conn.reset = True
            if seg.flags & FIN:
                conn.fins.add(fwd_is_client)
            if seg.flags & (SYN | ACK) == SYN | ACK:
                conn.synack = True
        rows_conn.append(conn)
    return out, rows_conn, segs


def _tcp(conn: _Conn, seg: _Seg, from_client: bool, now: int, row: dict[str, Any]) -> None:
    """Wireshark's ``tcp_analyze_sequence_number`` for one segment, and its relative numbers."""
    fwd, rev = conn.dirs[from_client], conn.dirs[not from_client]
    flags, seq, ack, seglen, win = seg.flags, seg.seq, seg.ack, max(seg.length, 0), seg.win
    if flags & SYN and not flags & ACK:
        conn.syn_ns = now  # the latest SYN
    elif flags & (SYN | ACK) == ACK and conn.syn_ns and not conn.first_rtt_ns:
        conn.first_rtt_ns = now - conn.syn_ns  # the latest SYN to the first ACK after it
    if fwd.base is None:
        fwd.base = seq if flags & SYN else (seq - 1) % MOD
    if rev.base is None and flags & ACK:
        rev.base = (ack - 1) % MOD
    row.update(flags=flag_letters(flags), seq_raw=seq, ack_raw=ack if flags & ACK else None, len=seglen, win=win)
    row["seq"] = (seq - fwd.base) % MOD
    row["ack"] = (ack - rev.base) % MOD if flags & ACK and rev.base is not None else None
    marks: list[str] = []
    plain = not flags & (SYN | FIN | RST)
    probe = seglen == 1 and seq == fwd.nextseq and rev.lastwin == 0
    keepalive = not probe and seglen <= 1 and seq == (fwd.nextseq - 1) % MOD and plain
    if keepalive:
        marks.append("keep-alive")
    same = seglen == 0 and seq == fwd.nextseq and ack == fwd.lastack and plain
    if not probe and same and win and win == fwd.lastwin and not rev.keepalive:
        fwd.dupacks = 1 if fwd.dupacks == -1 else fwd.dupacks + 1
        marks.append("duplicate ack")
    if ack != fwd.lastack:
        fwd.dupacks = 0
    if rev.maxseqtobeacked and _lt(rev.maxseqtobeacked, ack) and flags & ACK:  # acks a segment not seen
        if rev.maxseqtobeacked > rev.nextseq:
            rev.maxseqtobeacked = rev.nextseq
        else:
            rev.dupacks = -1
    if (seglen > 0 or flags & (SYN | FIN)) and not keepalive:
        behind = bool(fwd.nextseq) and _lt(seq, fwd.nextseq)
        if seglen > 1 and (fwd.nextseq - 1) % MOD == seq:
            behind = False
        end = (seq + seglen) % MOD
        if seglen > 0 and rev.lastack and not _lt(rev.lastack, end):
            marks.append("spurious retransmission")
        elif behind and rev.dupacks >= 2 and rev.lastack == seq and now - rev.lastack_ns < FAST_RETRANS_NS:
            marks.append("fast retransmission")
        elif (behind and now - fwd.nextseq_ns < (conn.first_rtt_ns or DEFAULT_OOO_NS)
              and fwd.nextseq != (end + (1 if flags & (SYN | FIN) else 0)) % MOD):  # fmt: skip
            marks.append("out-of-order")
        elif behind:
            marks.append("retransmission")
    nextseq = (seq + seglen + (1 if flags & (SYN | FIN) else 0)) % MOD
    if not probe and (not fwd.nextseq or _lt(fwd.nextseq, nextseq)):
        fwd.nextseq, fwd.nextseq_ns = nextseq, now
    if not probe and (seq == fwd.maxseqtobeacked or not fwd.maxseqtobeacked):
        fwd.maxseqtobeacked = fwd.nextseq
    fwd.lastwin, fwd.lastack, fwd.lastack_ns = win, ack, now
    fwd.keepalive = keepalive
    row["analysis"] = ", ".join(marks) or None


class Followed(NamedTuple):
    """A TCP flow's two byte streams, reassembled as Wireshark's Follow TCP Stream does."""

    client: bytes  # what the client sent, in sequence order, each byte once
    server: bytes
    missing: dict[str, int]  # per side, bytes that never passed the session or that the record cut off (0: whole)


def follow(entries: Iterable[Any], flow_id: int, *, delivered: bool = False,
           rewritten: Callable[[Any], bytes | None] | None = None) -> Followed:  # fmt: skip
    """Reassemble flow ``flow_id`` (the ``flow`` column): each side's bytes in sequence order, each once.

    By default what each side sent, as its packets reached the session (dropped ones too).
    ``delivered=True``: what went on to the other side: dropped packets left out, and a
    rewritten packet's bytes as the handler left them (``rewritten(entry)`` gives them, or
    None for a packet that went on as it came).  Bytes that never passed (a gap in the
    sequence) or that the record cut off (its snaplen) are left out and counted in ``missing``.
    """
    entries = list(entries)
    rows, _, parsed = _analyse(entries)
    if not any(r["flow"] == flow_id for r in rows):
        raise KeyError(f"no flow {flow_id} in the record; the flow column of s.df lists the flows it holds")
    segs: dict[str, list[tuple[int, int, bytes]]] = {"client": [], "server": []}
    isn: dict[str, int] = {}
    for e, row, seg in zip(entries, rows, parsed, strict=True):
        if row["flow"] != flow_id or row["flags"] is None or (delivered and e.verdict == "drop"):
            continue
        side = row["side"]
        out = rewritten(e) if delivered and rewritten is not None else None
        if out is not None:  # what the handler left: its own headers (sequence numbers, lengths)
            seg = _parse(bytes(out), len(out))
        if seg is None or not seg.whole:
            continue
        head = out if out is not None else e.head
        if seg.flags & SYN:
            isn.setdefault(side, (seg.seq + 1) % MOD)
        if seg.length > 0:
            segs[side].append((seg.seq, seg.length, bytes(head[seg.payload_at : seg.payload_at + seg.length])))
    out_streams: dict[str, bytes] = {}
    missing: dict[str, int] = {}
    for side, items in segs.items():
        start = isn.get(side, items[0][0] if items else 0)  # no SYN seen: from the first segment that passed
        stream = bytearray()
        covered = lost = 0  # stream offsets accounted for; bytes left out
        for rel, n, data in sorted(((s - start) % MOD, n, d) for s, n, d in items):
            if rel >= 1 << 31 or rel + n <= covered:
                continue  # before the start, or bytes already in the stream
            if rel > covered:
                lost += rel - covered  # a gap: those bytes never passed the session
                covered = rel
            take = data[covered - rel :]
            stream += take
            lost += rel + n - covered - len(take)  # cut to the record's snaplen
            covered = rel + n
        out_streams[side], missing[side] = bytes(stream), lost
    return Followed(out_streams["client"], out_streams["server"], missing)


# ``s.flows``' columns from the record, with what each holds
FLOW_COLUMNS: dict[str, str] = {
    "flow": "the flow's id (the one s.df uses)",
    "proto": "tcp, udp, icmp or icmpv6",
    "a": "the client's address (it sent the SYN, else the first packet)",
    "aport": "the client's port",
    "b": "the server's address",
    "bport": "the server's port",
    "tcp_state": "syn-sent, syn-received, established, fin-wait, closing, closed or reset (None: not TCP)",
    "packets_ab": "packets from a to b, whatever their verdict",
    "packets_ba": "packets from b to a",
    "bytes_ab": "bytes (IP lengths) from a to b",
    "bytes_ba": "bytes from b to a",
    "accepted": "packets accepted",
    "dropped": "packets dropped",
    "retransmissions": "TCP segments s.df marks as a retransmission of any kind",
    "first": "the first packet's time",
    "last": "the last packet's time",
}
def flow_summary(entries: Iterable[Any]) -> list[dict[str, Any]]:
    """One dict of :data:`FLOW_COLUMNS` per flow of the entries, in order of first appearance.

    ``a`` is the client (the side that sent the SYN, else the first packet's source); packets
    and bytes (IP lengths) are counted per direction, whatever their verdict; ``accepted`` and
    ``dropped`` count the verdicts; ``first`` and ``last`` are the packets' times.
    """
    entries = list(entries)
    rows, conns, _ = _analyse(entries)
    out: dict[int, dict[str, Any]] = {}
    states: dict[int, _Conn] = {}
    for e, row, conn in zip(entries, rows, conns, strict=True):
        if conn is None:
            continue
        f = out.get(conn.id)
        if f is None:
            proto, x, y = conn.key
            server = y if x == conn.client else x
            f = out[conn.id] = {"flow": conn.id, "proto": PROTO_NAMES.get(proto, str(proto)),
                                "a": str(ipaddress.ip_address(conn.client[0])), "aport": conn.client[1],
                                "b": str(ipaddress.ip_address(server[0])), "bport": server[1], "tcp_state": None,
                                "packets_ab": 0, "packets_ba": 0, "bytes_ab": 0, "bytes_ba": 0, "accepted": 0,
                                "dropped": 0, "retransmissions": 0, "first": e.time, "last": e.time}  # fmt: skip
            states[conn.id] = conn
        d = "ab" if row["side"] == "client" else "ba"
        f[f"packets_{d}"] += 1
        f[f"bytes_{d}"] += e.size
        f["accepted"] += e.verdict == "accept"
        f["dropped"] += e.verdict == "drop"
        f["retransmissions"] += bool(row["analysis"] and "retransmission" in row["analysis"])
        f["first"], f["last"] = min(f["first"], e.time), max(f["last"], e.time)
    for fid, f in out.items():
        if states[fid].key[0] == 6:
            f["tcp_state"] = states[fid].tcp_state
    return list(out.values())
