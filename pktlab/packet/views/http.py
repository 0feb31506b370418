"""HTTP/1.x start line and headers: a text protocol, so offsets are computed from the bytes.

``pkt.http`` is the segment's message head when its TCP payload starts with a
request line (``GET /path HTTP/1.1``) or a status line (``HTTP/1.1 200 OK``);
other segments of the stream have no view.  Rewriting a value replaces its
bytes in place; when the length changes, the IP length and the checksums are
fixed at verdict time and the session's sequence adjustment keeps the rest of
the connection consistent (see :mod:`pktlab.pipeline.seqadj`).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from ...errors import PacketFormatError

METHODS = (b"GET", b"POST", b"PUT", b"DELETE", b"HEAD", b"OPTIONS", b"PATCH", b"CONNECT", b"TRACE")
PORTS = (80, 8000, 8080)
MAX_HEAD = 16384


class HTTP:
    """The start line and headers of an HTTP/1.x message at ``offset`` in a packet."""

    __slots__ = ("_pkt", "_off")

    def __init__(self, pkt: Any, offset: int) -> None:
        self._pkt, self._off = pkt, offset

    # -- parsing ------------------------------------------------------------------
    def _text(self) -> bytes:
        if self._pkt._wire:
            self._pkt._need(min(self._off + MAX_HEAD, len(self._pkt)), "pkt.http")
        return self._pkt._bytes(self._off, self._off + MAX_HEAD)

    def _lines(self) -> list[tuple[int, int]]:
        """(start, end) packet offsets of each head line, CRLF excluded, up to the blank line."""
        data = self._text()
        end = data.find(b"\r\n\r\n")
        head_len = end if end >= 0 else len(data)
        out = []
        at = 0
        while at <= head_len:
            nl = data.find(b"\r\n", at)
            if nl < 0 or nl > head_len:
                nl = head_len
            out.append((self._off + at, self._off + nl))
            if nl >= head_len:
                break
            at = nl + 2
        return out

    def _start_parts(self) -> list[bytes]:
        s, e = self._lines()[0]
        return bytes(self._pkt._buf[s:e]).split(b" ", 2)

    @property
    def is_request(self) -> bool:
        return not self._start_parts()[0].startswith(b"HTTP/")

    @property
    def complete(self) -> bool:
        """True when the whole head (up to the blank line) is in this segment."""
        return b"\r\n\r\n" in self._text()

    def _part(self, index: int) -> str:
        parts = self._start_parts()
        if len(parts) < 3:
            raise PacketFormatError(f"the HTTP start line has {len(parts)} parts, not 3")
        return parts[index].decode("latin-1")

    @property
    def method(self) -> str | None:
        return self._part(0) if self.is_request else None

    @property
    def target(self) -> str | None:
        return self._part(1) if self.is_request else None

    @property
    def version(self) -> str:
        return self._part(2 if self.is_request else 0)

    @property
    def status(self) -> int | None:
        if self.is_request:
            return None
        try:
            return int(self._part(1))
        except ValueError:
            raise PacketFormatError(f"the HTTP status {self._part(1)!r} is not a number") from None

    @property
    def reason(self) -> str | None:
        return None if self.is_request else self._part(2)

    @property
    def headers(self) -> Headers:
        return Headers(self)

    @property
    def body(self) -> bytes:
        """What of the body is in this segment (empty when the head is incomplete)."""
        if self._pkt._wire:
            self._pkt._need(-1, "http.body")
        data = self._pkt._bytes(self._off, self._pkt._size())
        end = data.find(b"\r\n\r\n")
        return data[end + 4 :] if end >= 0 else b""

    # -- rewriting ------------------------------------------------------------------
    def _set_part(self, index: int, value: str) -> None:
        s, e = self._lines()[0]
        parts = bytes(self._pkt._buf[s:e]).split(b" ", 2)
        if len(parts) < 3:
            raise PacketFormatError("the HTTP start line is malformed; nothing was changed")
        new = value.encode("latin-1")
        if not new or b" " in new and index < 2 or b"\r" in new or b"\n" in new:
            raise ValueError(f"{value!r} cannot stand in an HTTP start line")
        parts[index] = new
        self._pkt._replace(s, e, b" ".join(parts))

    @method.setter
    def method(self, value: str) -> None:
        self._require_request()
        self._set_part(0, value)

    @target.setter
    def target(self, value: str) -> None:
        self._require_request()
        self._set_part(1, value)

    @status.setter
    def status(self, value: int) -> None:
        if self.is_request:
            raise ValueError("a request has no status; this message is a request")
        self._set_part(1, str(int(value)))

    def _require_request(self) -> None:
        if not self.is_request:
            raise ValueError("this message is a response; it has no method or target")

    def as_dict(self) -> dict[str, Any]:
        try:
            out: dict[str, Any] = {"request": self.is_request, "version": self.version}
            if self.is_request:
                out.update(method=self.method, target=self.target)
            else:
                out.update(status=self.status, reason=self.reason)
            out["headers"] = dict(self.headers.items())
        except PacketFormatError as exc:
            out = {"error": str(exc)}
        return out

    def __repr__(self) -> str:
        d = self.as_dict()
        first = f"{d.get('method')} {d.get('target')}" if d.get("request") else f"{d.get('status')} {d.get('reason')}"
        return f"<HTTP {first} {len(d.get('headers') or {})} headers>"

    def __bool__(self) -> bool:
        return True


class Headers:
    """The headers of an :class:`HTTP` head: case-insensitive, in order, writable."""

    __slots__ = ("_http",)

    def __init__(self, http: HTTP) -> None:
        self._http = http

    def _entries(self) -> Iterator[tuple[str, str, int, int, int]]:
        """(name, value, line start, value start, line end) for each header line."""
        buf = self._http._pkt._buf
        for s, e in self._http._lines()[1:]:
            if s == e:
                continue
            line = bytes(buf[s:e])
            colon = line.find(b":")
            if colon <= 0:
                raise PacketFormatError(f"the HTTP header line {line[:40]!r} at offset {s} has no name")
            vstart = colon + 1
            while vstart < len(line) and line[vstart] in (0x20, 0x09):
                vstart += 1
            yield line[:colon].decode("latin-1"), line[vstart:].decode("latin-1"), s, s + vstart, e

    def items(self) -> list[tuple[str, str]]:
        return [(n, v) for n, v, *_ in self._entries()]

    def __iter__(self) -> Iterator[str]:
        return (n for n, *_ in self._entries())

    def __len__(self) -> int:
        return sum(1 for _ in self._entries())

    def get(self, name: str, default: str | None = None) -> str | None:
        for n, v, *_ in self._entries():
            if n.lower() == name.lower():
                return v
        return default

    def __getitem__(self, name: str) -> str:
        v = self.get(name)
        if v is None:
            raise KeyError(name)
        return v

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and self.get(name) is not None

    def __setitem__(self, name: str, value: str) -> None:
        raw = str(value).encode("latin-1")
        if b"\r" in raw or b"\n" in raw or not name or any(c in name for c in ":\r\n "):
            raise ValueError(f"{name!r}: {value!r} cannot be an HTTP header")
        if not self._http.complete:
            raise PacketFormatError("the HTTP head continues in a later segment; it cannot be rewritten here")
        for n, _v, _s, vs, e in self._entries():
            if n.lower() == name.lower():
                self._http._pkt._replace(vs, e, raw)
                return
        # not there: a new line just before the blank line that ends the head
        lines = self._http._lines()
        end = lines[-1][1]
        self._http._pkt._replace(end, end, b"\r\n" + name.encode("latin-1") + b": " + raw)

    def __delitem__(self, name: str) -> None:
        if not self._http.complete:
            raise PacketFormatError("the HTTP head continues in a later segment; it cannot be rewritten here")
        for n, _v, s, _vs, e in self._entries():
            if n.lower() == name.lower():
                self._http._pkt._replace(s - 2, e, b"")  # the line and the CRLF before it
                return
        raise KeyError(name)

    def __repr__(self) -> str:
        return f"<Headers {dict(self.items())}>"


def find(pkt: Any) -> HTTP | None:
    """The HTTP head at the start of a TCP payload on an HTTP port, or None."""
    t = pkt.tcp
    if t is None or not (t.sport in PORTS or t.dport in PORTS):
        return None
    off = t.payload_offset
    if pkt._wire:
        pkt._need(min(off + 8, len(pkt)), "pkt.http")
    start = pkt._bytes(off, off + 8)
    if start.startswith(b"HTTP/1.") or any(start.startswith(m + b" ") for m in METHODS):
        return HTTP(pkt, off)
    return None
