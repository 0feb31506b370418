"""IPv4 and IPv6 views."""

from __future__ import annotations

from ...errors import PacketFormatError
from .base import Field, View

EXT_HEADERS = {0, 43, 44, 51, 60}  # hop-by-hop, routing, fragment, AH, destination options
NOT_FRAGMENT, FIRST_FRAGMENT, LATER_FRAGMENT = 0, 1, 2


def ipv6_upper(buf: bytes | bytearray, off: int) -> tuple[int, int, int]:
    """Walk the extension headers of the IPv6 packet at ``buf[off:]``.

    Returns (protocol, offset, fragment): the first header that is not an
    extension header, where it starts, and whether the packet is a fragment
    (``NOT_FRAGMENT``, ``FIRST_FRAGMENT``, or ``LATER_FRAGMENT``: a fragment at a
    non-zero offset, whose payload holds no transport header).
    """
    if len(buf) < off + 40:
        raise PacketFormatError(f"IPv6 header needs 40 bytes, the packet has {max(0, len(buf) - off)}")
    nh = buf[off + 6]
    off += 40
    frag = NOT_FRAGMENT
    for _ in range(16):
        if nh not in EXT_HEADERS:
            return nh, off, frag
        if off + 8 > len(buf):
            raise PacketFormatError("IPv6 extension header runs past the end of the packet")
        nxt = buf[off]
        if nh == 44:
            field = int.from_bytes(buf[off + 2 : off + 4], "big")
            if field & 0xFFF8:  # fragment offset
                frag = LATER_FRAGMENT
            elif field & 1 and frag == NOT_FRAGMENT:  # more fragments follow
                frag = FIRST_FRAGMENT
            size = 8
        elif nh == 51:
            size = (buf[off + 1] + 2) * 4
        else:
            size = (buf[off + 1] + 1) * 8
        nh, off = nxt, off + size
    raise PacketFormatError("IPv6 packet has more than 16 extension headers; refusing to walk further")


class IPv4(View):
    """IPv4 header (RFC 791), options included in ``header_len``."""

    __slots__ = ()
    layer = "ip"
    header_len_min = 20
    version = Field(0, 4)
    ihl = Field(4, 4)
    tos = Field(8, 8)
    dscp = Field(8, 6)  # the tos byte's upper six bits (Differentiated Services)
    len = Field(16, 16)
    id = Field(32, 16)
    flags = Field(48, 3)
    frag = Field(51, 13)
    ttl = Field(64, 8)
    proto = Field(72, 8)
    chksum = Field(80, 16)
    src = Field(96, 32, "ipv4")
    dst = Field(128, 32, "ipv4")

    @property
    def header_len(self) -> int:
        n = self.ihl * 4
        if n < 20:
            raise PacketFormatError(f"IPv4 header length field says {n} bytes, less than the minimum 20")
        return n

    @property
    def options(self) -> bytes:
        """The header's option bytes (raises if the header runs past the end of the packet)."""
        return self._pkt._bytes(self._off + 20, self.payload_offset)

    @property
    def is_fragment(self) -> bool:
        return bool(self.flags & 1) or self.frag != 0


class IPv6(View):
    """IPv6 fixed header (RFC 8200); :meth:`upper` walks extension headers."""

    __slots__ = ()
    layer = "ipv6"
    header_len_min = 40
    version = Field(0, 4)
    tc = Field(4, 8)
    dscp = Field(4, 6)  # the traffic class's upper six bits
    fl = Field(12, 20)
    plen = Field(32, 16)
    nh = Field(48, 8)
    hlim = Field(56, 8)
    src = Field(64, 128, "ipv6")
    dst = Field(192, 128, "ipv6")

    def upper(self) -> tuple[int, int, int]:
        """(protocol, offset, fragment) of the first non-extension header; see :func:`ipv6_upper`."""
        try:
            return ipv6_upper(self._pkt._buf, self._off)
        except PacketFormatError:
            self._pkt._need(len(self._pkt._buf) + 1, "ipv6's extension headers")  # raises if not all were copied
            raise

    @property
    def header_len(self) -> int:
        return self.upper()[1] - self._off
