"""Packets a handler sends: the answer to a packet, and a user's own packet checked before it goes.

:func:`reply_to` builds the IP packet that answers ``pkt``: addresses swapped,
and for UDP the ports swapped, for an ICMP/ICMPv6 echo request the echo reply,
for TCP a segment with swapped ports whose sequence numbers continue the
conversation (or the handler's own segment).  :func:`outgoing` checks a
packet the user built (bytes or a scapy packet) and fixes its lengths and
checksums.  Both return the packet's bytes, sent by nobody yet; sending is the
session's job (``pkt.reply``, ``Session.send``).
"""

from __future__ import annotations

import struct
from typing import Any

from ..errors import PacketFormatError
from ._core import PacketCore, fix_packet
from .views.ip import LATER_FRAGMENT
from .views.transport import TCPFlags

TTL = 64
ECHO = {1: (8, 0), 58: (128, 129)}  # protocol -> (echo request type, echo reply type)
_FLAG_LETTERS = [n[0].upper() for n in TCPFlags.NAMES]


def _as_bytes(data: Any, what: str) -> bytes:
    if isinstance(data, (bytes, bytearray, memoryview)):
        return bytes(data)
    if isinstance(data, str):
        return data.encode()
    if hasattr(data, "build") and hasattr(data, "layers"):  # a scapy packet or layer
        return bytes(data)
    raise PacketFormatError(f"{what} must be bytes, str or a scapy packet, not {type(data).__name__}")


def tcp_flag_bits(flags: str | int) -> int:
    """TCP flag bits from letters (``"SA"``, ``"PA"``, ``"R"``) or a number."""
    if isinstance(flags, int):
        return flags & 0xFF
    bits = 0
    for ch in flags.upper():
        if ch not in _FLAG_LETTERS:
            raise PacketFormatError(f"{ch!r} is not a TCP flag; use letters of {''.join(_FLAG_LETTERS)}")
        bits |= 1 << _FLAG_LETTERS.index(ch)
    return bits


def _ip_header(version: int, src: bytes, dst: bytes, proto: int, body_len: int) -> bytes:
    if version == 4:  # id 0: the kernel picks one; checksum and lengths are fixed below
        return struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + body_len, 0, 0x4000, TTL, proto, 0, src, dst)
    return struct.pack("!IHBB16s16s", 6 << 28, body_len, proto, TTL, src, dst)


def _fits(version: int, body_len: int) -> None:
    if body_len + (20 if version == 4 else 0) > 0xFFFF:
        raise PacketFormatError(f"a reply of {body_len:,} bytes does not fit an IP packet (65,535 at most)")


def checksummed(data: bytes) -> bytes:
    """``data`` with its IP lengths and IP/transport checksums computed (the verdict-time fix-up)."""
    core = PacketCore(None, bytearray(data))
    fix_packet(core)
    return bytes(core._buf)


def reply_to(
    pkt: Any,
    payload: Any = None,
    *,
    segment: Any = None,
    flags: str | int = "PA",
    seq: int | None = None,
    ack: int | None = None,
) -> bytes:
    """The packet that answers ``pkt`` (not sent), from its destination back to its source, as bytes.

    UDP: ``payload`` is the datagram's payload.  ICMP/ICMPv6 echo request: an
    echo reply with the same id and sequence, carrying ``payload`` (default: the
    request's data).  TCP: a segment from the request's destination port with
    ``payload`` as data, ``flags`` (default ``"PA"``), ``seq`` (default: what the
    request acknowledged) and ``ack`` (default: the end of the request's data,
    SYN and FIN counted); or the handler's own TCP ``segment`` (header and data,
    bytes or a scapy ``TCP``), whose checksum is fixed.
    """
    l3 = pkt._l3
    version = pkt.version
    if l3 < 0 or version not in (4, 6):
        raise PacketFormatError(f"{pkt.summary()} is not an IP packet; only IP packets can be answered")
    proto, off, frag = pkt._upper()
    if frag == LATER_FRAGMENT:
        raise PacketFormatError("a later fragment has no transport header to answer; answer the first fragment")
    buf = pkt._buf
    if version == 4:
        src, dst = bytes(buf[l3 + 12 : l3 + 16]), bytes(buf[l3 + 16 : l3 + 20])
    else:
        src, dst = bytes(buf[l3 + 8 : l3 + 24]), bytes(buf[l3 + 24 : l3 + 40])
    if segment is not None and proto != 6:
        raise PacketFormatError("segment= answers a TCP packet; for UDP and ICMP give the payload")
    if proto == 17:
        u = pkt.udp
        data = _as_bytes(b"" if payload is None else payload, "the reply's payload")
        _fits(version, 8 + len(data))
        body = struct.pack("!HHHH", u.dport, u.sport, 8 + len(data), 0xFFFF) + data  # not 0: "no checksum" in IPv4
    elif proto in ECHO and pkt.transport.type == ECHO[proto][0]:
        t = pkt.transport
        data = t.payload if payload is None else _as_bytes(payload, "the reply's payload")
        body = struct.pack("!BBHHH", ECHO[proto][1], 0, 0, t.id, t.seq) + data
    elif proto == 6:
        t = pkt.tcp
        if segment is not None:
            body = _as_bytes(segment, "the reply's TCP segment")
            hlen = (body[12] >> 4) * 4 if len(body) > 12 else 0
            if len(body) < 20 or not 20 <= hlen <= len(body):
                raise PacketFormatError(
                    f"the TCP segment of {len(body)} bytes has no valid header (header length {hlen}); "
                    "give a whole TCP header and data, e.g. bytes(scapy TCP(...)/data)"
                )
        else:
            data = _as_bytes(b"" if payload is None else payload, "the reply's payload")
            f = t.flagbits
            req_len = len(t.payload) + (1 if f & 2 else 0) + (1 if f & 1 else 0)
            bits = tcp_flag_bits(flags)
            if seq is None:
                seq = t.ack if f & 0x10 else 0
            if ack is None:
                ack = (t.seq + req_len) & 0xFFFFFFFF
            body = struct.pack("!HHIIBBHHH", t.dport, t.sport, seq & 0xFFFFFFFF, ack & 0xFFFFFFFF, 5 << 4, bits,
                               65535, 0, 0) + data  # fmt: skip
    elif proto in ECHO:
        raise PacketFormatError(
            f"{pkt.summary()} is not an echo request; pkt.reply answers UDP, TCP and echo requests "
            "(build other ICMP messages with scapy and send them with s.send)"
        )
    else:
        raise PacketFormatError(
            f"protocol {proto} cannot be answered by pkt.reply (UDP, TCP and echo requests can); "
            "build the packet yourself and send it with s.send"
        )
    _fits(version, len(body))
    return checksummed(_ip_header(version, dst, src, proto, len(body)) + body)


def outgoing(data: Any, *, fix: bool = True) -> bytes:
    """A packet the user built (bytes from its IP header, or a scapy packet), checked for sending: its bytes.

    ``fix`` recomputes the IP length and the IP and transport checksums (a
    scapy packet has them already; raw bytes usually need them).
    """
    if hasattr(data, "layers") and type(data).__name__ in ("Ether", "CookedLinux", "CookedLinuxV2"):
        data = data.payload  # a scapy Ether()/IP(): what follows the link header is the packet
    raw = _as_bytes(data, "a packet to send")
    if len(raw) < 20 or raw[0] >> 4 not in (4, 6):
        raise PacketFormatError(
            f"{len(raw)} bytes starting {raw[:4].hex() or '(nothing)'} are not an IPv4/IPv6 packet; give the packet "
            "from its IP header on (bytes, or a scapy IP()/IPv6() packet)"
        )
    if raw[0] >> 4 == 6 and len(raw) < 40:
        raise PacketFormatError(f"{len(raw)} bytes are too few for an IPv6 packet (its header alone has 40)")
    if raw[0] >> 4 == 4 and not 20 <= (raw[0] & 15) * 4 <= len(raw):
        raise PacketFormatError(f"the IPv4 header length {(raw[0] & 15) * 4} does not fit the {len(raw)}-byte packet")
    if len(raw) > 0xFFFF:
        raise PacketFormatError(f"{len(raw):,} bytes do not fit an IP packet (65,535 at most)")
    return checksummed(raw) if fix else raw
