"""Turning non-integer field bytes into values and back (addresses, MACs, raw bytes)."""

from __future__ import annotations

import ipaddress
from typing import Any

from .._core import as_bytes


def decode(kind: Any, raw: bytes) -> Any:
    if kind == "le":
        return int.from_bytes(raw, "little")
    if kind == "text":
        return raw.rstrip(b"\0").decode("latin-1")
    if kind == "ipv4":
        return str(ipaddress.IPv4Address(raw))
    if kind == "ipv6":
        return str(ipaddress.IPv6Address(raw))
    if kind == "mac":
        return ":".join(f"{b:02x}" for b in raw)
    return raw


def encode(kind: Any, value: Any, nbytes: int, name: str) -> bytes:
    if kind == "le":
        v = int(value)
        if not 0 <= v < 1 << (8 * nbytes):
            raise ValueError(f"{name} is {8 * nbytes} bits wide; {v} does not fit")
        return v.to_bytes(nbytes, "little")
    if kind == "text":
        b = value.encode("latin-1") if isinstance(value, str) else as_bytes(value, name)
        if len(b) > nbytes:
            raise ValueError(f"{name} holds {nbytes} bytes of text; {value!r} is {len(b)}")
        return b.ljust(nbytes, b"\0")
    if kind == "ipv4":
        return ipaddress.IPv4Address(value).packed
    if kind == "ipv6":
        return ipaddress.IPv6Address(value).packed
    out = bytes(int(x, 16) for x in str(value).split(":")) if kind == "mac" else as_bytes(value, name)
    if len(out) != nbytes:
        raise ValueError(f"{name} takes exactly {nbytes} bytes, got {len(out)}")
    return out
