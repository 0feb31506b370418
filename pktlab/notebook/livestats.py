"""Live statistics of a session, sampled on a timer away from the reader.

The reader only appends to the record's ring; a :class:`Monitor` thread reads
the ring's counters and newest entries every ``period`` seconds, turns them
into rates and histograms (:class:`LiveStats`, fixed-size windows, so memory
stays bounded however long it runs) and hands each :class:`Sample` to its
subscribers (the dashboard, the controls).  The reader never waits for them.
"""

from __future__ import annotations

import math
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ..pipeline.record import Entry

VERDICT_NAMES = ("accept", "drop", "repeat", "sent")  # "sent": packets pktlab sent (pkt.reply)
HIST_EDGES_US = tuple(10 ** (k / 4) for k in range(-4, 21))  # 0.1 µs .. 100 ms, 4 bins per decade
TAIL = 2000  # newest entries read per sample (sizes and handler times beyond it are extrapolated)


@dataclass
class Sample:
    """What one tick saw."""

    t: float  # wall time of the sample
    packets: int  # packets recorded since the start
    pps: float
    mbps: float
    verdicts_ps: dict[str, float]  # per verdict, packets per second over the last period
    errors_ps: float
    queue_depth: int | None  # packets waiting in the kernel now (None: no kernel queue, e.g. a replay)
    kernel_drops: int | None  # packets the kernel dropped or could not deliver, since the start
    flows_decided: int = 0  # connections given a flow verdict (decided in the kernel, live)
    kernel_decided: int = 0  # packets kernel handlers decided in the kernel (live), since they were installed
    hist_counts: list[int] = field(default_factory=list)  # handler time histogram of the newest entries
    latest: list[Entry] = field(default_factory=list)  # newest record entries, newest first


class LiveStats:
    """Turns successive looks at a record (and kernel counters) into rates over fixed windows."""

    def __init__(self, window: float = 300.0, period: float = 0.5, latest: int = 20) -> None:
        self.period = period
        self.latest = latest
        n = max(2, int(window / period))
        self.history: deque[Sample] = deque(maxlen=n)
        self._last: tuple[float, int, dict[str, int], int] | None = None

    def sample(self, record: Any, kernel: Any | None, now: float | None = None, flows_decided: int = 0,
               kernel_decided: int = 0) -> Sample:  # fmt: skip
        now = time.time() if now is None else now
        ring = record.ring
        n = ring.n
        counts = {"accept": ring.accepted, "drop": ring.dropped, "repeat": ring.repeated, "sent": ring.sent}
        errors = ring.errors
        if self._last is not None and n < self._last[1]:
            self._last = (self._last[0], 0, dict.fromkeys(counts, 0), 0)  # the record started afresh (a replay's run)
        new = 0 if self._last is None else n - self._last[1]
        dt = 0.0 if self._last is None else max(1e-6, now - self._last[0])
        tail = record.tail(min(max(new, self.latest), TAIL)) if n else []
        # the rates and the histogram cover the packets that came since the last look, none when idle
        newest = tail[-new:] if 0 < new <= len(tail) else (tail if new > 0 else [])
        size = sum(e.size for e in newest)
        if new > len(newest) and newest:
            size = size * new / len(newest)  # more packets than we looked at: scale the bytes
        hist = [0] * (len(HIST_EDGES_US) + 1)
        for e in newest:
            if e.handler_us > 0:  # handlers ran on it (the no-handler path records no time)
                hist[_bin(e.handler_us)] += 1
        if self._last is None:
            pps = mbps = errs = 0.0
            vps = {k: 0.0 for k in VERDICT_NAMES}
        else:
            pps = new / dt
            mbps = size * 8 / dt / 1e6
            vps = {k: (counts[k] - self._last[2][k]) / dt for k in VERDICT_NAMES}
            errs = (errors - self._last[3]) / dt
        depth = drops = None
        if kernel is not None:
            depth = kernel.queue_total
            drops = kernel.queue_dropped + kernel.user_dropped
        latest = list(reversed(tail[-self.latest :]))
        s = Sample(now, n, pps, mbps, vps, errs, depth, drops, flows_decided, kernel_decided, hist, latest)
        self._last = (now, n, counts, errors)
        self.history.append(s)
        return s


def _bin(us: float) -> int:
    if us <= HIST_EDGES_US[0]:
        return 0
    k = int(math.floor((math.log10(us) + 1) * 4)) + 1
    return min(max(k, 0), len(HIST_EDGES_US))


class Monitor:
    """A timer thread sampling one session for its subscribers; stops with the session or when closed."""

    def __init__(self, session: Any, period: float = 0.5, window: float = 300.0) -> None:
        self.session = session
        self.stats = LiveStats(window, period)
        self.period = period
        self._subs: list[Callable[[Sample], None]] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.ticks = 0
        self.last_error: str | None = None
        self.failures = 0
        self._on_error: list[Callable[[str], None]] = []

    def subscribe(self, fn: Callable[[Sample], None], on_error: Callable[[str], None] | None = None) -> None:
        """Call ``fn`` with every sample; ``on_error`` with the reason when a sample or a display fails."""
        with self._lock:
            self._subs.append(fn)
            if on_error is not None:
                self._on_error.append(on_error)
        if self._thread is None or not self._thread.is_alive():
            self._stop.clear()
            self._thread = threading.Thread(target=self._run, name=f"pktlab-monitor-{self.session.name}", daemon=True)
            self._thread.start()

    def unsubscribe(self, fn: Callable[[Sample], None]) -> None:
        with self._lock:
            if fn in self._subs:
                self._subs.remove(fn)
            if not self._subs:
                self._stop.set()

    def _alive(self) -> bool:
        """A live session's monitor ends with the session; a replay's shows one run after another."""
        return bool(getattr(self.session, "is_replay", False) or getattr(self.session, "attached", True))

    def _run(self) -> None:
        while not self._stop.wait(self.period):
            if not self._alive():
                break
            self._publish()
        self._stop.set()
        self._publish()  # one last look: the counters after the last packet, a detached session shown as such

    def _publish(self) -> None:
        try:
            kc = self.session.kernel_counters() if hasattr(self.session, "kernel_counters") else None
            s = self.stats.sample(self.session.record, kc, flows_decided=getattr(self.session, "flows_decided", 0),
                                  kernel_decided=getattr(self.session, "kernel_decided", 0))  # fmt: skip
            self.ticks += 1
            with self._lock:
                subs = list(self._subs)
            for fn in subs:
                fn(s)
        except Exception as exc:  # a display that failed must not stop the others, nor fail unseen
            self.last_error = f"{type(exc).__name__}: {exc}"
            self.failures += 1
            with self._lock:
                tell = list(self._on_error)
            for fn in tell:
                try:
                    fn(self.last_error)
                except Exception:
                    pass

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(2)

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()
