"""The Internet checksum (RFC 1071) and the pseudo-headers it covers."""

from __future__ import annotations

import sys

_LITTLE = sys.byteorder == "little"


def inet_sum(data: bytes | bytearray | memoryview, start: int = 0) -> int:
    """One's-complement sum of ``data`` as 16-bit words, folded, in native order.

    The one's-complement sum does not depend on byte order, so the words are
    summed as the machine reads them and the result swapped once.
    """
    mv = memoryview(data)
    if len(mv) % 2:
        mv = memoryview(bytes(mv) + b"\0")
    s = sum(mv.cast("H")) + start
    while s >> 16:
        s = (s & 0xFFFF) + (s >> 16)
    return s


def finish(s: int) -> int:
    """Turn a folded native-order sum into the checksum field value (network order int)."""
    c = ~s & 0xFFFF
    if _LITTLE:
        c = ((c & 0xFF) << 8) | (c >> 8)
    return c


def checksum(data: bytes | bytearray | memoryview) -> int:
    """The Internet checksum of ``data`` as a network-order integer."""
    return finish(inet_sum(data))
