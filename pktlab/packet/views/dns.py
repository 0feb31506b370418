"""DNS messages (RFC 1035): the fixed header as fields, the sections parsed only when read.

Names are decoded with compression pointers, with a bound on the pointers
followed so that a looping message raises :class:`PacketFormatError` instead
of hanging.  Resource records expose their fixed parts (type, class, TTL) as
writable values and A/AAAA data as a writable ``address``.
"""

from __future__ import annotations

import ipaddress
from typing import Any

from ...errors import PacketFormatError
from .base import Field, View

TYPES = {1: "A", 2: "NS", 5: "CNAME", 6: "SOA", 12: "PTR", 15: "MX", 16: "TXT", 28: "AAAA", 33: "SRV", 255: "ANY"}
MAX_POINTERS = 32


def _read_name(buf: bytes | bytearray, start: int, base: int) -> tuple[str, int]:
    """(name, offset just after it where it was written) for a name at ``start``; ``base`` is the message start."""
    labels: list[str] = []
    at = start
    end_after = -1
    jumps = 0
    while True:
        if at >= len(buf):
            raise PacketFormatError(f"a DNS name at offset {start} runs past the end of the packet")
        n = buf[at]
        if n == 0:
            if end_after < 0:
                end_after = at + 1
            break
        if n & 0xC0 == 0xC0:
            if at + 1 >= len(buf):
                raise PacketFormatError(f"a DNS compression pointer at offset {at} is cut short")
            jumps += 1
            if jumps > MAX_POINTERS:
                raise PacketFormatError(f"a DNS name at offset {start} follows more than {MAX_POINTERS} pointers")
            if end_after < 0:
                end_after = at + 2
            at = base + (((n & 0x3F) << 8) | buf[at + 1])
            continue
        if n & 0xC0:
            raise PacketFormatError(f"a DNS label at offset {at} has reserved length bits set ({n:#x})")
        if at + 1 + n > len(buf):
            raise PacketFormatError(f"a DNS label at offset {at} runs past the end of the packet")
        labels.append(bytes(buf[at + 1 : at + 1 + n]).decode("latin-1"))
        at += 1 + n
    return ".".join(labels) + ".", end_after


class Question:
    """One entry of the question section."""

    __slots__ = ("_view", "offset", "name", "_fixed")

    def __init__(self, view: DNS, offset: int) -> None:
        self._view, self.offset = view, offset
        self.name, self._fixed = _read_name(view._pkt._buf, offset, view._off)
        if self._fixed + 4 > len(view._pkt._buf):
            raise PacketFormatError(f"a DNS question at offset {offset} is cut short")

    def _u16(self, at: int) -> int:
        buf = self._view._pkt._buf
        return (buf[at] << 8) | buf[at + 1]

    @property
    def type(self) -> int:
        return self._u16(self._fixed)

    @property
    def cls(self) -> int:
        return self._u16(self._fixed + 2)

    @property
    def end(self) -> int:
        return self._fixed + 4

    def __repr__(self) -> str:
        return f"<Question {self.name} {TYPES.get(self.type, self.type)}>"


class ResourceRecord(Question):
    """One resource record: name, type, class, TTL and data."""

    __slots__ = ()

    def __init__(self, view: DNS, offset: int) -> None:
        super().__init__(view, offset)
        if self._fixed + 10 > len(view._pkt._buf) or self.data_end > len(view._pkt._buf):
            raise PacketFormatError(f"a DNS resource record at offset {offset} is cut short")

    @property
    def ttl(self) -> int:
        buf = self._view._pkt._buf
        return int.from_bytes(buf[self._fixed + 4 : self._fixed + 8], "big")

    @ttl.setter
    def ttl(self, value: int) -> None:
        if not 0 <= value < 1 << 32:
            raise ValueError(f"a TTL is 32 bits; {value} does not fit")
        self._write(self._fixed + 4, int(value).to_bytes(4, "big"))

    @property
    def rdlength(self) -> int:
        return self._u16(self._fixed + 8)

    @property
    def data_start(self) -> int:
        return self._fixed + 10

    @property
    def data_end(self) -> int:
        return self.data_start + self.rdlength

    @property
    def end(self) -> int:
        return self.data_end

    @property
    def data(self) -> bytes:
        return bytes(self._view._pkt._buf[self.data_start : self.data_end])

    @property
    def address(self) -> str | None:
        """The address of an A or AAAA record (None for other types)."""
        if self.type == 1 and self.rdlength == 4:
            return str(ipaddress.IPv4Address(self.data))
        if self.type == 28 and self.rdlength == 16:
            return str(ipaddress.IPv6Address(self.data))
        return None

    @address.setter
    def address(self, value: str) -> None:
        if self.type == 1 and self.rdlength == 4:
            packed = ipaddress.IPv4Address(value).packed
        elif self.type == 28 and self.rdlength == 16:
            packed = ipaddress.IPv6Address(value).packed
        else:
            raise ValueError(f"only A and AAAA records have an address; this one is {TYPES.get(self.type, self.type)}")
        self._write(self.data_start, packed)

    @property
    def target(self) -> str | None:
        """The name a CNAME, NS or PTR record points to (None for other types)."""
        if self.type in (2, 5, 12):
            return _read_name(self._view._pkt._buf, self.data_start, self._view._off)[0]
        return None

    def _write(self, at: int, data: bytes) -> None:
        pkt = self._view._pkt
        buf = pkt._writable()
        buf[at : at + len(data)] = data
        pkt._dirty = True

    def __repr__(self) -> str:
        shown = self.address or self.target or self.data.hex()
        return f"<RR {self.name} {TYPES.get(self.type, self.type)} ttl={self.ttl} {shown}>"


class DNS(View):
    """A DNS message: header fields, and ``questions``, ``answers``, ``authority``, ``additional``."""

    __slots__ = ()
    layer = "dns"
    header_len_min = 12
    id = Field(0, 16)
    qr = Field(16, 1)
    opcode = Field(17, 4)
    aa = Field(21, 1)
    tc = Field(22, 1)
    rd = Field(23, 1)
    ra = Field(24, 1)
    z = Field(25, 3)
    rcode = Field(28, 4)
    qdcount = Field(32, 16)
    ancount = Field(48, 16)
    nscount = Field(64, 16)
    arcount = Field(80, 16)

    def _sections(self) -> tuple[list[Question], list[ResourceRecord], list[ResourceRecord], list[ResourceRecord]]:
        at = self._off + 12
        qs: list[Question] = []
        for _ in range(self.qdcount):
            q = Question(self, at)
            qs.append(q)
            at = q.end
        out: list[list[ResourceRecord]] = []
        for count in (self.ancount, self.nscount, self.arcount):
            rrs = []
            for _ in range(count):
                rr = ResourceRecord(self, at)
                rrs.append(rr)
                at = rr.end
            out.append(rrs)
        return qs, out[0], out[1], out[2]

    @property
    def questions(self) -> list[Question]:
        return self._sections()[0]

    @property
    def answers(self) -> list[ResourceRecord]:
        return self._sections()[1]

    @property
    def authority(self) -> list[ResourceRecord]:
        return self._sections()[2]

    @property
    def additional(self) -> list[ResourceRecord]:
        return self._sections()[3]

    @property
    def qname(self) -> str | None:
        """The first question's name (the usual case: one question)."""
        qs = self.questions
        return qs[0].name if qs else None

    def as_dict(self) -> dict[str, Any]:
        out = super().as_dict()
        try:
            out["questions"] = [repr(q) for q in self.questions]
            out["answers"] = [repr(a) for a in self.answers]
        except PacketFormatError:
            out["questions"] = out["answers"] = None
        return out
