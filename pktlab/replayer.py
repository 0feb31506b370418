"""Replay: packets from a capture file through the same handler chain, no root needed.

``pktlab.replay("datasets/lab-dns.pcap")`` (or a dataset name) gives a
:class:`ReplaySession` with the API of a live session (``@s.handler``,
``add_handler``, ``enable``, ``df``, ``errors``, ``status()``...).  ``run()``
passes every packet through the chain exactly as the live dispatcher does:
the first handler that returns a verdict decides, ``None`` passes on, a
handler that raises gets the error verdict, a non-verdict return is an
error, writes are fixed up (lengths, checksums) before the verdict is
recorded.  ``write_pcap()`` writes what would have left the kernel
(accepted packets, rewritten) to a new capture.

A handler that runs longer than ``deadline`` seconds is interrupted (an
exception raised inside it) and its packet gets the error verdict, so a
loop that never ends cannot hang a notebook or a grader.
"""

from __future__ import annotations

import ctypes
import itertools
import os
import threading
import time
from dataclasses import dataclass, field
from html import escape
from pathlib import Path
from typing import Any

from . import bpf as _bpf
from ._hot import too_big
from .chainowner import ChainOwner
from .errors import PacketFormatError, PktlabError, SessionError
from .handlers import Handler, HandlerChain
from .packet import HOOK_NAMES, Packet, fix_packet
from .record import Record
from .verdicts import DROP, Verdict

_SEQ = itertools.count(1)
# capture link types: how many bytes precede the IP header, or "ethernet"
_LINKS: dict[int, int | str] = {101: 0, 12: 0, 14: 0, 228: 0, 229: 0, 1: "ethernet", 113: 16, 276: 20}


class HandlerTimeout(Exception):
    """Raised inside a replayed handler that ran past the session's deadline."""


@dataclass
class ReplayMeta:
    """What a capture knows of a packet besides its bytes (stands in for NetfilterQueue's packet)."""

    id: int
    hook: int
    mark: int = 0
    indev: int = 0
    outdev: int = 0
    hw_protocol: int = 0

    def get_hw(self) -> bytes | None:
        return None


@dataclass
class CapturedPacket:
    time: float
    data: bytes
    link: str  # "ip" or "ethernet"


@dataclass
class ReplayStatus:
    """What a replay did."""

    source: str
    packets: int
    passed_unseen: int  # outside the filter: no handler saw them
    counters: dict[str, int]
    handlers: list[tuple[str, bool, int]]
    seconds: float
    last_errors: list[Any] = field(default_factory=list)

    def lines(self) -> list[str]:
        c = self.counters
        out = [
            f"replay of {self.source}: {self.packets} packets in {self.seconds:.3f} s",
            f"  accept {c['accept']}  drop {c['drop']}  repeat {c['repeat']}  errors {c['errors']}  "
            f"outside the filter {self.passed_unseen}",
        ]
        if self.handlers:
            out.append(
                "  handlers: "
                + ", ".join(f"{n}{'' if on else ' (off)'}{f' [{e} errors]' if e else ''}" for n, on, e in self.handlers)
            )
        out += [f"  error: {f}" for f in self.last_errors]
        return out

    def __str__(self) -> str:
        return "\n".join(self.lines())

    def _repr_html_(self) -> str:
        return "<pre>" + escape(str(self)) + "</pre>"


def read_capture(path: str | os.PathLike[str]) -> list[CapturedPacket]:
    """Every packet of a pcap or pcapng file, positioned at its IP header or Ethernet frame."""
    from scapy.utils import RawPcapReader

    p = Path(path)
    if not p.exists():
        raise PktlabError(f"no capture file {str(p)!r}; give a pcap/pcapng path or a dataset name")
    out = []
    try:
        reader = RawPcapReader(str(p))
    except Exception as exc:  # scapy's own reason (bad magic, truncated header)
        raise PktlabError(f"{p.name} is not a pcap or pcapng file scapy can read ({exc})") from None
    with reader:
        for data, meta in reader:
            linktype = getattr(meta, "linktype", None) or getattr(reader, "linktype", 101)
            link = _LINKS.get(linktype)
            if link is None:
                raise PktlabError(
                    f"{p.name} has link type {linktype}, which pktlab cannot replay; use raw IP (101), "
                    "Ethernet (1) or Linux cooked (113, 276) captures (editcap -T converts)"
                )
            if hasattr(meta, "sec"):
                t = meta.sec + meta.usec / 1e6
            else:  # pcapng
                t = ((meta.tshigh << 32) | meta.tslow) / float(meta.tsresol or 1_000_000)
            if link == "ethernet":
                out.append(CapturedPacket(t, bytes(data), "ethernet"))
            else:
                out.append(CapturedPacket(t, bytes(data[int(link) :]), "ip"))
    return out


class ReplaySession(ChainOwner):
    """A capture file run through a handler chain; see :func:`replay`."""

    def __init__(
        self,
        source: str | os.PathLike[str],
        *,
        default: str | Verdict = "accept",
        on_error: str | Verdict = "accept",
        filter: str | None = None,  # noqa: A002 - tcpdump's word
        hook: str = "INPUT",
        deadline: float | None = 1.0,
        record_size: int = 100_000,
        snaplen: int = 256,
        name: str | None = None,
    ) -> None:
        from . import datasets

        if not isinstance(source, str | os.PathLike):
            raise SessionError(
                f"replay() takes a capture's path or a dataset name ({', '.join(datasets.names())}), "
                f"not {type(source).__name__} {source!r}"
            )
        path = datasets.resolve(source)
        self.source = str(path)
        self.name = name or f"replay-{next(_SEQ)}"
        self.packets = read_capture(path)
        try:
            self._default = Verdict.parse(default)
            self._on_error = Verdict.parse(on_error)
        except ValueError as exc:
            raise SessionError(str(exc)) from None
        if hook.upper() not in HOOK_NAMES:
            raise SessionError(f"unknown hook {hook!r}; use one of {', '.join(HOOK_NAMES)}")
        self.hook = hook.upper()
        if deadline is not None and not 0.001 <= deadline <= 600:
            raise SessionError(f"deadline {deadline!r} s is out of range; use 0.001..600 seconds, or None")
        self.deadline = deadline
        self.filter = filter
        self._programs = {
            link: _bpf.compile(filter, link="raw" if link == "ip" else "ethernet")
            for link in {p.link for p in self.packets}
            if filter
        }
        self.chain = HandlerChain()
        self.record = Record(max(1, min(record_size, len(self.packets))), snaplen)  # the capture's size at most
        self.outputs: list[tuple[float, bytes, str]] = []  # what left "the kernel": time, bytes, link
        self.passed_unseen = 0
        self._seconds = 0.0

    # -- running -------------------------------------------------------------------
    def run(self, *, pace: float | None = None, limit: int | None = None, stop_on_error: bool = False) -> ReplayStatus:
        """Pass the capture's packets through the chain (again: the record and outputs start afresh).

        ``pace=1.0`` replays in real time (the gaps between capture timestamps),
        ``pace=2.0`` twice as fast; ``None`` as fast as possible.  ``stop_on_error``
        ends the run at the first packet a handler failed on (a grader does not
        wait for a looping handler to time out on every packet).
        """
        if limit is not None and (not isinstance(limit, int) or isinstance(limit, bool) or limit < 0):
            raise SessionError(f"limit {limit!r} must be a number of packets, 0 or more (None: all of them)")
        if pace is not None and pace <= 0:
            raise SessionError(f"pace {pace!r} must be > 0 (1.0 is real time), or None for as fast as possible")
        self.record = Record(self.record.capacity, self.record.snaplen)
        self.outputs = []
        self.passed_unseen = 0
        hook = HOOK_NAMES.index(self.hook)
        watch = _Watchdog(self.deadline) if self.deadline is not None else None
        t_start = time.monotonic()
        first = self.packets[0].time if self.packets else 0.0
        try:
            for n, cp in enumerate(self.packets[:limit] if limit is not None else self.packets, start=1):
                if pace is not None:
                    wait = (cp.time - first) / pace - (time.monotonic() - t_start)
                    if wait > 0:
                        time.sleep(wait)
                prog = self._programs.get(cp.link)
                if prog is not None and not prog.matches(cp.data):
                    self.passed_unseen += 1
                    self.outputs.append((cp.time, cp.data, cp.link))
                    continue
                self._one(n, hook, cp, watch)
                if stop_on_error and self.record.errors:
                    break
        finally:
            if watch is not None:
                watch.stop()
        self._seconds = time.monotonic() - t_start
        return self.status()

    def _one(self, n: int, hook: int, cp: CapturedPacket, watch: _Watchdog | None) -> None:
        t0 = time.perf_counter_ns()
        pkt = Packet(ReplayMeta(n, hook), cp.data, cp.time, "ethernet" if cp.link == "ethernet" else "ip")
        verdict, by, err, last = self._decide(pkt, watch)
        modified = bool(pkt._modified) and err is None  # an error verdict applies to the packet as it arrived
        l3 = max(pkt._l3, 0)  # the record keeps packets from their IP header, as a live session does
        if modified and last is not None and len(pkt._buf) - l3 > 65535:
            verdict, by, modified = self._on_error, last.name, False
            err = self.chain.failed(last, pkt, too_big(len(pkt._buf) - l3))
        try:
            if modified and pkt._dirty:
                fix_packet(pkt)
        except PacketFormatError as exc:  # a rewrite that left the packet unreadable
            verdict, err, modified = self._on_error, f"the rewritten packet cannot be fixed up: {exc}", False
        out = bytes(pkt._buf) if modified else cp.data
        self.record.append(
            (cp.time, n, hook, len(cp.data) - l3, cp.data[l3 : l3 + self.record.snaplen], verdict, by,
             time.perf_counter_ns() - t0, err, modified)
        )  # fmt: skip
        if verdict is not DROP:
            self.outputs.append((cp.time, out, cp.link))

    def _decide(self, pkt: Packet, watch: _Watchdog | None) -> tuple[Verdict, str | None, str | None, Handler | None]:
        """The live dispatcher's chain semantics (pktlab/_hot.pyx, Dispatcher._run), in Python.

        Returns the verdict, the deciding handler's name, the error (None if none) and the last handler run.
        """
        h = None
        for h in self.chain.active:
            try:
                if watch is not None:
                    watch.arm(h.name)
                try:
                    v = h.fn(pkt)
                finally:
                    if watch is not None:
                        watch.disarm()
            except BaseException as exc:
                if isinstance(exc, KeyboardInterrupt):
                    raise
                if isinstance(exc, HandlerTimeout):
                    exc = HandlerTimeout(
                        f"handler {h.name!r} did not return within {self.deadline:g} s; "
                        "the packet got the error verdict"
                    )
                return self._on_error, h.name, self.chain.failed(h, pkt, exc), h
            if v is not None:
                if type(v) is not Verdict:
                    v2, err = self.chain.bad_return(h, pkt, v)
                    return (v2 or self._on_error), h.name, err, h
                return v, h.name, None, h
        return self._default, None, None, h

    # -- results ---------------------------------------------------------------------
    def write_pcap(self, path: str | os.PathLike[str], *, dropped: bool = False) -> int:
        """Write what would have left the kernel (accepted packets, as rewritten) to a pcap; return how many.

        ``dropped=True`` writes the capture's packets the chain dropped instead.
        """
        from scapy.utils import RawPcapWriter

        if dropped:
            rows = [(e.time, self.packets[e.id - 1].data, self.packets[e.id - 1].link) for e in self.record
                    if e.verdict == str(DROP)]  # fmt: skip
        else:
            rows = self.outputs
        links = {link for _, _, link in rows} or {"ip"}
        if len(links) > 1:
            raise PktlabError("the capture mixes link types; write raw IP and Ethernet packets to separate files")
        w = RawPcapWriter(str(path), linktype=1 if links == {"ethernet"} else 101, snaplen=65535, sync=False)
        try:
            w._write_header(None)  # an empty result still yields a valid file
            for t, data, _ in rows:
                sec = int(t)
                w.write_packet(data, sec=sec, usec=int((t - sec) * 1e6), wirelen=len(data))
        finally:
            w.close()
        return len(rows)

    def status(self) -> ReplayStatus:
        return ReplayStatus(
            source=Path(self.source).name,
            packets=len(self.packets),
            passed_unseen=self.passed_unseen,
            counters=self.record.counters(),
            handlers=[(h.name, h.enabled, h.errors) for h in self.chain],
            seconds=self._seconds,
            last_errors=self.errors[-3:],
        )

    def __repr__(self) -> str:
        return (
            f"<ReplaySession {self.name} of {Path(self.source).name}: {len(self.packets)} packets, "
            f"{self.record.n} replayed, handlers {self.handlers}>"
        )


class _Watchdog:
    """Interrupts a handler call in the replaying thread once it is past the deadline."""

    def __init__(self, deadline: float) -> None:
        self.deadline = deadline
        self.thread_id = threading.get_ident()
        self._since: float | None = None
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._t = threading.Thread(target=self._watch, name="pktlab-replay-watchdog", daemon=True)
        self._t.start()

    def arm(self, name: str) -> None:
        with self._lock:
            self._since = time.monotonic()

    def disarm(self) -> None:
        with self._lock:
            self._since = None

    def _watch(self) -> None:
        period = min(0.05, self.deadline / 4)
        while not self._stop.wait(period):
            with self._lock:
                late = self._since is not None and time.monotonic() - self._since > self.deadline
                if late:
                    self._since = None
                    # raised at the next bytecode the handler runs (a blocking C call ends first)
                    ctypes.pythonapi.PyThreadState_SetAsyncExc(
                        ctypes.c_ulong(self.thread_id), ctypes.py_object(HandlerTimeout)
                    )

    def stop(self) -> None:
        self._stop.set()
        self._t.join(2)
        # an interrupt that lost the race with the handler's return must not fire later
        ctypes.pythonapi.PyThreadState_SetAsyncExc(ctypes.c_ulong(self.thread_id), None)


def replay(source: str | os.PathLike[str], **options: Any) -> ReplaySession:
    """A :class:`ReplaySession` of a capture file or dataset name; add handlers, then ``run()``."""
    return ReplaySession(source, **options)
