"""Turning non-integer field bytes into values and back (addresses, MACs, raw bytes)."""

from __future__ import annotations

import ipaddress
from typing import Any


def decode(kind: Any, raw: bytes) -> Any:
    if kind == "ipv4":
        return str(ipaddress.IPv4Address(raw))
    if kind == "ipv6":
        return str(ipaddress.IPv6Address(raw))
    if kind == "mac":
        return ":".join(f"{b:02x}" for b in raw)
    return raw


def encode(kind: Any, value: Any, nbytes: int, name: str) -> bytes:
    if kind == "ipv4":
        return ipaddress.IPv4Address(value).packed
    if kind == "ipv6":
        return ipaddress.IPv6Address(value).packed
    out = bytes(int(x, 16) for x in str(value).split(":")) if kind == "mac" else bytes(value)
    if len(out) != nbytes:
        raise ValueError(f"{name} takes exactly {nbytes} bytes, got {len(out)}")
    return out
