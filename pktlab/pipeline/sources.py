"""The seam between a session and where its packets come from: a kernel queue or a capture file.

:class:`PacketSource` declares what a :class:`~pktlab.Session` asks of its source; :class:`LiveQueue` (an
NFQUEUE in a namespace, with its rules, offloads, flow rules in the kernel, fail-open switching and copy range)
and :class:`CaptureReplay` (a capture read by libpcap, paced, into output spools) implement it.  What only one
kind does lives with that kind: the other refuses it in one sentence naming what to use instead, so the
session itself never asks which kind it has.  ``tests/pipeline/test_sources.py`` checks that both implement
the whole declaration and behave alike where they share it.
"""

from __future__ import annotations

import itertools
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

from ..errors import PktlabError, QueueBusyError, SessionError
from ..kernel import bpf as _bpf
from ..kernel import flow_rules as _flow_rules
from ..kernel import kernel_handlers as _kernel_handlers
from ..kernel import netns as _netns
from ..kernel import offload as _offload
from ..kernel import rules as _rules
from ..kernel.flow_rules import FlowRules, KernelFlow
from ..kernel.kernel_handlers import KernelHandlers, RuleCount
from ..kernel.offload import Offload
from ..kernel.privilege import require_place
from ..kernel.proc import QueueCounters
from ..kernel.queue import QueueSource
from ..kernel.sender import RawSender
from ..teardown import Teardown
from .capture import CapturePackets, CaptureSource
from .export import write_pcap
from .sending import Sender

_OFFLOAD_SEQ = itertools.count(1)


class SourceOwner(Protocol):
    """What a source uses of the session it feeds (``pktlab.Session``)."""

    name: str
    held: Any  # the packets held for the notebook (pktlab.pipeline.holding)
    record: Any  # the record (pktlab.pipeline.record)

    @property
    def attached(self) -> bool: ...
    @property
    def dispatcher(self) -> Any: ...  # the compiled dispatcher
    @property
    def handlers(self) -> list[str]: ...
    @property
    def monitor_if_started(self) -> Any: ...
    def say(self, message: str) -> None: ...
    def stop_watchdog(self) -> None: ...
    def why_not_sending(self) -> str | None: ...
    def attach(self) -> Any: ...
    def detach(self, drain: float = 2.0) -> None: ...
    def status(self) -> Any: ...


@runtime_checkable
class PacketSource(Protocol):
    """What a session needs of its packet source (see the module's docstring)."""

    kind: str  # "queue" or "capture"
    rule: _rules.QueueRule | None  # the queue rule (a capture: None)
    rules: _rules.RuleSet | None  # the session's rules in its namespace (a capture: None)

    # -- shared by both kinds --------------------------------------------------------------
    @property
    def running(self) -> bool: ...  # reading now
    @property
    def paused(self) -> bool: ...
    @property
    def stuck_threads(self) -> list[Any]: ...  # reading threads still inside a hung handler call
    @property
    def reads_here(self) -> bool: ...  # the calling thread reads its packets (code in a handler)
    def bind(self, session: SourceOwner) -> None: ...  # wire itself to the session's dispatcher
    def make_sender(self, session: SourceOwner) -> Sender: ...  # where pkt.reply and s.send go
    def open(self, session: SourceOwner) -> None: ...  # attach(): start reading into the dispatcher
    def close(self, session: SourceOwner, td: Teardown, drain: float) -> None: ...  # detach()'s steps
    def pause(self) -> None: ...
    def resume(self) -> None: ...
    def step(self, timeout: float) -> bool: ...
    def replace_reader(self) -> None: ...  # a handler hung: read on in a new thread
    def note_internal_error(self, text: str) -> None: ...
    def counters(self) -> QueueCounters | None: ...  # the kernel's counters (None: no kernel queue)
    def status_fields(self, session: SourceOwner) -> dict[str, Any]: ...  # what it adds to Status
    def describe(self, session: SourceOwner) -> str: ...  # repr
    def why_not_sending(self, session: SourceOwner) -> str: ...  # a send while not reading: the reason
    def decide_flow(self, session: SourceOwner, flow: Any, verdict: str) -> int: ...  # a flow verdict: its mark bit
    def flows_offloaded(self) -> list[KernelFlow] | None: ...  # the kernel's flows (None: pktlab's own)
    def revoke_flows(self, ends: set[tuple[Any, ...]] | None) -> None: ...  # take flow verdicts back
    def handler_replaced(self, session: SourceOwner) -> None: ...
    def kernel_rule_counts(self, session: SourceOwner) -> list[RuleCount] | None: ...  # None: not in a kernel

    # -- only a queue (a capture refuses) ----------------------------------------------------
    def offload(self, session: SourceOwner, expr: str, verdict: Any, mark: int | None) -> Offload: ...
    def remove_offload(self, session: SourceOwner, expr: str) -> None: ...
    @property
    def offloads(self) -> list[Offload]: ...
    def offload_hits(self, session: SourceOwner, expr: str) -> int: ...
    def out_of_path(self, session: SourceOwner) -> Any: ...  # a context manager

    # -- only a capture (a queue refuses) ----------------------------------------------------
    def configure(self, session: SourceOwner, pace: float | None, limit: int | None, stop_on_error: bool) -> None: ...
    def run(self, session: SourceOwner, pace: float | None, limit: int | None, stop_on_error: bool) -> Any: ...
    def wait(self, session: SourceOwner, timeout: float | None) -> bool: ...
    def packets(self, session: SourceOwner) -> CapturePackets: ...
    def outputs(self, session: SourceOwner) -> list[tuple[float, bytes, str]]: ...
    def write_pcap(self, session: SourceOwner, path: str | os.PathLike[str], dropped: bool) -> int: ...


def _live_only(session: SourceOwner, what: str) -> PktlabError:
    return SessionError(f"{session.name} replays a capture; {what} needs a live queue (pktlab.attach)")


def _capture_only(session: SourceOwner, what: str) -> PktlabError:
    return SessionError(f"session {session.name} reads a live queue; {what} is for a capture (pktlab.replay)")


class _Reading:
    """What both kinds hand on to the threads that read their packets (``reading``: a queue's or a capture's)."""

    reading: Any

    @property
    def running(self) -> bool:
        return self.reading.running

    @property
    def paused(self) -> bool:
        return self.reading.paused

    @property
    def stuck_threads(self) -> list[Any]:
        return self.reading.stuck_threads

    @property
    def reads_here(self) -> bool:
        return self.reading.reads_here

    @property
    def internal_errors(self) -> int:
        return self.reading.internal_errors

    def pause(self) -> None:
        self.reading.pause()

    def resume(self) -> None:
        self.reading.resume()

    def step(self, timeout: float) -> bool:
        return self.reading.step(timeout)

    def replace_reader(self) -> None:
        self.reading.replace_reader()

    def note_internal_error(self, text: str) -> None:
        self.reading.internal_errors += 1
        self.reading.last_internal_error = text


class LiveQueue(_Reading):
    """An NFQUEUE in a namespace: the reader, the queue rule, offloads and flow verdicts in the kernel."""

    kind = "queue"

    def __init__(self, reader: QueueSource, rule: _rules.QueueRule, rules: _rules.RuleSet, *, netns: str | None,
                 lab: Any, flow_verdicts: bool, copy_auto: bool) -> None:  # fmt: skip
        self.reader_source = self.reading = reader  # the queue's reading threads (pktlab.kernel.queue)
        self.rule = rule
        self.rules = rules
        self.netns = netns
        self.lab = lab
        self.flow_verdicts = flow_verdicts  # flow rules at attach (else at the first flow verdict)
        self.copy_auto = copy_auto
        self.flow_rules: FlowRules | None = None
        self.kernel_handlers: KernelHandlers | None = None  # the session's compiled handlers (made with the first)
        self._offloads: dict[str, Offload] = {}
        self._raw: RawSender | None = None

    # -- what the reader tells --------------------------------------------------------------
    @property
    def reader(self) -> Any:
        """The compiled reader of the queue's socket (its counters)."""
        return self.reader_source.reader

    @property
    def thread_id(self) -> int | None:
        """The reading thread's id (benchmarks pin it to a CPU)."""
        return self.reader_source.thread_id

    @property
    def max_len(self) -> int:
        """Packets the kernel queue holds."""
        return self.reader_source.max_len

    @property
    def fail_open(self) -> bool:
        """A full queue passes packets (False: drops them)."""
        return self.reader_source.fail_open

    @property
    def holding_when_full(self) -> bool:
        """Fail-open, but made fail-closed while TCP connections are adjusted."""
        return self.reader_source.holding_when_full

    def counters(self) -> QueueCounters | None:
        return self.reader_source.counters() if self.reader_source.running else None

    # -- wiring, attach, detach ---------------------------------------------------------------
    def bind(self, session: SourceOwner) -> None:
        d = session.dispatcher

        def idle(final: bool) -> float | None:  # between two reads: kept-back segments, expired TCP state
            wait = d.tick(final)
            d.expire_connections()
            return wait

        self.reader_source.on_idle = idle
        # a full fail-open queue would pass packets of adjusted connections unadjusted: hold them instead
        d.on_seqadj = self.reader_source.hold_when_full
        self.reader_source.owner_sink = d  # pkt.uid, pkt.gid
        self.reader_source.fast_path = (d, d.fast_path())  # packets no handler sees: no packet object
        if self.copy_auto:
            d.regrow = self.reader_source.grow_copy

    def make_sender(self, session: SourceOwner) -> Sender:
        self._raw = RawSender(self.netns)
        if not _netns.queue_may_rewrite(self.netns):  # the kernel drops new payloads there: the host sends them
            session.dispatcher.reinject = self._raw.resender  # C: a GSO TCP packet is cut into segments
        raw = self._raw
        return Sender(session.record.ring, lambda data, t: raw.send(data), ready=session.why_not_sending,
                      if_name=_netns.InterfaceNames(self.netns))  # fmt: skip

    def why_not_sending(self, session: SourceOwner) -> str:
        return f"session {session.name} is detached; attach() it first (it sends from {self.netns or 'the host'})"

    def open(self, session: SourceOwner) -> None:
        require_place(f"attach NFQUEUE {self.reader_source.queue}", self.netns)
        if self.lab is not None and self.lab.closed:
            raise SessionError("the lab this session was made for is down; bring a new lab up")
        if self.netns is None:
            print(f"pktlab: queueing in the HOST namespace: {self.rule.describe()}")
        _rules.sweep_stale(self.netns)
        _flow_rules.sweep_stale(self.netns)
        _kernel_handlers.sweep_stale(self.netns)
        d = session.dispatcher

        def bound(fd: int) -> None:  # the dispatcher writes batch verdicts to the queue's socket itself
            d.fd = fd

        try:
            self.reader_source.start(d, on_bound=bound, after_read=d.flush, before_unbind=d.release_socket)
        except QueueBusyError:
            queue = self.reader_source.queue
            mine = [x for x in (self.lab.sessions if self.lab is not None else []) if x.queue == queue]
            if not mine:
                raise
            raise QueueBusyError(
                f"queue {queue} in {self.netns} is already read by your own session {mine[0].name}; detach "
                f"it first (%pktlab detach {mine[0].name}, or s.detach()) or pick another queue number"
            ) from None
        try:
            self.rules.install([self.rule])
        except BaseException:  # nothing of this session's was installed (a same-named session's rules stay)
            self.reader_source.stop(drain=0.5)
            raise
        if self.flow_verdicts:
            try:
                self.flow_rules = FlowRules(self.rules, self.rule, self.netns, next(_OFFLOAD_SEQ))
                self.flow_rules.install()
            except BaseException:
                self.flow_rules = None
                self.rules.remove()
                self.reader_source.stop(drain=0.5)
                raise
        session.chain.on_kernel_change = self._install_kernel_handlers
        try:
            session.chain.run_in_kernel(True)  # the kernel handlers it has already go in now
        except BaseException:
            session.chain.on_kernel_change = None
            if self.flow_rules is not None:
                self.flow_rules.remove()
                self.flow_rules = None
            self.rules.remove()
            self.reader_source.stop(drain=0.5)
            raise
        if self.lab is not None:
            self.lab.track_session(session)
        self._say_what_accepts_skip(session)

    def _install_kernel_handlers(self, handlers: list[Any]) -> None:
        """The chain's kernel handlers changed: install them (one transaction), or raise and nothing changes."""
        if handlers and self._offloads:
            raise SessionError(
                "this session has offloaded verdicts, which the kernel applies in front of the queue in iptables, "
                "after kernel handlers; remove the offloads (s.remove_offload) or run the handler in Python"
            )
        if self.kernel_handlers is None:
            if not handlers:
                return
            self.kernel_handlers = KernelHandlers(self.rules, self.rule, self.netns, next(_OFFLOAD_SEQ))
        if self.flow_rules is not None and self.flow_rules.installed:
            self.kernel_handlers.flow_bit = self.flow_rules.accept_bit
        self.kernel_handlers.install(handlers)

    def kernel_rule_counts(self, session: SourceOwner) -> list[RuleCount] | None:
        kh = self.kernel_handlers
        return kh.counts() if kh is not None and session.attached else None

    def _say_what_accepts_skip(self, session: SourceOwner) -> None:
        """Once per attach: the rules below the queue rule that a packet the handlers accept no longer meets."""
        said = set()
        for skipped in self.rules.skipped():
            text = skipped.text()
            if text in said:
                continue  # the same in iptables and ip6tables
            said.add(text)
            if self.rule.decide and skipped.table == _rules.DECIDING_TABLE[self.rule.hook]:
                fix = "attach without decide=True (--decide) to observe: what it accepts then meets them as without it"
            else:
                fix = "they share its chain; attach in another table (table=) to let them run"
            session.say(f"{text}; {fix}")

    def close(self, session: SourceOwner, td: Teardown, drain: float) -> None:
        if self.lab is not None:
            self.lab.forget_session(session)
        self._offloads.clear()
        session.chain.on_kernel_change = None
        if self.kernel_handlers is not None:
            td.step("removing its kernel handlers", self.kernel_handlers.remove)
        if self.flow_rules is not None:
            td.step("removing its flow verdicts from the kernel", self.flow_rules.remove)
            self.flow_rules = None
        td.step("removing its rules", self.rules.remove)
        td.step("releasing held packets", session.held.release)  # the default verdict, before the queue goes
        td.step("stopping the reader", self.reader_source.stop, drain=drain)  # the watchdog still rescues
        td.step("stopping the watchdog", session.stop_watchdog)
        if self._raw is not None:
            td.step("closing its sending sockets", self._raw.close)
        monitor = session.monitor_if_started
        if monitor is not None:
            td.step("stopping the live monitor", monitor.stop)

    # -- flow verdicts in the kernel ----------------------------------------------------------
    def decide_flow(self, session: SourceOwner, flow: Any, verdict: str) -> int:
        if not session.attached:
            return 0
        if self.flow_rules is None:
            self.flow_rules = FlowRules(self.rules, self.rule, self.netns, next(_OFFLOAD_SEQ))
        if not self.flow_rules.installed:
            self.flow_rules.install()
            kh = self.kernel_handlers
            if kh is not None and kh.installed:  # the connections it accepts skip its kernel handlers from now on
                kh.flow_bit = self.flow_rules.accept_bit
                kh.install(kh.installed)
        if verdict == "drop":  # its packet is dropped as decided; the kernel's set drops the rest
            self.flow_rules.drop(flow.proto, flow.a, flow.b)
            return 0
        return self.flow_rules.accept_bit

    @property
    def kernel_flows(self) -> bool:
        return self.flow_rules is not None and self.flow_rules.installed

    def flows_offloaded(self) -> list[KernelFlow] | None:
        return self.flow_rules.flows() if self.kernel_flows else None  # type: ignore[union-attr]

    def revoke_flows(self, ends: set[tuple[Any, ...]] | None) -> None:
        if self.kernel_flows:
            if ends is None:
                self.flow_rules.clear()  # type: ignore[union-attr]
            elif ends:
                self.flow_rules.clear(ends | {(p, b, bp, a, ap) for p, a, ap, b, bp in ends})  # type: ignore[union-attr]

    def handler_replaced(self, session: SourceOwner) -> None:
        if not len(session.dispatcher.seqadj.adjuster):
            # copy="auto": the new code may need less of each packet (not while connections are adjusted:
            # their later packets get new sequence numbers, which needs them whole)
            self.reader_source.reset_copy()

    # -- offloaded verdicts -----------------------------------------------------------------
    def offload(self, session: SourceOwner, expr: str, verdict: Any, mark: int | None) -> Offload:
        if not session.attached:
            raise SessionError(f"session {session.name} is not attached; offloads live in its rules, attach first")
        name, mark = _offload.parse_verdict(verdict, mark)
        if self.kernel_handlers is not None and self.kernel_handlers.installed:
            raise SessionError(
                "this session has kernel handlers, which run before the iptables rules an offload would add, so "
                "the two would decide in another order than pktlab's; remove them or run them in Python first"
            )
        expr = " ".join(str(expr).split())
        old = self._offloads.get(expr)
        key = old.key if old is not None else next(_OFFLOAD_SEQ)
        off = Offload(expr, name, mark, _bpf.compile(expr), key)
        self.rules.put_front(key, [(self.rule, line) for line in off.lines(self.rule)])
        self._offloads[expr] = off
        return off

    def remove_offload(self, session: SourceOwner, expr: str) -> None:
        expr = " ".join(str(expr).split())
        off = self._offloads.pop(expr, None)
        if off is None:
            raise SessionError(f"no offload for {expr!r}; the session has {sorted(self._offloads) or 'none'}")
        if session.attached:
            self.rules.drop_front(off.key)

    @property
    def offloads(self) -> list[Offload]:
        return list(self._offloads.values())

    def offload_hits(self, session: SourceOwner, expr: str) -> int:
        off = self._offloads.get(" ".join(str(expr).split()))
        if off is None:
            raise SessionError(f"no offload for {expr!r}")
        return self.rules.front_hits(off.key) if session.attached else 0

    @contextmanager
    def out_of_path(self, session: SourceOwner) -> Iterator[None]:
        if not session.attached:
            raise SessionError(f"session {session.name} is not attached; there is no rule to take out")
        offloads = list(self._offloads.values())
        kh = self.kernel_handlers
        compiled = list(kh.installed) if kh is not None else []
        if kh is not None:
            kh.remove()
        self.rules.remove()
        try:
            yield
        finally:
            self.rules.install([self.rule])
            for off in offloads:
                self.rules.put_front(off.key, [(self.rule, line) for line in off.lines(self.rule)])
            if self.flow_rules is not None and self.flow_rules.installed:
                self.flow_rules.put_front()  # the connections accepted as flows skip the queue again
            if kh is not None and compiled:
                kh.install(compiled)

    # -- status ----------------------------------------------------------------------------
    def status_fields(self, session: SourceOwner) -> dict[str, Any]:
        src = self.reader_source
        k = self.counters()
        attached = session.attached
        hits = self.rules.hits() if attached else 0
        unseen = 0
        if k is not None:
            # packets that hit the rule but never reached the reader: passed by the kernel (fail-open,
            # or --queue-bypass while no reader was bound) beyond those it counted as dropped
            unseen = max(0, hits - k.queue_dropped - k.user_dropped - k.queue_total - session.record.n)
        return {
            "queue": src.queue,
            "netns": self.netns,
            "rules": self.rules.installed() if attached else [],
            "kernel": k,
            "internal_errors": src.internal_errors,
            "last_internal_error": src.last_internal_error,
            "rule_hits": hits,
            "passed_unseen": unseen,
            "enobufs": src.enobufs,
            "fail_open": src.fail_open,
            "holding_when_full": src.holding_when_full,
            "offloads": [(o.describe(), self.rules.front_hits(o.key)) for o in self._offloads.values()]
            if attached
            else [],
            "kernel_flows": self.kernel_flows,
            "kernel_rules": [(c.handler, c.line, c.rule, c.packets) for c in self.kernel_rule_counts(session) or []],
            "packets": session.record.n + len(session.held),
            "copy": src.describe_copy(),
            "recopied": session.dispatcher.recopied,
        }

    def describe(self, session: SourceOwner) -> str:
        where = self.netns or "host"
        state = "attached" if session.attached else "detached"
        return (f"<Session {session.name} queue {self.reader_source.queue} in {where} {state}, {session.record.n} "
                f"packets, handlers {session.handlers}>")  # fmt: skip

    # -- what only a capture does --------------------------------------------------------------
    def configure(self, session: SourceOwner, pace: float | None, limit: int | None, stop_on_error: bool) -> None:
        raise _capture_only(session, "configure()")

    def run(self, session: SourceOwner, pace: float | None, limit: int | None, stop_on_error: bool) -> Any:
        raise _capture_only(session, "run()")

    def wait(self, session: SourceOwner, timeout: float | None) -> bool:
        raise _capture_only(session, "wait()")

    def packets(self, session: SourceOwner) -> CapturePackets:
        raise _capture_only(session, "packets")

    def outputs(self, session: SourceOwner) -> list[tuple[float, bytes, str]]:
        raise _capture_only(session, "outputs")

    def write_pcap(self, session: SourceOwner, path: str | os.PathLike[str], dropped: bool) -> int:
        raise _capture_only(session, "write_pcap()")


class CaptureReplay(_Reading):
    """A capture file read by libpcap, paced or as fast as possible, into output spools."""

    kind = "capture"

    def __init__(self, capture: CaptureSource) -> None:
        self.rule: _rules.QueueRule | None = None  # a capture has no rules
        self.rules: _rules.RuleSet | None = None
        self.capture = self.reading = capture  # the reading thread and the spools (pktlab.pipeline.capture)
        self.seconds = 0.0  # how long the last run() took

    @property
    def path(self) -> str:
        return self.capture.path

    def counters(self) -> QueueCounters | None:
        return None

    def bind(self, session: SourceOwner) -> None:
        self.capture.on_idle = session.dispatcher.tick

    def make_sender(self, session: SourceOwner) -> Sender:
        src, record = self.capture, session.record

        def clock(answering: Any) -> float:  # capture time: the answered packet's, else the newest packet's
            if answering is not None:
                return float(answering.time)
            newest = record.tail(1)
            return newest[0].time if newest else 0.0

        return Sender(record.ring, lambda data, t: src.accepted.append(t, data), link=lambda: src.link, clock=clock,
                      ready=session.why_not_sending)  # fmt: skip

    def why_not_sending(self, session: SourceOwner) -> str:
        return f"{session.name} is not reading its capture; send from a handler while it runs (s.run(), s.attach())"

    def open(self, session: SourceOwner) -> None:
        session.record.clear()  # a capture read again starts a fresh record
        self.capture.start(session.dispatcher)

    def close(self, session: SourceOwner, td: Teardown, drain: float) -> None:
        td.step("releasing held packets", session.held.release)
        td.step("stopping the reader", self.capture.stop, drain=drain)
        td.step("stopping the watchdog", session.stop_watchdog)
        # a replay's dashboard keeps its monitor: it shows its runs, one after another

    def decide_flow(self, session: SourceOwner, flow: Any, verdict: str) -> int:
        return 0  # pktlab decides the flow's later packets of the capture itself

    def flows_offloaded(self) -> list[KernelFlow] | None:
        return None

    def revoke_flows(self, ends: set[tuple[Any, ...]] | None) -> None:
        return None

    def kernel_rule_counts(self, session: SourceOwner) -> list[RuleCount] | None:
        return None  # a replay runs kernel handlers in Python, as it runs the others

    def handler_replaced(self, session: SourceOwner) -> None:
        return None

    def status_fields(self, session: SourceOwner) -> dict[str, Any]:
        src = self.capture
        return {
            "queue": -1,
            "netns": None,
            "rules": [],
            "kernel": None,
            "internal_errors": src.internal_errors,
            "last_internal_error": src.last_internal_error,
            "passed_unseen": src.unseen,
            "source": Path(src.path).name,
            "packets": src.read_count,
            "seconds": self.seconds,
        }

    def describe(self, session: SourceOwner) -> str:
        return (f"<Session {session.name} replaying {Path(self.capture.path).name}: {session.record.n} packets, "
                f"handlers {session.handlers}>")  # fmt: skip

    # -- what only a queue does ---------------------------------------------------------------
    def offload(self, session: SourceOwner, expr: str, verdict: Any, mark: int | None) -> Offload:
        raise _live_only(session, "offload()")

    def remove_offload(self, session: SourceOwner, expr: str) -> None:
        raise _live_only(session, "remove_offload()")

    @property
    def offloads(self) -> list[Offload]:
        return []

    def offload_hits(self, session: SourceOwner, expr: str) -> int:
        raise _live_only(session, "offload_hits()")

    def out_of_path(self, session: SourceOwner) -> Any:
        raise _live_only(session, "out_of_path()")

    # -- replaying ---------------------------------------------------------------------------
    def configure(self, session: SourceOwner, pace: float | None, limit: int | None, stop_on_error: bool) -> None:
        if limit is not None and (not isinstance(limit, int) or isinstance(limit, bool) or limit < 0):
            raise SessionError(f"limit {limit!r} must be a number of packets, 0 or more (None: all of them)")
        if pace is not None and (isinstance(pace, bool) or not isinstance(pace, int | float) or pace <= 0):
            raise SessionError(f"pace {pace!r} must be > 0 (1.0 is real time), or None for as fast as possible")
        ring = session.record.ring
        self.capture.configure(pace, limit, (lambda: ring.errors > 0) if stop_on_error else None)

    def run(self, session: SourceOwner, pace: float | None, limit: int | None, stop_on_error: bool) -> Any:
        if session.attached:
            raise SessionError(f"{session.name} is already reading its capture; wait() for it or detach() first")
        self.configure(session, pace, limit, stop_on_error)
        self.capture.resume()  # run() reads to the end: a pause left from stepping would wait for ever
        t0 = time.monotonic()
        session.attach()
        try:
            self.capture.wait()
        finally:
            self.seconds = time.monotonic() - t0
            session.detach()
        return session.status()

    def wait(self, session: SourceOwner, timeout: float | None) -> bool:
        return self.capture.wait(timeout)

    def packets(self, session: SourceOwner) -> CapturePackets:
        return CapturePackets(self.capture.path)

    def outputs(self, session: SourceOwner) -> list[tuple[float, bytes, str]]:
        link = self.capture.link
        return [(t, data, link) for t, data in self.capture.accepted]

    def write_pcap(self, session: SourceOwner, path: str | os.PathLike[str], dropped: bool) -> int:
        src = self.capture
        return write_pcap(path, src.dropped if dropped else src.accepted, src.link)
