"""Held packets: the kernel keeps them until the notebook decides.

``held = s.hold(lambda p: p.tcp and p.tcp.flags.syn)`` makes the reader keep
every packet the predicate picks instead of running the handler chain on
it; the packet waits in the kernel queue (its verdict is simply not given
yet, as NetfilterQueue allows) and shows up in ``held``.  ``held[0].accept()``
(or ``drop()``, ``repeat()``, with ``mark=``; writes through the views are
fixed up as usual) gives its verdict from the notebook.  While anything is
held the dispatcher gives individual verdicts only (a batch verdict would
also cover the held packets).  ``detach()`` gives every packet still held
the session's default verdict, so nothing stays in the kernel.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from html import escape
from typing import TYPE_CHECKING, Any

from ..errors import SessionError
from ..packet.verdicts import ACCEPT, DROP, REPEAT, Verdict

if TYPE_CHECKING:
    from ..packet.model import Packet


class HeldPacket:
    """One packet waiting for the notebook's verdict."""

    def __init__(self, owner: HeldPackets, nf: Any, pkt: Packet, original: bytes) -> None:
        self._owner = owner
        self._nf = nf
        self.packet = pkt
        self._original = original  # the packet as it arrived (the record keeps that), whatever was written since
        self.since = time.monotonic()
        self.verdict: Verdict | None = None

    @property
    def age(self) -> float:
        """Seconds since the reader got it."""
        return time.monotonic() - self.since

    def give(self, verdict: Verdict | str, *, mark: int | None = None, by: str = "notebook") -> None:
        v = Verdict.parse(verdict)
        if self.verdict is not None:
            raise SessionError(f"this packet already got its verdict ({self.verdict}); each packet gets one")
        if mark is not None:
            self.packet.set_mark(mark)
        self._owner._give(self, v, by)

    def accept(self, *, mark: int | None = None) -> None:
        self.give(ACCEPT, mark=mark)

    def drop(self) -> None:
        self.give(DROP)

    def repeat(self, *, mark: int | None = None) -> None:
        self.give(REPEAT, mark=mark)

    def __getattr__(self, name: str) -> Any:
        """``held[0].tcp``, ``held[0].ip.src``: the packet's views."""
        if name.startswith("_"):
            raise AttributeError(name)
        return getattr(self.packet, name)

    def __repr__(self) -> str:
        state = f"-> {self.verdict}" if self.verdict is not None else f"held {self.age:.1f} s"
        return f"<held {self.packet.summary()} {state}>"


class HeldPackets:
    """The packets a session holds now, oldest first; indexable, iterable, ``release()``."""

    def __init__(self, session: Any, give: Callable[[Any, Packet, Verdict, str, bytes], None]) -> None:
        """``give(nf, packet, verdict, by, original)`` gives a held packet its verdict (the dispatcher's)."""
        self._session = session
        self._give_fn = give
        self._lock = threading.Lock()
        self._items: list[HeldPacket] = []
        self.released = 0
        self.on_add: Callable[[HeldPacket], object] | None = None  # told of each packet as it is held

    def add(self, nf: Any, pkt: Packet, original: bytes) -> None:
        """Hold a packet (called by the reader thread, through the dispatcher's hold predicate); ``original``:
        its bytes as it arrived."""
        h = HeldPacket(self, nf, pkt, original)
        with self._lock:  # on_add runs under the lock: nobody can give h its verdict before it is told
            self._items.append(h)
            if self.on_add is not None:
                try:
                    self.on_add(h)
                except BaseException:
                    self._items.remove(h)  # not held after all: the dispatcher passes it on
                    raise

    def _give(self, h: HeldPacket, verdict: Verdict, by: str) -> None:
        with self._lock:
            if h not in self._items:
                raise SessionError("this packet is no longer held (the session was detached?)")
            self._give_fn(h._nf, h.packet, verdict, by, h._original)
            h.verdict = verdict
            self._items.remove(h)
            self.released += 1

    def release(self, verdict: Verdict | str | None = None) -> int:
        """Give every held packet ``verdict`` (default: the session's default verdict); return how many."""
        v = Verdict.parse(verdict) if verdict is not None else self._session.default
        n = 0
        for h in list(self):
            if h.verdict is None:
                h.give(v, by="release")
                n += 1
        return n

    def __getitem__(self, i: int) -> HeldPacket:
        with self._lock:
            return self._items[i]

    def __len__(self) -> int:
        with self._lock:
            return len(self._items)

    def __iter__(self):  # type: ignore[no-untyped-def]
        with self._lock:
            return iter(list(self._items))

    def __repr__(self) -> str:
        return f"<{len(self)} held packet(s) in {self._session.name}; {self.released} released>"

    def _repr_html_(self) -> str:
        rows = "".join(
            f"<tr><td>{i}</td><td>{h.age:.1f} s</td><td>{escape(h.packet.summary())}</td></tr>"
            for i, h in enumerate(self)
        )
        return (
            f"<div>{len(self)} held packet(s) in {escape(self._session.name)} "
            f"(<code>held[i].accept()</code> / <code>.drop()</code>)</div>"
            f"<table><tr><th>#</th><th>age</th><th>packet</th></tr>{rows}</table>"
        )
