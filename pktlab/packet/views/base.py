"""The machinery of protocol views: fields declared as (offset, bits, kind).

A view is a window on a packet's buffer starting at ``offset``.  Its class
declares fields (:class:`Field`, compiled in ``pktlab.packet._core``); reading one decodes
just those bytes, writing one patches them in place and marks the packet
dirty so that lengths and checksums are fixed once, when the verdict is given.
"""

from __future__ import annotations

from typing import Any

from ...errors import PacketFormatError
from .._core import Field, ViewCore

__all__ = ["Field", "View"]


class View(ViewCore):
    """A protocol layer seen at ``offset`` in a packet (``View(pkt, offset)``)."""

    __slots__ = ()
    header_len_min = 0
    layer = ""

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
        """Where the layer's payload starts; raises if its header claims more bytes than the packet has."""
        end = self._off + self.header_len
        n = self._pkt._size()
        if end > n:
            self._pkt._need(end, f"{type(self).__name__.lower()}'s header")
            raise PacketFormatError(
                f"the {type(self).__name__} header at offset {self._off} claims {end - self._off} bytes but the "
                f"packet ends after {n - self._off}; it is truncated or its length field is wrong"
            )
        return end

    # ``payload`` (the bytes after this layer's header; settable) is ViewCore's, in C: a hot path of handlers

    def replace(self, old: bytes | str, new: bytes | str, count: int = -1) -> int:
        """Replace ``old`` by ``new`` in this layer's payload (``count`` times at most); how many were replaced.

        ``pkt.tcp.replace(b"cat", b"kitten")`` is one line for "this word in the stream"; on TCP the
        session keeps the connection consistent when the length changes (``pktlab.pipeline.seqadj``).
        It sees one segment: a pattern cut in two by a segment boundary is not found.
        """
        a = old.encode() if isinstance(old, str) else bytes(old)
        b = new.encode() if isinstance(new, str) else bytes(new)
        if not a:
            raise ValueError("replace() needs something to look for; old is empty")
        data = self.payload
        n = data.count(a) if count < 0 else min(count, data.count(a))
        if n:
            self.payload = data.replace(a, b, n)
        return n

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
