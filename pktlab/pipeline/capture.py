"""Where packets come from, offline: a capture file read through the same dispatcher as the queue.

``CaptureSource`` has the queue source's shape (``start``, ``pause``,
``resume``, ``step``, ``stop``, ``replace_reader``), so a :class:`~pktlab.Session`
runs its handler chain, deadline, holding and stepping on a capture exactly as
on a kernel queue.  The file is read by libpcap one packet at a time (pcap and
pcapng; raw IP, Ethernet and Linux cooked link types) in a background thread;
verdicts go to two spools on disk (what was accepted, as rewritten; what was
dropped, as read), so memory stays bounded by the session's record whatever the
capture's size.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import PktlabError
from ._capture import END, LIMIT, LINKS, CaptureFile, Spool, Ticket, Verdicts

LINK_TYPES = "raw IP (101), Ethernet (1) or Linux cooked (113, 276)"


@dataclass(frozen=True)
class CapturedFrame:
    """One packet of a capture: its time, its bytes (from the IP header, or the Ethernet frame) and link."""

    time: float
    data: bytes
    link: str  # "ip" or "ethernet"


def open_capture(path: str | os.PathLike[str], filter: str | None = None, hook: int = 1) -> CaptureFile:  # noqa: A002
    """Open a pcap/pcapng file for reading, or say in one sentence why it cannot be read."""
    p = Path(path)
    if not p.exists():
        raise PktlabError(f"no capture file {str(p)!r}; give a pcap/pcapng path or a dataset name")
    try:
        return CaptureFile(str(p), filter, hook)
    except ValueError as exc:  # libpcap's own reason (bad magic, truncated header)
        raise PktlabError(f"{p.name} is not a pcap or pcapng file libpcap can read ({exc})") from None
    except LookupError as exc:
        raise PktlabError(
            f"{p.name} has link type {exc.args[0]}, which pktlab cannot replay; use {LINK_TYPES} captures "
            "(editcap -T converts)"
        ) from None
    except SyntaxError as exc:
        raise PktlabError(f"filter {filter!r} is not valid for {p.name}: {exc}") from None


def frames(path: str | os.PathLike[str]) -> Iterator[CapturedFrame]:
    """The packets of a capture, read one at a time (from the IP header, or the whole Ethernet frame)."""
    f = open_capture(path)
    link = "ethernet" if f.eth else "ip"
    got: list[Any] = []
    verdicts = Verdicts()
    ticket = Ticket()
    try:
        while f.read(got.append, verdicts, ticket, 1) == LIMIT:
            cp = got.pop()
            yield CapturedFrame(cp.time, cp.data, link)
    finally:
        f.close()


def read_capture(path: str | os.PathLike[str]) -> list[CapturedFrame]:
    """Every packet of a (small) capture in a list; :func:`frames` reads a large one without keeping it."""
    return list(frames(path))


class CapturePackets:
    """The packets of a capture as a sequence, read from the file when asked (never all kept in memory)."""

    def __init__(self, path: str) -> None:
        self.path = path
        self._len: int | None = None

    def __iter__(self) -> Iterator[CapturedFrame]:
        return frames(self.path)

    def __len__(self) -> int:
        if self._len is None:
            self._len = sum(1 for _ in frames(self.path))
        return self._len

    def __getitem__(self, index: int | slice) -> Any:
        if isinstance(index, slice):
            return [f for i, f in enumerate(frames(self.path)) if i in range(*index.indices(len(self)))]
        i = index + len(self) if index < 0 else index
        for n, f in enumerate(frames(self.path)):
            if n == i:
                return f
        raise IndexError(f"packet {index} is past the capture's {len(self)} packets")

    def __repr__(self) -> str:
        return f"<packets of {Path(self.path).name}>"


class CaptureSource:
    """Packets from a capture file, passed to the dispatcher by a background thread.

    ``pace`` (1.0: the capture's own timing), ``limit`` (read at most this many
    packets of the file) and ``stop_if`` (checked after each packet) are set by
    :meth:`configure` before a start.
    """

    fail_open = True  # nothing is ever dropped unseen: a capture waits for its reader
    queue = None

    def __init__(self, path: str, *, filter: str | None = None, hook: int = 1) -> None:  # noqa: A002
        self.path = path
        self.filter = filter
        self.hook = hook
        open_capture(path, filter, hook).close()  # a bad file or filter fails here, not in a thread
        self.pace: float | None = None
        self.limit: int | None = None
        self.stop_if: Callable[[], bool] | None = None
        self.verdicts = Verdicts()
        self.internal_errors = 0
        self.last_internal_error: str | None = None
        self.retired_threads: list[threading.Thread] = []
        self.finished = threading.Event()
        self.on_idle: Callable[[bool], object] | None = None  # as QueueSource.on_idle (True: the capture ended)
        self._file: CaptureFile | None = None
        self._thread: threading.Thread | None = None
        self._ticket = Ticket()
        self._cond = threading.Condition()
        self._paused = False
        self._stop = False
        self._stops_itself = False  # stop() was called on the reading thread (a handler detached its session)
        self._steps = 0
        self._stepped = 0  # packets dispatched by steps (step() waits for its own)
        self._callback: Callable[[Any], None] | None = None

    def configure(self, pace: float | None, limit: int | None, stop_if: Callable[[], bool] | None) -> None:
        self.pace, self.limit, self.stop_if = pace, limit, stop_if

    @property
    def running(self) -> bool:
        return self._thread is not None

    @property
    def paused(self) -> bool:
        return self._paused

    @property
    def read_count(self) -> int:
        """Packets taken from the file in the current (or last) run."""
        return self._file.read_count if self._file is not None else 0

    @property
    def unseen(self) -> int:
        """Packets outside the filter: passed to the output without a handler seeing them."""
        return self._file.unseen if self._file is not None else 0

    @property
    def enobufs(self) -> int:
        return 0

    def counters(self) -> None:
        return None  # no kernel queue

    def start(
        self,
        callback: Callable[[Any], None],
        on_bound: Callable[[int], None] | None = None,
        after_read: Callable[[], None] | None = None,
        timeout: float = 5.0,
    ) -> None:
        """Read the capture from its first packet, in a background thread; every packet goes to ``callback``."""
        t = self._thread
        if self._stops_itself and t is not None and t is not threading.current_thread():
            t.join(timeout)  # detached by its own handler: it is finishing the packet it was on
        if self.running:
            raise PktlabError(f"the capture {Path(self.path).name} is already being read; stop() it first")
        f = open_capture(self.path, self.filter, self.hook)
        f.pace = self.pace or 0.0
        f.max_read = -1 if self.limit is None else self.limit
        f.paused = self._paused
        self._file = f
        self.verdicts = Verdicts()
        self.finished.clear()
        self._stop = False
        self._steps = 0
        self._callback = callback
        self._ticket = Ticket()
        self._thread = threading.Thread(target=self._serve, args=(self._ticket,), name="pktlab-capture", daemon=True)
        self._thread.start()

    def _serve(self, ticket: Ticket) -> None:
        f, callback = self._file, self._callback
        assert f is not None and callback is not None
        try:
            while True:
                with self._cond:
                    while self._paused and self._steps == 0 and not self._stop and not ticket.retired:
                        self._cond.wait()
                    if self._stop or ticket.retired:
                        return
                    stepping = self._paused
                r = f.read(callback, self.verdicts, ticket, 1 if stepping else -1, self.stop_if)
                if self.on_idle is not None:
                    self.on_idle(r == END or f.stop)
                if stepping:
                    with self._cond:
                        self._steps -= 1
                        self._stepped += r == LIMIT
                        self._cond.notify_all()
                if r == END or f.stop:
                    return
        except Exception as exc:  # pktlab's own failure (a file that breaks off); the user's code is guarded
            self.internal_errors += 1
            self.last_internal_error = f"{type(exc).__name__}: {exc}"
        finally:
            if not ticket.retired and self.on_idle is not None:
                try:
                    self.on_idle(True)  # stopped part-way: what the dispatcher kept back gets its verdict too
                except Exception as exc:
                    self.internal_errors += 1
                    self.last_internal_error = f"{type(exc).__name__}: {exc}"
            if not ticket.retired:
                if self._stops_itself and threading.current_thread() is self._thread:  # stop() was called here
                    self._stops_itself = False  # (by a handler)
                    self._let_go(f)
                with self._cond:
                    self.finished.set()
                    self._cond.notify_all()

    def wait(self, timeout: float | None = None) -> bool:
        """Wait until the capture has been read to its end (or the run stopped); True if it was."""
        return self.finished.wait(timeout)

    def pause(self) -> None:
        with self._cond:
            self._paused = True
            if self._file is not None:
                self._file.paused = True

    def resume(self) -> None:
        with self._cond:
            self._paused = False
            if self._file is not None:
                self._file.paused = False
            self._cond.notify_all()

    def step(self, timeout: float = 5.0) -> bool:
        """While paused: pass exactly one more packet through the chain; False at the end of the capture."""
        with self._cond:
            if self.finished.is_set() or not self.running:
                return False
            before = self._stepped
            self._steps += 1
            self._cond.notify_all()
            done = self._cond.wait_for(lambda: self._stepped > before or self.finished.is_set(), timeout)
            if not done or self._stepped == before:
                self._steps = max(0, self._steps - 1)
                return False
            return True

    def replace_reader(self) -> None:
        """Hand the capture to a new thread: the current one is stuck in a handler (called by the watchdog)."""
        old = self._thread
        self._ticket.retired = True
        self._ticket = Ticket()
        if old is not None:
            self.retired_threads.append(old)
        with self._cond:
            self._cond.notify_all()
        t = threading.Thread(target=self._serve, args=(self._ticket,), name="pktlab-capture", daemon=True)
        self._thread = t
        t.start()

    @property
    def stuck_threads(self) -> list[threading.Thread]:
        """Reading threads replaced while stuck in a handler that has not returned yet."""
        self.retired_threads = [t for t in self.retired_threads if t.is_alive()]
        return list(self.retired_threads)

    @property
    def reads_here(self) -> bool:
        """Whether the calling thread is one of this source's reading threads: code in a handler."""
        me = threading.current_thread()
        return me is self._thread or me in self.retired_threads

    def stop(self, drain: float = 2.0, timeout: float = 10.0) -> None:
        """Stop reading (between two packets) and close the file; the spools stay readable."""
        f = self._file
        if self._thread is None:
            return
        with self._cond:
            self._stop = True
            if f is not None:
                f.stop = True
            self._cond.notify_all()
        t = self._thread
        if t is threading.current_thread():  # from a handler (it detached its session): this thread stops after
            self._stops_itself = True  # the packet it is on, and closes the file itself (_serve)
            return
        while t is not None:
            t.join(timeout)
            if t.is_alive():
                raise PktlabError(
                    f"the reader of {Path(self.path).name} did not stop within {timeout} s; a handler may be stuck"
                )
            if t is self._thread:
                break
            t = self._thread  # the watchdog handed the capture to a successor meanwhile
        self._let_go(f)

    def _let_go(self, f: CaptureFile | None) -> None:
        """What a stop does once its reading thread has ended (by stop()'s wait, or by that thread itself)."""
        self._thread = None
        if f is not None and not self.stuck_threads:
            f.close()

    # -- what the verdicts were ---------------------------------------------------------
    @property
    def link(self) -> str:
        return "ethernet" if LINKS.get(self._linktype()) == -1 else "ip"

    def _linktype(self) -> int:
        if self._file is not None:
            return self._file.linktype
        f = open_capture(self.path)
        try:
            return f.linktype
        finally:
            f.close()

    @property
    def accepted(self) -> Spool:
        """What left "the kernel": accepted packets as rewritten, and those outside the filter."""
        return self.verdicts.out

    @property
    def dropped(self) -> Spool:
        """The packets the chain dropped, as read."""
        return self.verdicts.dropped
