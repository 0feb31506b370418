"""What the session saw: a bounded ring of per-packet entries and counters.

The reader appends one tuple per packet and nothing else; everything a
person looks at (DataFrame, pcap, rates) is computed from the ring when
asked, away from the hot path.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from ._hot import Ring
from .packet import HOOK_NAMES, summarize
from .verdicts import ACCEPT, DROP, REPEAT, Verdict

# entry layout (kept as a plain tuple for speed)
T, ID, HOOK, SIZE, HEAD, VERDICT, BY, NS, ERROR, MODIFIED = range(10)
_BY_CODE = {v.code: v for v in (ACCEPT, DROP, REPEAT)}
COLUMNS = [
    "time",
    "id",
    "hook",
    "size",
    "proto",
    "src",
    "dst",
    "sport",
    "dport",
    "verdict",
    "handler",
    "handler_us",
    "error",
    "modified",
]


@dataclass(frozen=True)
class Entry:
    """One packet's record entry, readable."""

    time: float
    id: int
    hook: str
    size: int
    head: bytes
    verdict: str
    handler: str | None
    handler_us: float
    error: str | None
    modified: bool


class Record:
    """A ring of the last ``capacity`` packets plus running counters.

    The ring itself (:class:`pktlab._hot.Ring`) is filled by the compiled
    dispatcher; this class reads it.
    """

    def __init__(self, capacity: int = 100_000, snaplen: int = 256) -> None:
        if capacity < 1:
            raise ValueError("record capacity must be at least 1")
        self.capacity = capacity
        self.snaplen = snaplen
        self.ring = Ring(capacity, snaplen)

    def clear(self) -> None:
        """Forget every entry and counter."""
        self.ring.clear()

    def append(self, entry: tuple[Any, ...]) -> None:
        """Add one entry (the layout is ``COLUMNS`` less the derived fields; see ``Entry``)."""
        self.ring.append(entry)

    @property
    def n(self) -> int:
        """Packets recorded since the start (also those the ring no longer holds)."""
        return self.ring.n

    @property
    def counts(self) -> dict[Verdict, int]:
        r = self.ring
        return {ACCEPT: r.accepted, DROP: r.dropped, REPEAT: r.repeated}

    @property
    def errors(self) -> int:
        return self.ring.errors

    def __len__(self) -> int:
        return min(self.n, self.capacity)

    def raw_entries(self) -> list[tuple[Any, ...]]:
        """Entries still in the ring, oldest first (a copy)."""
        return self.ring.snapshot(_BY_CODE)

    def tail(self, count: int) -> list[tuple[Any, ...]]:
        """The newest ``count`` entries still in the ring, oldest first."""
        return self.ring.snapshot(_BY_CODE, count)

    def __iter__(self) -> Iterator[Entry]:
        for e in self.raw_entries():
            yield self._entry(e)

    @staticmethod
    def _entry(e: tuple[Any, ...]) -> Entry:
        h = e[HOOK]
        return Entry(
            e[T],
            e[ID],
            HOOK_NAMES[h] if 0 <= h < 5 else str(h),
            e[SIZE],
            e[HEAD],
            str(e[VERDICT]),
            e[BY],
            e[NS] / 1000.0,
            e[ERROR],
            e[MODIFIED],
        )

    def rows(self) -> list[dict[str, Any]]:
        out = []
        for e in self:
            s = summarize(e.head)
            out.append(
                {
                    "time": e.time,
                    "id": e.id,
                    "hook": e.hook,
                    "size": e.size,
                    **s,
                    "verdict": e.verdict,
                    "handler": e.handler,
                    "handler_us": e.handler_us,
                    "error": e.error,
                    "modified": e.modified,
                }
            )
        return out

    def df(self) -> Any:
        """The ring as a pandas DataFrame, one row per packet."""
        import pandas as pd

        df = pd.DataFrame(self.rows(), columns=COLUMNS)
        df["time"] = pd.to_datetime(df["time"], unit="s")
        return df

    def to_pcap(self, path: str) -> int:
        """Write the packets in the ring (up to ``snaplen`` bytes each) to a pcap, in the order they arrived.

        A held packet's entry is made when its verdict is given, later than the
        packets after it; the capture has it where it came.  Returns the count.
        """
        from scapy.utils import RawPcapWriter

        entries = sorted(self.raw_entries(), key=lambda e: e[T])
        w = RawPcapWriter(str(path), linktype=101, snaplen=max(self.snaplen, 65535), sync=False)
        try:
            w._write_header(None)  # an empty record still yields a valid file
            for e in entries:
                sec = int(e[T])
                w.write_packet(e[HEAD], sec=sec, usec=int((e[T] - sec) * 1e6), wirelen=e[SIZE])
        finally:
            w.close()
        return len(entries)

    def counters(self) -> dict[str, int]:
        return {
            "packets": self.n,
            **{str(v): c for v, c in self.counts.items()},
            "errors": self.errors,
        }
