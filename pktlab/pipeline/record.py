"""What the session saw: a bounded ring of per-packet entries and counters.

The dispatcher writes one slot per packet into a preallocated ring
(:class:`pktlab.pipeline._ring.Ring`) and nothing else; entries become typed
:class:`Entry` tuples only when read, and everything a person looks at
(DataFrame, pcap, rates) is computed from them when asked, away from the hot
path.  Field positions are known here only: the rest of pktlab reads names.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterator
from typing import Any, NamedTuple

from ..packet.model import HOOK_NAMES, summarize
from ..packet.verdicts import ACCEPT, DROP, REPEAT, Verdict
from ._ring import Ring
from .tcp_analysis import COLUMNS as TCP_COLUMNS
from .tcp_analysis import analyse

SENT = 255  # the "verdict" code of a packet pktlab sent itself (pkt.reply, Session.send): it had no verdict
VERDICT_NAMES = {**{v.code: str(v) for v in (ACCEPT, DROP, REPEAT)}, SENT: "sent"}
# ``s.df``'s columns, with what each holds (the docs' reference is made from this)
COLUMNS: dict[str, str] = {
    "time": "when the packet reached the chain (a replay: its capture time)",
    "direction": "in: a packet that reached the session; sent: one pktlab sent (pkt.reply, s.send)",
    "id": "the kernel's packet id (a replay: its number in the capture)",
    "hook": "PREROUTING, INPUT, FORWARD, OUTPUT or POSTROUTING",
    "size": "bytes from the IP header, as the packet arrived",
    "proto": "tcp, udp, icmp, icmpv6 or the protocol number",
    "src": "source address",
    "dst": "destination address",
    "sport": "source port (None: no ports, or a later fragment)",
    "dport": "destination port",
    "verdict": "accept, drop, repeat, or sent",
    "handler": "the handler whose verdict it got (None: the default verdict)",
    "handler_us": "time in the handlers, µs (0: no handler ran)",
    "error": "the handler's error, if it failed",
    "modified": "a handler rewrote it",
    **TCP_COLUMNS,
}


class Entry(NamedTuple):
    """One packet's record entry (made from the compiled ring when read, never on the hot path)."""

    time: float  # when the packet reached the chain (a replay: its capture time), seconds since the epoch
    id: int  # the kernel's packet id (a replay: its number in the capture, from 1)
    hook: str  # PREROUTING, INPUT, FORWARD, OUTPUT or POSTROUTING
    size: int  # bytes from the IP header, as the packet arrived
    head: bytes  # its first ``snaplen`` bytes, as it arrived
    verdict: str  # accept, drop or repeat; "sent" for a packet pktlab sent (pkt.reply, Session.send)
    handler: str | None  # the handler whose verdict it got (None: the default verdict)
    handler_us: float  # time in the handlers (0: no handler ran)
    error: str | None  # the handler's error, if it failed
    modified: bool  # a handler rewrote it
    decided_ns: int = 0  # CLOCK_MONOTONIC (the kernel's clock, ns) when its verdict was decided; 0: not known


MAX_RECORD_BYTES = 1 << 30  # packet heads a record may hold; a larger one is refused, not half-allocated


class Record:
    """A ring of the last ``capacity`` packets plus running counters.

    The ring itself (:class:`pktlab.pipeline._ring.Ring`) is filled by the compiled
    dispatcher; this class reads it.
    """

    def __init__(self, capacity: int = 100_000, snaplen: int = 256) -> None:
        if capacity < 1:
            raise ValueError(f"record_size {capacity} is too small; a record keeps at least 1 packet")
        if not 20 <= snaplen <= 65535:
            raise ValueError(f"snaplen {snaplen} is out of range; keep 20..65535 bytes of each packet (65535: whole)")
        if capacity * snaplen > MAX_RECORD_BYTES:  # the ring is allocated and touched up front
            fit = max(1, MAX_RECORD_BYTES // max(1, snaplen))
            raise ValueError(
                f"a record of {capacity:,} packets x {snaplen:,} bytes would take "
                f"{capacity * snaplen / (1 << 30):.1f} GiB of memory at once; keep record_size x snaplen within "
                f"{MAX_RECORD_BYTES >> 30} GiB (with snaplen={snaplen}: record_size={fit:,} or fewer)"
            )
        self.capacity = capacity
        self.snaplen = snaplen
        self.ring = Ring(capacity, snaplen)
        # the first snaplen bytes of each rewritten packet as it went on, by (id, time): as many as entries
        self._rewrites: OrderedDict[tuple[int, float], bytes] = OrderedDict()

    def clear(self) -> None:
        """Forget every entry and counter."""
        self.ring.clear()
        self._rewrites.clear()

    def note_rewrite(self, pid: int, time: float, data: bytes) -> None:
        """Keep what a rewritten packet went on with (the dispatcher calls this; entries keep it as it arrived).

        As many as the record has entries, ``snaplen`` bytes each: when every packet is rewritten the record
        takes up to twice its ring's memory.
        """
        self._rewrites[(pid, time)] = data[: self.snaplen]
        while len(self._rewrites) > self.capacity:
            self._rewrites.popitem(last=False)

    def rewritten(self, e: Entry) -> bytes | None:
        """The first ``snaplen`` bytes entry ``e``'s packet went on with, if a handler rewrote it (else None)."""
        return self._rewrites.get((e.id, e.time)) if e.modified else None

    def append(self, e: Entry) -> None:
        """Add an entry by hand (what a test or a tool made; the dispatcher fills the ring itself)."""
        code = next(c for c, name in VERDICT_NAMES.items() if name == str(e.verdict))
        self.ring.append(e.time, e.id, HOOK_NAMES.index(e.hook), e.size, bytes(e.head), code, e.handler,
                         int(e.handler_us * 1000), e.error, e.modified)  # fmt: skip

    @property
    def n(self) -> int:
        """Packets recorded since the start (also those the ring no longer holds)."""
        return self.ring.n

    @property
    def counts(self) -> dict[Verdict, int]:
        r = self.ring
        return {ACCEPT: r.accepted, DROP: r.dropped, REPEAT: r.repeated}

    @property
    def sent(self) -> int:
        """Packets pktlab sent itself (``pkt.reply``, ``Session.send``), recorded with verdict "sent"."""
        return self.ring.sent

    @property
    def errors(self) -> int:
        return self.ring.errors

    def __len__(self) -> int:
        return min(self.n, self.capacity)

    def entries(self, last: int = -1) -> list[Entry]:
        """Entries still in the ring, oldest first (a copy); ``last=N``: only the newest N."""
        return self.ring.snapshot(Entry, VERDICT_NAMES, HOOK_NAMES, last)

    def tail(self, count: int) -> list[Entry]:
        """The newest ``count`` entries still in the ring, oldest first."""
        return self.entries(count)

    def __iter__(self) -> Iterator[Entry]:
        return iter(self.entries())

    def rows(self) -> list[dict[str, Any]]:
        """One dict per entry: what the record has, then the TCP-level reading of it (see ``tcp_analysis``)."""
        out = []
        entries = self.entries()
        for e, tcp in zip(entries, analyse(entries), strict=True):
            s = summarize(e.head)
            out.append(
                {
                    "time": e.time,
                    "direction": "sent" if e.verdict == "sent" else "in",
                    "id": e.id,
                    "hook": e.hook,
                    "size": e.size,
                    **s,
                    "verdict": e.verdict,
                    "handler": e.handler,
                    "handler_us": e.handler_us,
                    "error": e.error,
                    "modified": e.modified,
                    **tcp,
                }
            )
        return out

    def df(self) -> Any:
        """The ring as a pandas DataFrame, one row per packet."""
        import pandas as pd

        df = pd.DataFrame(self.rows(), columns=list(COLUMNS))
        df["time"] = pd.to_datetime(df["time"], unit="s")
        for col in ("handler", "error", "side", "flags", "analysis"):  # None, as everywhere else (pandas made NaN)
            df[col] = df[col].astype(object).where(df[col].notna(), None)
        for col in ("flow", "seq", "ack", "len", "win", "seq_raw", "ack_raw"):  # integers, missing where not TCP
            df[col] = df[col].astype("Int64")
        return df

    def counters(self) -> dict[str, int]:
        return {
            "packets": self.n,
            **{str(v): c for v, c in self.counts.items()},
            "sent": self.sent,
            "errors": self.errors,
        }
