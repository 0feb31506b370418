"""UDP, TCP, ICMP and ICMPv6 views."""

from __future__ import annotations

from ...errors import PacketFormatError
from .base import Field, View


class UDP(View):
    __slots__ = ()
    layer = "udp"
    header_len_min = 8
    sport = Field(0, 16)
    dport = Field(16, 16)
    len = Field(32, 16)
    chksum = Field(48, 16)


class TCPFlags:
    """The TCP flag bits as attributes: ``pkt.tcp.flags.syn``."""

    __slots__ = ("value",)
    NAMES = ("fin", "syn", "rst", "psh", "ack", "urg", "ece", "cwr")

    def __init__(self, value: int) -> None:
        self.value = value

    def __getattr__(self, name: str) -> bool:
        try:
            return bool(self.value >> self.NAMES.index(name) & 1)
        except ValueError:
            raise AttributeError(name) from None

    def __int__(self) -> int:
        return self.value

    def __eq__(self, other: object) -> bool:
        if isinstance(other, str):
            return str(self) == other.upper()
        return self.value == int(other)  # type: ignore[call-overload]

    def __hash__(self) -> int:
        return self.value

    def __str__(self) -> str:
        return "".join(n[0].upper() for i, n in enumerate(self.NAMES) if self.value >> i & 1)

    def __repr__(self) -> str:
        return f"<TCPFlags {self}>"


class TCP(View):
    __slots__ = ()
    layer = "tcp"
    header_len_min = 20
    sport = Field(0, 16)
    dport = Field(16, 16)
    seq = Field(32, 32)
    ack = Field(64, 32)
    dataofs = Field(96, 4)
    reserved = Field(100, 4)
    flagbits = Field(104, 8)
    window = Field(112, 16)
    chksum = Field(128, 16)
    urgptr = Field(144, 16)

    @property
    def flags(self) -> TCPFlags:
        return TCPFlags(self.flagbits)

    @flags.setter
    def flags(self, value: int | str | TCPFlags) -> None:
        if isinstance(value, str):
            bits = 0
            for ch in value.upper():
                bits |= 1 << [n[0].upper() for n in TCPFlags.NAMES].index(ch)
            value = bits
        self.flagbits = int(value)

    @property
    def header_len(self) -> int:
        n = self.dataofs * 4
        if n < 20:
            raise PacketFormatError(f"TCP data offset says {n} bytes, less than the minimum 20")
        return n

    @property
    def options(self) -> bytes:
        """The header's option bytes (raises if the header runs past the end of the packet)."""
        return self._pkt._bytes(self._off + 20, self.payload_offset)


class ICMP(View):
    __slots__ = ()
    layer = "icmp"
    header_len_min = 8
    type = Field(0, 8)
    code = Field(8, 8)
    chksum = Field(16, 16)
    id = Field(32, 16)
    seq = Field(48, 16)


class ICMPv6(ICMP):
    __slots__ = ()
    layer = "icmpv6"
