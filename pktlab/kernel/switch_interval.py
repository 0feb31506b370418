"""How long a computing thread keeps the GIL from a queue's reader: the interpreter's switch interval.

A packet that a Python handler sees needs the GIL.  While another thread of the process computes (a
notebook cell's loop, a DataFrame being built), the reader asking for the GIL gets it only when the
interpreter's switch interval has passed — 5 ms by default — and it asks again for every read: each packet
then waits 5 ms or more, and the queue passes a few hundred packets a second.  While a queue reader runs,
pktlab sets the interval to :data:`READER_SWITCH_INTERVAL`: a computing thread then gives the GIL up after
at most that long, and only when another thread asks for it (nothing changes while no thread waits).  The
interval the process had is put back when the last reader stops, unless someone set another one meanwhile.
"""

from __future__ import annotations

import math
import sys
import threading

READER_SWITCH_INTERVAL = 0.0005  # seconds: a packet waits at most about this long for a computing cell

_lock = threading.Lock()
_readers = 0
_saved: float | None = None  # the interval the process had before the first reader, when pktlab changed it


def reader_started() -> None:
    """A queue reader runs: the switch interval becomes :data:`READER_SWITCH_INTERVAL` if it was longer."""
    global _readers, _saved
    with _lock:
        _readers += 1
        if _readers == 1:
            current = sys.getswitchinterval()
            _saved = current if current > READER_SWITCH_INTERVAL else None
            if _saved is not None:
                sys.setswitchinterval(READER_SWITCH_INTERVAL)


def reader_stopped() -> None:
    """A queue reader stopped: with none left, the interval the process had comes back (if still pktlab's)."""
    global _readers, _saved
    with _lock:
        if _readers == 0:
            return
        _readers -= 1
        if _readers == 0 and _saved is not None:
            if math.isclose(sys.getswitchinterval(), READER_SWITCH_INTERVAL, rel_tol=1e-3):
                sys.setswitchinterval(_saved)
            _saved = None


def readers_running() -> int:
    """How many queue readers hold the short interval now."""
    return _readers
