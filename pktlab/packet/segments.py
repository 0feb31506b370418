"""Cutting a TCP packet bigger than a route's MTU into segments, as the kernel's GSO would have.

A queue bound with GSO hands over a TCP send of up to 64 KiB as one packet; the kernel cuts it
where it leaves.  A rewritten packet that pktlab itself must send (user-namespace mode, where
the kernel refuses a verdict's new payload) leaves through a raw socket, which the kernel does
not cut: this module does.  Like ``tcp_gso_segment``: each segment carries the headers with its
own sequence number, CWR only on the first, FIN and PSH only on the last, IPv4 ids counting up.
"""

from __future__ import annotations

from ..errors import PacketFormatError
from .replies import checksummed

TCP = 6
FIN, PSH, CWR = 0x01, 0x08, 0x80


def tcp_segments(data: bytes, mtu: int) -> list[bytes]:
    """``data`` (an IPv4 or IPv6 TCP packet) as packets of at most ``mtu`` bytes, checksums fixed."""
    version = data[0] >> 4
    if version == 4:
        ip_len, proto = (data[0] & 0x0F) * 4, data[9]
    elif version == 6:
        ip_len, proto = 40, data[6]
    else:
        raise PacketFormatError(f"IP version {version} cannot be cut into segments")
    if proto != TCP:
        raise PacketFormatError(f"only TCP packets are cut into segments here (protocol {proto})")
    if len(data) < ip_len + 20:
        raise PacketFormatError(f"a {len(data)}-byte packet is too short for its TCP header")
    tcp_len = (data[ip_len + 12] >> 4) * 4
    head_len = ip_len + tcp_len
    mss = mtu - head_len
    if mss <= 0:
        raise PacketFormatError(f"an MTU of {mtu} bytes leaves no room after {head_len} bytes of headers")
    head, payload = data[:head_len], data[head_len:]
    if len(data) <= mtu:
        return [bytes(data)]
    seq = int.from_bytes(data[ip_len + 4 : ip_len + 8], "big")
    flags = data[ip_len + 13]
    ip_id = int.from_bytes(data[4:6], "big") if version == 4 else 0
    count = -(-len(payload) // mss)
    out = []
    for i in range(count):
        h = bytearray(head)
        h[ip_len + 4 : ip_len + 8] = ((seq + i * mss) & 0xFFFFFFFF).to_bytes(4, "big")
        f = flags
        if i:
            f &= ~CWR
        if i < count - 1:
            f &= ~(FIN | PSH)
        h[ip_len + 13] = f
        if version == 4:
            h[4:6] = ((ip_id + i) & 0xFFFF).to_bytes(2, "big")
        out.append(checksummed(bytes(h) + payload[i * mss : (i + 1) * mss]))
    return out
