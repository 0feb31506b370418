"""Captures written: the one module that writes pcap and pcapng files (scapy's public writers).

:func:`write_pcap` writes packets as a classic pcap (a replay's outputs, test captures, the datasets);
:func:`to_pcap` writes records as captures Wireshark reads whole: pcapng, sessions merged in time order, a
comment per packet.

Each packet's comment carries what the capture alone would lose: the
session, the verdict, the handler that gave it, its error, whether a handler
rewrote it, and whether the record cut it (a record keeps ``snaplen`` bytes of
each packet).  Several sessions go into one file in time order, so both
directions of a path (two sessions, or a client's and a server's) read as one
capture; Wireshark tells them apart by the comment (``frame.comment contains
"session=NAME"``).  One interface for all: libpcap 1.10 (and so
:func:`pktlab.replay`) refuses a second interface of raw-IP packets ("a type
101 different from the type of the first interface": it compares the file's
link type with its own number for it).  Written with scapy's pcapng writer;
tshark and Wireshark read it.
"""

from __future__ import annotations

import heapq
import os
import sys
from collections.abc import Iterable, Sequence
from typing import Any, Protocol

from ..errors import PktlabError, SessionError
from .record import Entry, Record

LINKTYPE_RAW = 101  # packets start at the IP header, IPv4 or IPv6
OUTBOUND = 2  # pcapng's direction flag for what pktlab sent itself


class Recorded(Protocol):
    """What has packets to export: a session (live or replay) has a name and a record."""

    name: str
    record: Record


LINKTYPES = {"ip": LINKTYPE_RAW, "ethernet": 1}


def write_pcap(path: str | os.PathLike[str], packets: Iterable[tuple[Any, ...]], link: str = "ip") -> int:
    """Write ``(time, bytes)`` or ``(time, bytes, length on the wire)`` packets to a classic pcap; how many.

    ``link``: ``"ip"`` (raw IPv4/IPv6, what a queue sees) or ``"ethernet"``.  An empty file is still a valid
    capture.  A file that cannot be written raises :class:`~pktlab.errors.PktlabError` naming it.
    """
    from scapy.utils import RawPcapWriter

    if link not in LINKTYPES:
        raise ValueError(f"link {link!r} is not one pktlab writes; use 'ip' or 'ethernet'")
    n = 0
    try:
        w = RawPcapWriter(str(path), linktype=LINKTYPES[link], snaplen=65535, sync=False)
        try:
            w.write_header(None)
            for t, data, *wire in packets:
                sec = int(t)
                usec = min(999_999, round((t - sec) * 1e6))
                w.write_packet(data, sec=sec, usec=usec, wirelen=wire[0] if wire else len(data))
                n += 1
        finally:
            w.close()
    except OSError as exc:
        raise PktlabError(f"cannot write {path}: {exc}") from None
    return n


def comment(session: str, e: Entry) -> str:
    """A packet's comment: ``pktlab session=s verdict=drop handler=fw`` and what else it had."""
    parts = [f"pktlab session={session}", f"verdict={e.verdict}", f"handler={e.handler or 'none'}"]
    if e.modified:
        parts.append("rewritten by the handler (the bytes here are as it arrived)")
    if e.error:
        parts.append(f"error={e.error.splitlines()[-1] if e.error.strip() else e.error}")
    if len(e.head) < e.size:
        parts.append(f"cut to {len(e.head)} of {e.size} bytes (the record's snaplen)")
    return " ".join(parts)


def to_pcap(sources: Recorded | Sequence[Recorded], path: str | os.PathLike[str]) -> int:
    """Write the packets of one or more sessions' records to ``path`` as pcapng, merged in time order.

    Returns how many packets were written; says once (stderr) how many were cut to their
    record's ``snaplen`` and how to keep them whole.
    """
    from scapy.packet import Raw
    from scapy.utils import PcapNgWriter

    many = list(sources) if isinstance(sources, Sequence) and not isinstance(sources, str) else [sources]
    if not many or not all(hasattr(s, "record") and hasattr(s, "name") for s in many):
        raise SessionError("to_pcap takes a session (or a list of them) and then the path: to_pcap([s1, s2], path)")
    names = [s.name for s in many]
    if len(set(names)) != len(names):
        raise SessionError(f"two sessions have the same name ({', '.join(names)}); give them different names")
    streams = [_timed(s.name, s.record.entries()) for s in many]
    w = PcapNgWriter(str(path))
    w.linktype = LINKTYPE_RAW
    n = cut = 0
    try:
        w.write_header(None)  # an empty record still yields a valid file
        for _, _, name, e in heapq.merge(*streams):
            p: Any = Raw(e.head)
            p.time = e.time
            p.wirelen = max(e.size, len(e.head))
            p.comments = [comment(name, e).encode()]
            if e.verdict == "sent":
                p.direction = OUTBOUND
            w.write_packet(p)
            n += 1
            cut += len(e.head) < e.size
    finally:
        w.close()
    if cut:
        snaps = sorted({s.record.snaplen for s in many})
        print(
            f"pktlab: {cut} of {n} packets were cut to the record's snaplen ({', '.join(map(str, snaps))} bytes); "
            "attach with snaplen=65535 (--snaplen 65535) and a smaller record_size to export them whole",
            file=sys.stderr,
        )
    return n


def _timed(name: str, entries: Iterable[Entry]) -> list[tuple[float, int, str, Entry]]:
    """A session's entries in arrival order (a held packet's entry is made at its verdict, later than the next)."""
    return sorted(((e.time, i, name, e) for i, e in enumerate(entries)), key=lambda t: (t[0], t[1]))
