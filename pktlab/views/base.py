"""The machinery of protocol views: fields declared as (offset, bits, kind).

A view is a window on a packet's buffer starting at ``offset``.  Its class
declares fields; reading one decodes just those bytes, writing one patches
them in place and marks the packet dirty so that lengths and checksums are
fixed once, when the verdict is given.
"""

from __future__ import annotations

import ipaddress
import struct
from typing import TYPE_CHECKING, Any

from ..errors import PacketFormatError

if TYPE_CHECKING:
    from ..packet import Packet


class Field:
    """A field ``bits`` wide starting ``bit`` bits into its view.

    ``kind`` is ``int`` (unsigned, network order), ``"ipv4"``/``"ipv6"``
    (addresses as strings), ``"mac"`` or ``bytes``.
    """

    __slots__ = ("name", "bit", "bits", "kind", "_byte", "_nbytes", "_shift", "_mask", "_aligned", "_unpack")

    def __init__(self, bit: int, bits: int, kind: Any = int) -> None:
        self.bit, self.bits, self.kind = bit, bits, kind
        self._byte = bit // 8
        end = (bit + bits + 7) // 8
        self._nbytes = end - self._byte
        self._shift = end * 8 - (bit + bits)
        self._mask = (1 << bits) - 1
        self._aligned = bit % 8 == 0 and bits % 8 == 0
        fmt = {1: "!B", 2: "!H", 4: "!I", 8: "!Q"}.get(self._nbytes) if kind is int else None
        self._unpack = struct.Struct(fmt).unpack_from if fmt else None
        self.name = ""

    def __set_name__(self, owner: type, name: str) -> None:
        self.name = name

    def _short(self, view: View) -> PacketFormatError:
        n = len(view._pkt._buf)
        start = view._off + self._byte
        return PacketFormatError(
            f"{type(view).__name__.lower()}.{self.name} lies past the end of the "
            f"{n}-byte packet (needs bytes {start}..{start + self._nbytes - 1}); "
            "the packet is truncated or its header lengths are wrong"
        )

    def _span(self, view: View) -> tuple[bytes | bytearray, int]:
        buf = view._pkt._buf
        start = view._off + self._byte
        if start + self._nbytes > len(buf):
            raise self._short(view)
        return buf, start

    def __get__(self, view: View | None, owner: type) -> Any:
        if view is None:
            return self
        unpack = self._unpack
        if unpack is not None:  # the common case: an integer of 1, 2, 4 or 8 bytes
            try:
                v = unpack(view._pkt._buf, view._off + self._byte)[0]
            except struct.error:
                raise self._short(view) from None
            return v if self._aligned else (v >> self._shift) & self._mask
        buf, start = self._span(view)
        raw = buf[start : start + self._nbytes]
        kind = self.kind
        if kind is int:
            v = int.from_bytes(raw, "big")
            return v if self._aligned else (v >> self._shift) & self._mask
        if kind == "ipv4":
            return str(ipaddress.IPv4Address(bytes(raw)))
        if kind == "ipv6":
            return str(ipaddress.IPv6Address(bytes(raw)))
        if kind == "mac":
            return ":".join(f"{b:02x}" for b in raw)
        return bytes(raw)

    def encode(self, value: Any) -> bytes:
        kind = self.kind
        if kind == "ipv4":
            return ipaddress.IPv4Address(value).packed
        if kind == "ipv6":
            return ipaddress.IPv6Address(value).packed
        if kind == "mac":
            return bytes(int(x, 16) for x in str(value).split(":"))
        if kind is bytes:
            b = bytes(value)
            if len(b) != self._nbytes:
                raise ValueError(f"{self.name} takes exactly {self._nbytes} bytes, got {len(b)}")
            return b
        raise TypeError(kind)

    def __set__(self, view: View, value: Any) -> None:
        _, start = self._span(view)
        buf = view._pkt._writable()
        if self.kind is int:
            value = int(value)
            if not 0 <= value <= self._mask:
                raise ValueError(f"{self.name} is {self.bits} bits wide; {value} does not fit")
            if self._aligned:
                buf[start : start + self._nbytes] = value.to_bytes(self._nbytes, "big")
            else:
                old = int.from_bytes(buf[start : start + self._nbytes], "big")
                old &= ~(self._mask << self._shift)
                old |= value << self._shift
                buf[start : start + self._nbytes] = old.to_bytes(self._nbytes, "big")
        else:
            buf[start : start + self._nbytes] = self.encode(value)
        view._touched(self.name)


class View:
    """A protocol layer seen at ``offset`` in a packet."""

    __slots__ = ("_pkt", "_off")
    header_len_min = 0
    layer = ""

    def __init__(self, pkt: Packet, offset: int) -> None:
        self._pkt = pkt
        self._off = offset

    @classmethod
    def fields(cls) -> list[Field]:
        out: list[Field] = []
        for klass in reversed(cls.__mro__):
            out.extend(v for v in vars(klass).values() if isinstance(v, Field))
        return out

    @property
    def offset(self) -> int:
        """Where the layer starts in the packet."""
        return self._off

    @property
    def header_len(self) -> int:
        return self.header_len_min

    @property
    def payload_offset(self) -> int:
        return self._off + self.header_len

    @property
    def payload(self) -> bytes:
        """The bytes after this layer's header."""
        return bytes(self._pkt._buf[self.payload_offset :])

    @payload.setter
    def payload(self, data: bytes) -> None:
        self._pkt._replace(self.payload_offset, len(self._pkt._buf), bytes(data))

    def _touched(self, name: str) -> None:
        """Called after a field write; the packet fixes lengths/checksums at verdict time."""
        self._pkt._dirty = True

    def as_dict(self) -> dict[str, Any]:
        out = {}
        for f in self.fields():
            try:
                out[f.name] = getattr(self, f.name)
            except PacketFormatError:
                out[f.name] = None
        return out

    def __repr__(self) -> str:
        body = " ".join(f"{k}={v}" for k, v in self.as_dict().items() if k != "chksum")
        return f"<{type(self).__name__} {body}>"

    def __bool__(self) -> bool:
        return True
