"""The ordered, named chain of handlers a session runs on every packet.

The chain a packet runs through is an immutable tuple read once per packet;
adding, replacing or removing a handler builds a new tuple and swaps it in
with one assignment, so a packet sees either the old chain or the new one,
never half of each.  Replacing a handler keeps its position.

Kernel handlers (compiled to nftables rules) come first: on a live queue they run before the queue, so in front
of every Python handler.  While ``in_kernel`` is set (a live queue) the reader's tuple leaves them out, and every
change to them is first handed to ``on_kernel_change`` (which installs them, or raises and the change is not made).
"""

from __future__ import annotations

import inspect
import threading
import time
import traceback
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from ..errors import HandlerError, PktlabError, brief
from ..packet.verdicts import Verdict
from .missing_layer import missing_layer

HandlerFn = Callable[[Any], Any]


@dataclass(eq=False, slots=True)
class Handler:
    """A named handler: ``fn(pkt)`` returns a verdict or None (pass on)."""

    name: str
    fn: HandlerFn
    enabled: bool = True
    errors: int = 0
    stuck_since: float | None = None  # set while a call is past the session's deadline
    rescued: int = 0  # packets the watchdog verdicted because this handler did not return in time
    source: str | None = field(default=None, repr=False)
    kernel: Any = field(default=None, repr=False)  # its nftables rules (a kernel handler), else None


class HandlerFailure:
    """A handler exception, kept with the packet it failed on.

    ``traceback`` is the text of its last frames.  The first failures of each handler are
    written out at once (their source lines as they were); later ones keep only the frames'
    places, and the packet's first bytes, and make their text when first read: a handler that
    raises on every packet then costs about what the raise itself costs, not a formatted
    traceback and a formatted packet each.
    """

    __slots__ = ("time", "handler", "error", "_packet", "_frames")

    def __init__(self, time: float, handler: str, packet: object, error: str,
                 frames: str | list[tuple[str, int, str, None]]) -> None:  # fmt: skip
        self.time = time
        self.handler = handler
        self.error = error
        self._packet = packet  # its text, or what writes it out (Packet.repr_later)
        self._frames = frames  # the traceback's text, or its frames' places

    @property
    def packet(self) -> str:
        """The packet it failed on, as ``repr(pkt)`` showed it."""
        if type(self._packet) is not str:
            self._packet = str(self._packet)
        return self._packet

    @property
    def written_out(self) -> bool:
        """Whether the traceback's text was made when the handler failed (else it is made when first read)."""
        return isinstance(self._frames, str)

    @property
    def traceback(self) -> str:
        if isinstance(self._frames, str):
            return self._frames
        return "".join([*traceback.StackSummary.from_list(self._frames).format(), self.error]).rstrip()

    def __str__(self) -> str:
        return f"{self.handler} raised {self.error} on {self.packet}"

    def __repr__(self) -> str:
        return f"HandlerFailure(time={self.time!r}, handler={self.handler!r}, packet={self.packet!r}, " \
               f"error={self.error!r})"  # fmt: skip


def check_function(fn: object, what: str, error: type[PktlabError] = HandlerError) -> None:
    """Refuse, with the reason, what cannot decide a packet when called with it: not a function, an async
    function or a generator (whose call only makes an object the chain would take for its answer), or a
    function that does not take one argument.  ``what`` names it in the message ("handler 'x'")."""
    name = getattr(fn, "__name__", "fn")
    if not callable(fn):
        raise error(f"{what} is a {type(fn).__name__}, not a function; pass a function of one argument (pkt)")
    if inspect.iscoroutinefunction(fn) or inspect.isasyncgenfunction(fn):
        raise error(
            f"{what} is an async function, whose call only makes a coroutine; the kernel holds each packet until it "
            f"is decided, so write def {name}(pkt), not async def"
        )
    if inspect.isgeneratorfunction(fn):
        raise error(
            f"{what} is a generator (its body has yield), whose call only makes a generator; return the answer "
            "(return pkt.drop()) instead of yielding it"
        )
    try:
        sig = inspect.signature(fn)
    except (TypeError, ValueError):
        return
    try:
        sig.bind(object())
    except TypeError:
        raise error(f"{what} must take exactly one argument (the packet); its signature is {name}{sig}") from None


TRACEBACK_FRAMES = 6  # the frames of a failure's traceback that are kept (the handler's own, near the end)
WRITTEN_OUT = 5  # the first failures of each handler whose tracebacks are written out at once


def _frame_places(exc: BaseException, keep: int) -> list[tuple[str, int, str, None]]:
    """The file, line and function of the last ``keep`` frames of a traceback; their lines are read later."""
    places = []
    tb = exc.__traceback__
    while tb is not None:
        code = tb.tb_frame.f_code
        places.append((code.co_filename, tb.tb_lineno, code.co_name, None))
        tb = tb.tb_next
    return places[-keep:]


def trim_traceback(exc: BaseException, keep: int = TRACEBACK_FRAMES) -> str:
    """The last ``keep`` frames of an exception's traceback, as text."""
    frames = list(traceback.walk_tb(exc.__traceback__))[-keep:]
    lines = traceback.StackSummary.extract(iter(frames)).format() + traceback.format_exception_only(type(exc), exc)
    return "".join(lines).rstrip()


class HandlerChain:
    """Named handlers in order; ``active`` is the tuple the reader runs."""

    def __init__(self, max_failures: int = 1000) -> None:
        self._handlers: list[Handler] = []
        self._lock = threading.Lock()
        self.on_replace: Callable[[str], object] | None = None  # with a handler's name: replaced or removed
        self.active: tuple[Handler, ...] = ()
        self.on_publish: Callable[[], object] | None = None  # told each time ``active`` is made again
        self.may_resize = False  # an active handler may change a packet's length (a Python one)
        self.failures: deque[HandlerFailure] = deque(maxlen=max_failures)
        self.left_out = 0  # failures no longer kept in ``failures`` (it keeps the newest max_failures)
        # told of each handler's first failure (the session says it in the cell's output)
        self.on_first_failure: Callable[[Handler, HandlerFailure], None] | None = None
        self.in_kernel = False  # the kernel handlers run in the kernel (a live queue), not in the reader
        self.on_kernel_change: Callable[[list[Any]], None] | None = None  # installs them; raises: nothing changes
        self._kernel_now: list[Any] = []  # what was last installed

    def _publish(self) -> None:
        self.active = tuple(h for h in self._handlers if h.enabled and h.stuck_since is None
                            and not (self.in_kernel and h.kernel is not None))  # fmt: skip
        self.may_resize = any(h.kernel is None for h in self.active)  # a kernel handler changes no length
        if self.on_publish is not None:
            self.on_publish()

    def run_in_kernel(self, on: bool) -> None:
        """A live queue runs the kernel handlers in the kernel (``on``); a capture runs them here."""
        with self._lock:
            self.in_kernel = on
            self._kernel_now = []
            self._commit(list(self._handlers))

    def add(
        self,
        fn: HandlerFn,
        name: str | None = None,
        *,
        before: str | None = None,
        after: str | None = None,
        source: str | None = None,
        kernel: Any = None,
    ) -> Handler:
        """Add ``fn`` under ``name``; an existing handler of that name is replaced in place.

        ``kernel``: its compiled rules (it is a kernel handler: it goes among the kernel handlers, in front).
        """
        name = name or getattr(fn, "__name__", None) or f"handler{len(self._handlers) + 1}"
        if before is not None and after is not None:
            raise HandlerError(
                f"handler {name!r} was given both before={before!r} and after={after!r}; give one of them"
            )
        check_function(fn, f"handler {name!r}")
        with self._lock:
            handlers = list(self._handlers)
            old = next((i for i, h in enumerate(handlers) if h.name == name), None)
            if old is not None and (handlers[old].kernel is None) == (kernel is None):
                replaced = handlers[old]
                new = Handler(name, fn, replaced.enabled, source=source, kernel=kernel)
                handlers[old] = new
            else:
                enabled = handlers[old].enabled if old is not None else True
                if old is not None:
                    del handlers[old]
                new = Handler(name, fn, enabled, source=source, kernel=kernel)
                handlers.insert(self._place(handlers, new, before, after), new)
            self._commit(handlers)
        if old is not None and self.on_replace is not None:
            self.on_replace(name)  # e.g. the flow verdicts it gave are taken back: the new code decides again
        return new

    def _place(self, handlers: list[Handler], new: Handler, before: str | None, after: str | None) -> int:
        """Where ``new`` goes: kernel handlers in front of every Python handler."""
        kernel_end = sum(1 for h in handlers if h.kernel is not None)
        anchor = before or after
        if anchor is None:
            return kernel_end if new.kernel is not None else len(handlers)
        idx = next((i for i, h in enumerate(handlers) if h.name == anchor), None)
        if idx is None:
            have = ", ".join(h.name for h in handlers) or "none"
            raise HandlerError(f"no handler named {anchor!r}; the chain has {have}")
        at = idx + (1 if after else 0)
        if (new.kernel is not None and at > kernel_end) or (new.kernel is None and at < kernel_end):
            raise HandlerError(
                f"handler {new.name!r} cannot go {'before' if before else 'after'} {anchor!r}: kernel handlers run "
                "before the queue, so in front of every Python handler"
            )
        return at

    def _commit(self, handlers: list[Handler]) -> None:
        """Make ``handlers`` the chain (the lock is held); kernel handlers are installed first, or nothing changes."""
        kernel = [h.kernel for h in handlers if h.kernel is not None and h.enabled]
        if self.in_kernel and self.on_kernel_change is not None and kernel != self._kernel_now:
            self.on_kernel_change(kernel)
        self._kernel_now = kernel
        self._handlers = handlers
        self._publish()

    def kernel_handlers(self) -> list[Any]:
        """The compiled rules of the kernel handlers that are on, in chain order."""
        return [h.kernel for h in self._handlers if h.kernel is not None and h.enabled]

    def _index(self, name: str) -> int:
        for i, h in enumerate(self._handlers):
            if h.name == name:
                return i
        raise HandlerError(f"no handler named {name!r}; the chain has {', '.join(self.names) or 'none'}")

    def remove(self, name: str) -> None:
        with self._lock:
            handlers = list(self._handlers)
            del handlers[self._index(name)]
            self._commit(handlers)
        if self.on_replace is not None:
            self.on_replace(name)

    def clear(self) -> None:
        with self._lock:
            self._commit([])

    def enable(self, name: str, on: bool = True) -> None:
        with self._lock:
            h = self._handlers[self._index(name)]
            was = h.enabled
            h.enabled = on
            try:
                self._commit(list(self._handlers))
            except BaseException:
                h.enabled = was
                raise

    def __getitem__(self, name: str) -> Handler:
        return self._handlers[self._index(name)]

    def __iter__(self):  # type: ignore[no-untyped-def]
        return iter(list(self._handlers))

    def __len__(self) -> int:
        return len(self._handlers)

    @property
    def names(self) -> list[str]:
        return [h.name for h in self._handlers]

    def mark_stuck(self, handler: Handler) -> None:
        """Skip ``handler`` until its stuck call returns (the watchdog calls this)."""
        with self._lock:
            handler.rescued += 1
            if handler.stuck_since is None:
                handler.stuck_since = time.time()
            self._publish()

    def unstick(self, handler: Handler) -> None:
        """The stuck call returned: the handler rejoins the chain where it was."""
        with self._lock:
            handler.stuck_since = None
            self._publish()

    @property
    def stuck(self) -> list[Handler]:
        return [h for h in self._handlers if h.stuck_since is not None]

    # -- called by the dispatcher when a handler misbehaves (the slow exits of the hot path) --
    def failed(self, handler: Handler, pkt: Any, exc: BaseException) -> HandlerFailure:
        """A handler raised: keep the exception with the packet; return the failure (the record's error, as text
        when read)."""
        handler.errors += 1
        failure = self.record_failure(handler, pkt, exc)
        if handler.errors == 1 and self.on_first_failure is not None:
            try:
                self.on_first_failure(handler, failure)
            except Exception:  # a note that cannot be shown must not cost the packet its verdict
                pass
        return failure

    def bad_return(self, handler: Handler, pkt: Any, value: object) -> tuple[Verdict | None, HandlerFailure | None]:
        """A handler returned a non-Verdict: a verdict name is fine, anything else is an error."""
        try:
            return Verdict.parse(value), None
        except ValueError:
            exc = HandlerError(
                f"handler {handler.name!r} returned {brief(value)}; return pkt.accept(), pkt.drop(), pkt.repeat() "
                "or None"
            )
            return None, self.failed(handler, pkt, exc)

    def record_failure(self, handler: Handler, pkt: Any, exc: BaseException) -> HandlerFailure:
        """Keep an exception a handler raised, with its last frames (written out for its first few)."""
        try:
            later = getattr(pkt, "repr_later", None)
            summary: object = later() if later is not None else repr(pkt)
        except Exception as e:  # a broken packet must not hide the handler's error
            summary = f"<packet: {e}>"
        try:
            error = f"{type(exc).__name__}: {exc}"
        except Exception as e:  # an exception whose str() raises
            error = f"{type(exc).__name__} (its message raised {type(e).__name__})"
        hint = missing_layer(exc, pkt)  # pkt.tcp.dport on a UDP packet: say that pkt.tcp was the None
        if hint is not None:
            error = f"{error} — {hint}"
        if handler.errors <= WRITTEN_OUT:
            frames: str | list[tuple[str, int, str, None]] = trim_traceback(exc)
            if hint is not None:
                frames = f"{frames} — {hint}"
        else:
            frames = _frame_places(exc, TRACEBACK_FRAMES)
        if len(self.failures) == self.failures.maxlen:
            self.left_out += 1
        failure = HandlerFailure(time.time(), handler.name, summary, error, frames)
        self.failures.append(failure)
        return failure
