"""User-defined protocols (``pktlab.protocol``): a class of declared fields becomes a view reachable as ``pkt.<name>``.

    @pktlab.protocol(over="udp", port=9999)
    class Ticker:
        version: pktlab.bits(4)
        kind:    pktlab.bits(4)
        seq:     pktlab.uint(16)
        symbol:  pktlab.text(8)

    pkt.ticker.seq          # reads two bytes
    pkt.ticker.seq += 1     # rewrites them; the UDP checksum is fixed at verdict time

Fields are laid out one after the other, in bits.  A protocol sits on top of
a parent layer (``"udp"``, ``"tcp"``, ``"ip"``, ``"ipv6"`` or another
user-defined protocol), bound to a port (either direction) or to a value of
the parent's type field, and/or accepted by a ``matches(view)`` policy.
Running the decorated cell again replaces the protocol of that name.  The
registry is :data:`registry` (``pktlab.protocols``); lookups happen only when
a handler asks for ``pkt.<name>``, so defined protocols cost nothing otherwise.
"""

from __future__ import annotations

import sys
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from ..errors import PacketFormatError, PktlabError, brief
from ._core import Field, as_bytes
from .views.base import View


@dataclass(frozen=True)
class FieldSpec:
    """What an annotation declares: a width in bits and how to read the bits."""

    bits: int
    kind: Any = int
    byte_aligned: bool = False

    def __post_init__(self) -> None:
        if not isinstance(self.bits, int) or isinstance(self.bits, bool) or self.bits < 1:
            raise PktlabError(f"a field must be at least one bit wide, not {brief(self.bits)}")


def _bytes_wide(n: Any, what: str) -> int:
    """``n`` bytes in bits, for ``text(n)`` / ``raw(n)``: at least one byte, said in bytes."""
    if not isinstance(n, int) or isinstance(n, bool) or n < 1:
        raise PktlabError(f"{what}({brief(n)}): a field of bytes must be at least one byte long")
    return 8 * n


def bits(n: int) -> FieldSpec:
    """An unsigned integer ``n`` bits wide (any alignment)."""
    return FieldSpec(n)


def uint(n: int, order: str = "big") -> FieldSpec:
    """An unsigned integer of ``n`` bits in ``order`` ("big", network order, or "little")."""
    if order not in ("big", "little"):
        raise PktlabError(f"byte order {order!r} is not 'big' or 'little'")
    if order == "little":
        if n % 8:
            raise PktlabError(f"a little-endian field must be whole bytes; {n} bits is not")
        return FieldSpec(n, "le", byte_aligned=True)
    return FieldSpec(n)


def text(n: int) -> FieldSpec:
    """Fixed-width text of ``n`` bytes, padded with NUL bytes (read without them)."""
    return FieldSpec(_bytes_wide(n, "text"), "text", byte_aligned=True)


def raw(n: int) -> FieldSpec:
    """``n`` bytes, as bytes."""
    return FieldSpec(_bytes_wide(n, "raw"), bytes, byte_aligned=True)


def addr4() -> FieldSpec:
    """An IPv4 address (4 bytes, read as text)."""
    return FieldSpec(32, "ipv4", byte_aligned=True)


def addr6() -> FieldSpec:
    """An IPv6 address (16 bytes, read as text)."""
    return FieldSpec(128, "ipv6", byte_aligned=True)


def mac() -> FieldSpec:
    """A MAC address (6 bytes, read as aa:bb:...)."""
    return FieldSpec(48, "mac", byte_aligned=True)


@dataclass(frozen=True)
class VarBytes:
    """A variable-length field, last in the layout: its length in bytes is ``length(view)``."""

    length: Callable[[Any], int]


def varbytes(length: Callable[[Any], int]) -> VarBytes:
    """Bytes whose count another field gives: ``data: pktlab.varbytes(lambda t: t.size)``."""
    return VarBytes(length)


class VarField:
    """The descriptor of a :func:`varbytes` field: offset fixed, length computed per packet."""

    def __init__(self, byte: int, length: Callable[[Any], int]) -> None:
        self.byte, self.length, self.name = byte, length, ""

    def __set_name__(self, owner: type, name: str) -> None:
        self.name = name

    def _span(self, view: View) -> tuple[int, int]:
        start = view._off + self.byte
        n = int(self.length(view))
        size = view._pkt._size()
        if n < 0 or start + n > size:
            if n >= 0:
                view._pkt._need(start + n, f"{type(view).__name__.lower()}.{self.name}")
            raise PacketFormatError(
                f"{type(view).__name__.lower()}.{self.name} claims {n} bytes at offset {start} but the packet "
                f"has {size}; it is truncated or its length field is wrong"
            )
        return start, n

    def __get__(self, view: View | None, owner: type) -> Any:
        if view is None:
            return self
        start, n = self._span(view)
        return view._pkt._bytes(start, start + n)

    def __set__(self, view: View, value: bytes) -> None:
        start, n = self._span(view)
        data = as_bytes(value, self.name)
        if len(data) != n:
            raise ValueError(f"{self.name} is {n} bytes in this packet; set its length field first to change that")
        buf = view._pkt._writable()
        buf[start : start + n] = data
        view._pkt._dirty = True


class UserView(View):
    """Base of the views made by :func:`protocol`."""

    __slots__ = ()
    binding: Binding

    @property
    def header_len(self) -> int:
        var = [f for f in vars(type(self)).values() if isinstance(f, VarField)]
        extra = var[0]._span(self)[1] if var else 0
        return self.header_len_min + extra

    def as_dict(self) -> dict[str, Any]:
        out = super().as_dict()
        for name, f in vars(type(self)).items():
            if isinstance(f, VarField):
                try:
                    out[name] = getattr(self, name)
                except PacketFormatError:
                    out[name] = None
        return out


@dataclass(frozen=True)
class Binding:
    """Where a protocol applies: on top of ``over``, for a port or a parent field value, if ``matches``."""

    name: str
    over: str
    port: int | None
    field: str | None
    value: Any
    matches: Callable[[Any], bool] | None


class Registry:
    """The user-defined protocols, by the attribute name they answer to on a packet."""

    def __init__(self) -> None:
        self._views: dict[str, type[UserView]] = {}
        self._lock = threading.Lock()
        self.reserved: frozenset[str] = frozenset()  # the packet's own attributes (pktlab.packet.model registers them)

    def reserve(self, names: Iterable[str]) -> None:
        """Names a protocol may not take: the packet class's own attributes."""
        self.reserved = self.reserved | frozenset(names)

    def add(self, view: type[UserView]) -> None:
        with self._lock:
            self._views = {**self._views, view.binding.name: view}  # swapped whole: lookups need no lock

    def remove(self, name: str) -> None:
        with self._lock:
            if name not in self._views:
                raise PktlabError(f"no protocol named {name!r}; defined: {', '.join(self._views) or 'none'}")
            self._views = {k: v for k, v in self._views.items() if k != name}

    def clear(self) -> None:
        with self._lock:
            self._views = {}

    def __contains__(self, name: str) -> bool:
        return name in self._views

    def __getitem__(self, name: str) -> type[UserView]:
        return self._views[name]

    @property
    def names(self) -> list[str]:
        return list(self._views)

    def lookup(self, pkt: Any, name: str) -> UserView | None:
        """``pkt.<name>``: the protocol's view if it applies to this packet, else None."""
        view_cls = self._views.get(name)
        if view_cls is None:
            raise AttributeError(name)
        b = view_cls.binding
        parent = getattr(pkt, b.over) if b.over in _BUILTIN_PARENTS else self.lookup(pkt, b.over)
        if parent is None:
            return None
        if b.port is not None and b.port not in (getattr(parent, "sport", None), getattr(parent, "dport", None)):
            return None
        if b.field is not None and getattr(parent, b.field) != b.value:
            return None
        view = view_cls(pkt, parent.payload_offset)
        if b.matches is not None:
            try:
                if not b.matches(view):
                    return None
            except PacketFormatError:
                return None
        return view

    def __repr__(self) -> str:
        return f"<protocols: {', '.join(self._views) or 'none'}>"


_BUILTIN_PARENTS = ("ip", "ipv6", "udp", "tcp", "icmp", "icmpv6")
registry = Registry()
"""The user-defined protocols, ``pktlab.protocols``: list them, ``.remove(name)``, ``.clear()``."""


def _annotations(cls: type) -> dict[str, Any]:
    """The class's annotations, evaluated (a cell with ``from __future__ import annotations`` gives text)."""
    module = sys.modules.get(cls.__module__)
    env = {**(vars(module) if module else {}), **vars(cls)}
    env.setdefault("pktlab", sys.modules["pktlab"])  # the front: always loaded first, as this package's parent
    out = {}
    for name, ann in cls.__dict__.get("__annotations__", {}).items():
        out[name] = eval(ann, env) if isinstance(ann, str) else ann  # noqa: S307 - the user's own class
    return out


def protocol(
    over: str,
    *,
    port: int | None = None,
    field: str | None = None,
    value: Any = None,
    name: str | None = None,
) -> Callable[[type], type[UserView]]:
    """Class decorator: turn declared fields into a view reachable as ``pkt.<name>``.

    ``over`` is the parent layer; ``port`` binds to a TCP/UDP port (source or
    destination), ``field``/``value`` to a value of a parent field (e.g.
    ``over="ip", field="proto", value=253``).  A ``matches(self)`` method in the
    class is the policy: the view applies only where it returns true.
    ``name`` defaults to the class name in lower case.
    """
    if over not in _BUILTIN_PARENTS and over not in registry:
        raise PktlabError(
            f"cannot put a protocol over {over!r}; use one of {', '.join(_BUILTIN_PARENTS)} or a protocol "
            f"defined before ({', '.join(registry.names) or 'none yet'})"
        )
    if (field is None) != (value is None) and field is not None:
        raise PktlabError("field= needs value= as well (the parent's field value that selects this protocol)")
    if port is not None:
        if not isinstance(port, int) or isinstance(port, bool) or not 0 <= port <= 65535:
            raise PktlabError(f"port {brief(port)} is not a TCP or UDP port; give 0..65535")
        if over in ("ip", "ipv6", "icmp", "icmpv6"):
            raise PktlabError(f"port= binds a protocol over udp or tcp, not over {over}; use field= and value= there")

    def make(cls: type) -> type[UserView]:
        attr = name or cls.__name__.lower()
        if not attr.isidentifier() or attr in _BUILTIN_PARENTS or attr in registry.reserved:
            raise PktlabError(f"{attr!r} cannot name a protocol: it is not an identifier or pkt.{attr} exists")
        chain, parent = [attr], over
        while parent in registry:  # the layers under the new one: reading it must not come back to it
            chain.append(parent)
            if parent == attr:
                raise PktlabError(
                    f"protocol {attr!r} over {over!r} would sit on itself ({' over '.join(chain)}); "
                    "put it over a layer that does not rest on it"
                )
            parent = registry[parent].binding.over
        body: dict[str, Any] = {"__slots__": (), "layer": attr, "__module__": cls.__module__}
        bit = 0
        var_seen = None
        for fname, spec in _annotations(cls).items():
            if var_seen:
                raise PktlabError(f"{var_seen} is variable-length, so it must be the last field; {fname} follows it")
            if isinstance(spec, VarBytes):
                if bit % 8:
                    raise PktlabError(f"{fname} starts at bit {bit}, not on a byte: pad the fields before it")
                body[fname] = VarField(bit // 8, spec.length)
                var_seen = fname
                continue
            if not isinstance(spec, FieldSpec):
                raise PktlabError(
                    f"field {fname} is annotated {spec!r}; use pktlab.bits(n), uint(n), text(n), raw(n), "
                    "addr4(), addr6(), mac() or varbytes(length)"
                )
            if spec.byte_aligned and bit % 8:
                raise PktlabError(f"{fname} must start on a byte but starts at bit {bit}: pad the fields before it")
            body[fname] = Field(bit, spec.bits, spec.kind)
            bit += spec.bits
        if bit % 8:
            raise PktlabError(f"the fields of {cls.__name__} add up to {bit} bits, not whole bytes; pad them")
        if not bit and not var_seen:
            raise PktlabError(
                f"{cls.__name__} declares no fields; declare each as an annotation in the class (seq: pktlab.uint(16))"
            )
        for k, v in vars(cls).items():
            if k not in body and k not in ("__dict__", "__weakref__", "__annotations__", "__qualname__"):
                body.setdefault(k, v)
        matches = body.pop("matches", None)
        body["header_len_min"] = bit // 8
        body["binding"] = Binding(attr, over, port, field, value, matches)
        view = type(cls.__name__, (UserView,), body)
        registry.add(view)
        return view

    return make
