"""Packets, record entries and captures for tests, made in one place (cf. mitmproxy's ``test/tflow.py``).

Tests of pktlab, and tests a teacher writes for an assignment, build what
they need here instead of by hand in each file::

    from .testing import udp, tcp, entry, capture
    pkt = udp(dport=53, payload=b"...")          # a pktlab.Packet, checksums right
    path = capture(tmp_path / "c.pcap", [udp(seq=i) for i in range(10)])
    rec.append(entry(id=3, verdict="drop"))

Packets are built with scapy (so their bytes are what a real stack sends) and
returned as :class:`pktlab.Packet` objects; ``raw=True`` gives the bytes.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from .packet.model import Packet
from .pipeline.record import Entry

CLIENT, SERVER = "10.77.1.1", "10.77.1.2"  # a pair lab's addresses
CLIENT6, SERVER6 = "fd77:1::1", "fd77:1::2"


def _out(layers: Any, raw: bool, time: float) -> Any:
    data = bytes(layers)
    return data if raw else Packet(None, data, time)


def _l3(src: str | None, dst: str | None, ipv6: bool, **ip: Any) -> Any:
    from scapy.layers.inet import IP
    from scapy.layers.inet6 import IPv6

    if ipv6:
        return IPv6(src=src or CLIENT6, dst=dst or SERVER6, **ip)
    return IP(src=src or CLIENT, dst=dst or SERVER, **ip)


def udp(
    *,
    seq: int | None = None,
    payload: bytes = b"",
    sport: int = 40000,
    dport: int = 9000,
    src: str | None = None,
    dst: str | None = None,
    ipv6: bool = False,
    size: int | None = None,
    time: float = 0.0,
    raw: bool = False,
    **ip: Any,
) -> Any:
    """A UDP datagram; ``seq=N`` starts the payload with N as 4 bytes (what the lab's traffic sends).

    ``size`` pads the whole packet (IP header on) to that many bytes.
    """
    from scapy.layers.inet import UDP

    body = (seq.to_bytes(4, "big") if seq is not None else b"") + payload
    if size is not None:
        header = 48 if ipv6 else 28
        if size < header + len(body):
            raise ValueError(f"size {size} is smaller than the headers and payload ({header + len(body)} bytes)")
        body += bytes(size - header - len(body))
    return _out(_l3(src, dst, ipv6, **ip) / UDP(sport=sport, dport=dport) / body, raw, time)


def tcp(
    *,
    flags: str = "S",
    payload: bytes = b"",
    sport: int = 40000,
    dport: int = 9001,
    seq: int = 1000,
    ack: int = 0,
    src: str | None = None,
    dst: str | None = None,
    ipv6: bool = False,
    time: float = 0.0,
    raw: bool = False,
    options: list[tuple[str, Any]] | None = None,
    **ip: Any,
) -> Any:
    """A TCP segment (a SYN unless ``flags`` says otherwise); ``options`` as scapy takes them (``[("MSS", 1460)]``)."""
    from scapy.layers.inet import TCP

    seg = TCP(sport=sport, dport=dport, flags=flags, seq=seq, ack=ack, options=options or [])
    return _out(_l3(src, dst, ipv6, **ip) / seg / payload, raw, time)


def icmp_echo(*, seq: int = 1, src: str | None = None, dst: str | None = None, time: float = 0.0,
              raw: bool = False) -> Any:  # fmt: skip
    """An ICMP echo request."""
    from scapy.layers.inet import ICMP

    return _out(_l3(src, dst, False) / ICMP(type=8, seq=seq), raw, time)


def entry(
    *,
    id: int = 1,  # noqa: A002 - the record's field name
    time: float = 1_700_000_000.0,
    packet: Any = None,
    size: int | None = None,
    verdict: str = "accept",
    handler: str | None = None,
    handler_us: float = 0.0,
    error: str | None = None,
    modified: bool = False,
    hook: str = "INPUT",
) -> Entry:
    """A record entry (``Record.append(entry(...))``); ``packet`` defaults to a UDP datagram numbered ``id``."""
    head = packet if isinstance(packet, bytes) else bytes(packet) if packet is not None else udp(seq=id, raw=True)
    return Entry(time, id, hook, len(head) if size is None else size, head, str(verdict), handler, handler_us,
                 error, modified)  # fmt: skip


def capture(path: str | os.PathLike[str], packets: Iterable[Any], *, start: float = 1_700_000_000.0,
            gap: float = 0.001) -> Path:  # fmt: skip
    """Write packets (``Packet``, bytes, or scapy packets) to a raw-IP pcap, ``gap`` s apart; returns the path.

    A scapy packet with an Ethernet layer makes the file an Ethernet capture (all must be, then).
    """
    from .pipeline.export import write_pcap

    items = list(packets)
    eth = [getattr(p, "name", None) == "Ethernet" for p in items]
    if any(eth) and not all(eth):
        raise ValueError("a capture has one link type: give all packets with an Ethernet layer, or none")
    write_pcap(path, ((start + i * gap, bytes(p)) for i, p in enumerate(items)),
               "ethernet" if items and all(eth) else "ip")  # fmt: skip
    return Path(path)
