"""A session wires a packet source to a handler chain and a record.

The source is a kernel queue (:func:`attach`) or a capture file
(:func:`pktlab.replay`); both feed the one compiled dispatcher, so the chain,
the deadline, holding, stepping and the record behave the same for both.

For a queue, ``attach()`` sweeps rules left by dead sessions, binds the
reader, then installs the rule (so no packet is queued before a reader
exists); ``detach()`` removes the rule, lets the reader drain what the kernel
still holds, then unbinds.  Every packet the reader gets receives exactly one
verdict, whatever the handlers do.
"""

from __future__ import annotations

import atexit
import inspect
import itertools
import os
import re
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from html import escape
from typing import TYPE_CHECKING, Any

from ..errors import SessionError, brief
from ..kernel import bpf as _bpf
from ..kernel import rules as _rules
from ..kernel.flow_rules import KernelFlow
from ..kernel.offload import Offload
from ..kernel.proc import QueueCounters
from ..kernel.queue import COPY_MODES, FULL_RANGE, HEADERS_RANGE, QueueSource, batch_verdict_prefix
from ..options import DEFAULT as D
from ..options import REPLAY_DEFAULT as R
from ..packet.model import HOOK_NAMES, Packet
from ..packet.replies import outgoing
from ..packet.verdicts import REPEAT, Verdict
from ..teardown import Teardown
from ._dispatch import Dispatcher
from .capture import CapturePackets, CaptureSource
from .chainowner import ChainOwner, hook
from .flows import PROTO_NAMES, FlowTable
from .handlers import Handler, HandlerChain, HandlerFailure, check_function
from .holding import HeldPacket, HeldPackets
from .record import Record
from .seqadj import TcpAdjust
from .sources import CaptureReplay, LiveQueue, PacketSource
from .tcp_analysis import FLOW_COLUMNS, flow_summary

if TYPE_CHECKING:
    from ..kernel.netns import Place

_SESSION_SEQ = itertools.count(1)
# how much of each packet a queue copies to user space when attach() is not told (copy=):
# chosen by measurement, see BENCHMARKS.md "How much of each packet to copy"
COPY_DEFAULT = "full"
_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,47}")


def _session_name(name: str | None, prefix: str, why: str) -> str:
    """The name given (checked: it goes into rules and file names), else ``prefix-N``."""
    if name is None:
        return f"{prefix}-{next(_SESSION_SEQ)}"
    if not _NAME_RE.fullmatch(str(name)):
        raise SessionError(
            f"session name {name!r} is not allowed; use 1-48 letters, digits, '_', '.' or '-', "
            f"starting with a letter or digit{why}"
        )
    return str(name)
_BYTECODE = re.compile(r'--bytecode (?:"(\d+),[^"]*"|(\d+),\S*)')
_OFFLOAD_SEQ = itertools.count(1)


@dataclass
class Status:
    """A snapshot of a session: counters from pktlab and from the kernel."""

    name: str  # the session's name
    queue: int  # the NFQUEUE number (a replay: -1)
    netns: str | None  # the namespace it is attached in (None: the host's, or a replay)
    attached: bool  # reading packets now
    paused: bool  # not reading: packets wait in the kernel queue
    rules: list[str]  # the iptables rules it installed, as iptables-save writes them
    handlers: list[tuple[str, bool, int]]  # (name, enabled, packets it decided) per handler, in chain order
    counters: dict[str, int]  # packets, then per verdict (accept, drop, repeat), sent and errors
    kernel: QueueCounters | None  # the kernel's counters of the queue: waiting, queue_dropped, user_dropped
    rate_pps: float  # packets per second over the last second
    last_errors: list[HandlerFailure] = field(default_factory=list)  # the newest handler failures
    errors_left_out: int = 0  # handler failures s.errors no longer keeps (it keeps the newest 1,000)
    hold_failures: int = 0  # calls of the hold predicate (s.hold) that raised: those packets went on, not held
    last_hold_failure: str | None = None  # the newest one
    unfixed_rewrites: int = 0  # rewritten packets whose headers could not be read to fix them: sent as written
    last_unfixed_rewrite: str | None = None  # the newest one's reason, with the packet
    internal_errors: int = 0  # pktlab's own failures on the packet path (the packet got the error verdict)
    last_internal_error: str | None = None  # the newest one's reason
    rule_hits: int = 0  # packets that hit the queue rule (the kernel's counter)
    passed_unseen: int = 0  # packets the kernel passed without queueing (fail-open; a replay: outside the filter)
    enobufs: int = 0  # socket overruns the reader met (the kernel had more than the socket buffer held)
    fail_open: bool = True  # a full queue passes packets (False: drops them)
    holding_when_full: bool = False  # fail-open, made fail-closed while TCP connections are adjusted
    stuck: list[tuple[str, float, int]] = field(default_factory=list)  # (handler, seconds, packet id) past deadline
    rescued: int = 0  # packets the watchdog gave the error verdict because their handler hung
    stuck_threads: int = 0  # reader threads still inside a hung handler call
    filter: str | None = None  # the tcpdump filter run in the kernel (a replay: by libpcap)
    offloads: list[tuple[str, int]] = field(default_factory=list)  # description, packets decided
    kernel_rules: list[tuple[str, int, str, int]] = field(default_factory=list)  # kernel handlers' rules (live):
    # (handler, Python line, nftables rule, packets it matched)
    source: str | None = None  # a replay: the capture's file name (None: a kernel queue)
    packets: int = 0  # a replay: packets read from the capture (those outside the filter too)
    seconds: float = 0.0  # a replay: how long the last run() took
    held: int = 0  # packets held for the notebook (s.hold), their verdicts not given yet
    tcp_adjusted: int = 0  # TCP connections whose lengths a handler changed (sequence adjustment state)
    kept_back: int = 0  # TCP segments kept back until a gap in their stream filled
    flows: int | None = None  # flows tracked (None: tracking not started)
    decided_flows: int = 0  # flows a handler gave a flow verdict
    kernel_flows: bool = False  # their later packets are decided in the kernel (live)
    copy: str = ""  # how much of each packet is copied (live): "full", "headers", "auto" or "N bytes"
    recopied: int = 0  # copy="auto": packets sent through the queue again to be copied whole

    def lines(self) -> list[str]:
        state = ("attached, PAUSED" if self.paused else "attached") if self.attached else "detached"
        c = self.counters
        if self.source is not None:
            out = [
                f"replay of {self.source}: {self.packets} packets in {self.seconds:.3f} s"
                + (f" ({state})" if self.attached else ""),
                f"  accept {c['accept']}  drop {c['drop']}  repeat {c['repeat']}  errors {c['errors']}  "
                f"outside the filter {self.passed_unseen}",
            ]
        else:
            where = self.netns or "host namespace"
            out = [
                f"session {self.name}: queue {self.queue} in {where}, {state}",
                f"  packets {c['packets']}  accept {c['accept']}  drop {c['drop']}  repeat {c['repeat']}  "
                f"errors {c['errors']}  ({self.rate_pps:.0f} pkt/s over the last second)",
            ]
        if self.kernel:
            k = self.kernel
            out.append(
                f"  kernel: waiting {k.queue_total}  queue_dropped {k.queue_dropped}  "
                f"user_dropped {k.user_dropped}  copy_range {k.copy_range}"
            )
            if self.copy:
                again = f", {self.recopied} packet(s) queued again to be copied whole" if self.recopied else ""
                out.append(f"  copy: {self.copy}{again}")
            if not self.fail_open:
                mode = "fail-closed: a full queue drops"
            elif self.holding_when_full:
                mode = "fail-open, but fail-closed while TCP connections are adjusted: a full queue drops"
            else:
                mode = "fail-open: a full queue passes packets"
            out.append(
                f"  rule hits {self.rule_hits}  passed unseen {self.passed_unseen}  "
                f"socket overruns (ENOBUFS) {self.enobufs}  ({mode})"
            )
        if self.held:
            out.append(f"  held {self.held} packet(s) waiting for a verdict from the notebook")
        if c.get("sent"):
            out.append(f"  sent {c['sent']} packet(s) of its own (pkt.reply, send()), recorded as 'sent'")
        if self.tcp_adjusted or self.kept_back:
            out.append(
                f"  TCP: {self.tcp_adjusted} connection(s) with rewritten lengths, sequence numbers adjusted; "
                f"{self.kept_back} segment(s) kept back for reordering"
            )
        if self.flows is not None:
            out.append(f"  flows tracked: {self.flows}")
        if self.decided_flows:
            where = "decided in the kernel" if self.kernel_flows else "decided by pktlab (replay)"
            out.append(f"  flow verdicts: {self.decided_flows} flows {where}")
        if self.filter:
            out.append(f"  filter{' (in the kernel)' if self.source is None else ''}: {self.filter}")
        for desc, hits in self.offloads:
            out.append(f"  offload: {desc}  ({hits} packets decided in the kernel)")
        for handler, line, rule, hits in self.kernel_rules:
            out.append(f"  kernel handler {handler}, line {line}: {rule}  ({hits} packets)")
        for r in self.rules:  # a BPF program's bytecode says nothing to a person: its length does
            out.append("  rule: " + _BYTECODE.sub(_bpf_length, r))
        if self.handlers:
            out.append(
                "  handlers: "
                + ", ".join(f"{n}{'' if on else ' (off)'}{f' [{e} errors]' if e else ''}" for n, on, e in self.handlers)
            )
        else:
            out.append("  handlers: none (every packet gets the default verdict)")
        for name, secs, n in self.stuck:
            out.append(
                f"  STUCK: handler {name} has not returned for {secs:.1f} s; it is skipped until it does "
                f"({n} packet(s) given the error verdict at the deadline)"
            )
        if self.rescued and not self.stuck:
            out.append(f"  {self.rescued} packet(s) got the error verdict because a handler missed the deadline")
        if self.stuck_threads:
            out.append(f"  {self.stuck_threads} reading thread(s) still inside a stuck handler call")
        for f in self.last_errors:
            out.append(f"  error: {f}")
        if self.errors_left_out:
            out.append(f"  s.errors keeps the newest failures; {self.errors_left_out:,} older ones were left out")
        if self.hold_failures:
            out.append(
                f"  hold predicate failed {self.hold_failures:,} time(s), the last with {self.last_hold_failure}; "
                "those packets went on through the chain, not held"
            )
        if self.unfixed_rewrites:
            out.append(
                f"  {self.unfixed_rewrites:,} rewritten packet(s) sent as written, lengths and checksums not fixed: "
                f"the last because {self.last_unfixed_rewrite}"
            )
        if self.internal_errors:
            last = f" (the last: {self.last_internal_error})" if self.last_internal_error else ""
            out.append(f"  pktlab internal errors: {self.internal_errors}{last}")
        return out

    def __str__(self) -> str:
        return "\n".join(self.lines())

    def _repr_html_(self) -> str:
        return "<pre>" + escape(str(self)) + "</pre>"


def _copy_setting(copy: str | None, copy_range: int | None) -> tuple[int, bool]:
    """(copy range, copy grows on demand) of the ``copy=`` / ``copy_range=`` options."""
    if copy is not None and copy_range is not None:
        raise SessionError(
            f"copy={copy!r} and copy_range={copy_range!r} both say how much of each packet to copy; give one"
        )
    if copy_range is not None:
        return copy_range, False
    mode = COPY_DEFAULT if copy is None else copy
    if mode not in COPY_MODES:
        raise SessionError(
            f"copy={copy!r} is not a copy mode; use 'full' (whole packets), 'headers' (the first "
            f"{HEADERS_RANGE} bytes) or 'auto' (headers, and whole packets once a handler reads further)"
        )
    return (FULL_RANGE if mode == "full" else HEADERS_RANGE), mode == "auto"


class Session(ChainOwner):
    """A packet source (a kernel queue or a capture) bound to one handler chain (options: ``pktlab.options``).

    Use :func:`attach` for a queue and :func:`pktlab.replay` for a capture.
    """

    def __init__(
        self,
        queue: int,
        *,
        rule: str | Sequence[str] | None = D.rule,
        hook: str = D.hook,
        table: str | None = D.table,
        family: str = D.family,
        netns: str | Place | None = None,  # a lab host, a lab (its server) or a namespace's name
        allow_host: bool = D.allow_host,
        allow_all: bool = D.allow_all,
        bypass: bool = D.bypass,
        fail_open: bool = D.fail_open,
        default: str | Verdict = D.default,
        on_error: str | Verdict = D.on_error,
        max_len: int = D.max_len,
        copy_range: int | None = D.copy_range,
        sock_bytes: int = D.sock_bytes,
        batch: int = D.batch,
        record_size: int = D.record_size,
        snaplen: int = D.snaplen,
        deadline: float | None = D.deadline,  # far above scheduling noise: a starved reader was seen past 50 ms
        name: str | None = D.name,
        filter: str | None = D.filter,  # noqa: A002 - the word users know from tcpdump
        flow_verdicts: bool = D.flow_verdicts,
        gso: bool = D.gso,
        copy: str | None = D.copy,
        decide: bool = D.decide,
    ) -> None:
        if not isinstance(queue, int) or isinstance(queue, bool) or not 0 <= queue <= 65535:
            raise SessionError(f"queue number {queue!r} is not valid; use an integer 0..65535")
        copy_range, copy_auto = _copy_setting(copy, copy_range)
        self.queue = queue
        self.name = _session_name(name, f"q{queue}", " (it goes into the session's firewall rules)")
        self._lab, self.netns = _resolve_netns(netns)
        match = _rules.parse_match(rule)
        if self.netns is None:
            if not allow_host:
                raise SessionError(
                    "attaching in the host's own network namespace can stall this machine's traffic; "
                    "attach to a lab host (netns=lab.server, or %pktlab lab up first), or pass "
                    "allow_host=True (--host) if you mean it"
                )
            if not match and not allow_all:
                raise SessionError(
                    "a rule with no match would queue all of the host's traffic; give rule= (--rule) "
                    "or pass allow_all=True (--all) as well"
                )
        self.filter = _bpf.compile(filter) if filter else None
        prefix = tuple(self.filter.match_args()) if self.filter is not None else ()
        rule_ = _rules.QueueRule(queue, hook, tuple(match), table, bypass, family, prefix, decide=bool(decide))
        self._init_chain(default, on_error, record_size, snaplen, deadline, 60)
        reader = QueueSource(
            queue, netns=self.netns, max_len=max_len, copy_range=copy_range, sock_bytes=sock_bytes, fail_open=fail_open,
            gso=gso, copy_auto=copy_auto,
        )
        # flow verdicts ready from attach on (flow_verdicts=True): conntrack follows every connection from its first
        # packet, so the kernel takes a flow over right after the packet that decided it (else: from the next one
        # conntrack sees, when the first decision started it)
        self.source: PacketSource = LiveQueue(
            reader, rule_, _rules.RuleSet(_rules.make_tag(self.name), self.netns), netns=self.netns, lab=self._lab,
            flow_verdicts=bool(flow_verdicts), copy_auto=copy_auto,
        )
        self._make_dispatcher(batch_verdict_prefix(queue), batch)

    @classmethod
    def from_capture(
        cls,
        path: str,
        *,
        filter: str | None = R.filter,  # noqa: A002 - tcpdump's word
        hook: str = R.hook,
        default: str | Verdict = R.default,
        on_error: str | Verdict = R.on_error,
        record_size: int = R.record_size,
        snaplen: int = R.snaplen,
        deadline: float | None = R.deadline,
        name: str | None = R.name,
    ) -> Session:
        """A session whose packets come from the capture file ``path``; see :func:`pktlab.replay`."""
        self = cls.__new__(cls)
        self.name = _session_name(name, "replay", "")
        self.queue = None
        self._lab, self.netns = None, None
        if not isinstance(hook, str) or hook.upper() not in HOOK_NAMES:
            raise SessionError(f"unknown hook {hook!r}; use one of {', '.join(HOOK_NAMES)}")
        self.hook = hook.upper()
        self.filter = _bpf.compile(filter) if filter else None  # the same check (and message) as live
        self._init_chain(default, on_error, record_size, snaplen, deadline, 600)
        self.source = CaptureReplay(CaptureSource(path, filter=filter, hook=HOOK_NAMES.index(self.hook)))
        self._make_dispatcher(batch_verdict_prefix(0), 1)
        return self

    def _init_chain(
        self,
        default: str | Verdict,
        on_error: str | Verdict,
        record_size: int,
        snaplen: int,
        deadline: float | None,
        max_deadline: float,
    ) -> None:
        try:
            self._default = Verdict.parse(default)
            self._on_error = Verdict.parse(on_error)
        except ValueError as exc:
            raise SessionError(str(exc)) from None
        for name, v in (("default", self._default), ("on_error", self._on_error)):
            if v == REPEAT:
                raise SessionError(
                    f"{name}='repeat' would send every such packet back through this queue, forever; use 'accept' "
                    "or 'drop' (a handler can repeat the packets it marks: pkt.repeat(mark=...))"
                )
        if deadline is not None and not 0.001 <= deadline <= max_deadline:
            raise SessionError(
                f"deadline {deadline!r} s is out of range; use 0.001..{max_deadline:g} seconds, or None for no deadline"
            )
        self.deadline = deadline
        self.chain = HandlerChain()
        self.chain.on_replace = self._handler_replaced
        self.chain.on_first_failure = self._first_failure
        try:
            self.record = Record(record_size, snaplen)
        except ValueError as exc:
            raise SessionError(str(exc)) from None
        self._watchdog: threading.Thread | None = None
        self._watching = threading.Event()
        self._attached = False
        self._attach_lock = threading.Lock()
        self._opening = False  # a live queue's attach() is binding it and installing its rules
        self._detach_asked = False  # ... and a handler detached the session meanwhile: attach() then detaches

    def _make_dispatcher(self, batch_prefix: bytes, batch: int) -> None:
        self._dispatch = Dispatcher(
            self.chain, self.record.ring, self._default, self._on_error, Packet, Verdict, batch_prefix, batch
        )
        self._dispatch.seqadj = TcpAdjust()
        self._dispatch.rewrites = self.record.note_rewrite  # what rewritten packets went on with (s.follow)
        self._dispatch.flows = FlowTable()
        self._dispatch.flows.on_decide = self._decide_flow
        self._dispatch.seqadj_headroom = self._dispatch.seqadj.headroom
        self.source.bind(self)
        self.held = HeldPackets(self, self._dispatch.give_held)
        self._dispatch.on_hold = self.held.add
        self._dispatch.on_hold_failure = self._first_hold_failure
        self._dispatch.on_unfixed = self._first_unfixed
        self._dispatch.sender = self._sender = self.source.make_sender(self)

    def why_not_sending(self) -> str | None:
        """Why a packet cannot be sent now (None: it can)."""
        if self.source.running:  # from the start of reading (a handler may run before attach() returns)
            return None
        return self.source.why_not_sending(self)

    def send(self, data: Any, *, fix: bool = True) -> Packet:
        """Send a packet you built (bytes from the IP header on, or a scapy ``IP()/...`` packet) from the session.

        Live, it leaves the session's namespace like a local program's packet
        (routing, OUTPUT, POSTROUTING; its source address as written); in a
        replay it goes to the output capture.  ``fix`` recomputes its lengths
        and checksums.  It is recorded with verdict "sent" and never queued to
        this or another pktlab session.  Returns it as a :class:`~pktlab.Packet`;
        what cannot leave raises :class:`~pktlab.errors.SendError` with the cause.
        """
        pkt = Packet(None, outgoing(data, fix=fix))
        self._sender.send(pkt)
        return pkt

    def track_flows(self) -> None:
        """Start counting every packet in its flow now (otherwise the first ``pkt.flow`` or ``s.flows`` starts it)."""
        self._dispatch.flows.enabled = True

    @property
    def flows(self) -> Any:
        """Every flow in the record as a pandas DataFrame, one row per flow (``flow`` as in ``s.df``).

        Read from the record after the fact, so complete from the first packet it holds: ``a`` is the
        client (it sent the SYN, else the first packet), packets and bytes per direction, the verdicts
        (``accepted``, ``dropped``), retransmissions, the TCP state the flags say; ``flow_verdict`` and
        ``state`` (a handler's ``pkt.flow.state``) from flow tracking, where a handler started it.
        """
        import pandas as pd

        rows = flow_summary(self.record.entries())
        tracked = self._dispatch.flows
        numbers = {name: n for n, name in PROTO_NAMES.items()}
        for r in rows:
            key = FlowTable.key(numbers.get(r["proto"], -1), (r["a"], r["aport"]), (r["b"], r["bport"]))
            f = tracked.flows.get(key)
            r["flow_verdict"] = f.verdict if f is not None else None
            r["state"] = dict(f.state) if f is not None else {}
        df = pd.DataFrame(rows, columns=[*FLOW_COLUMNS, "flow_verdict", "state"])
        for c in ("first", "last"):
            df[c] = pd.to_datetime(df[c], unit="s")
        return df

    @property
    def is_replay(self) -> bool:
        """True when the packets come from a capture file, not a kernel queue."""
        return self.source.kind == "capture"

    @property
    def rule(self) -> _rules.QueueRule | None:
        """The queue rule (None for a replay)."""
        return self.source.rule

    @rule.setter
    def rule(self, rule: _rules.QueueRule) -> None:  # a link's delay line places its rule last, before attach
        self.source.rule = rule

    @property
    def rules(self) -> _rules.RuleSet | None:
        """The session's rules in its namespace (None for a replay)."""
        return self.source.rules

    def _verdicts_changed(self) -> None:
        self._dispatch.set_verdicts(self._default, self._on_error)

    # -- lifecycle -------------------------------------------------------------
    @property
    def attached(self) -> bool:
        return self._attached

    @property
    def lab(self) -> Any:
        """The lab this session was attached in (None for a namespace given by name)."""
        return self._lab

    def attach(self) -> Session:
        """Bind the queue and install the rule (a replay: start reading the capture); returns self."""
        if self._attached:
            raise SessionError(f"session {self.name} is already attached; detach() it first")
        self._dispatch.flows.revoke()  # flow verdicts of an earlier attachment (or run) do not carry over
        # attached before the source opens: its handlers may run (and detach the session: stop after N packets)
        # as soon as packets come, before open() returns; a replay's thread starts last and may read to the end
        self._attached = True
        self._start_watchdog()
        atexit.register(self.detach)
        with self._attach_lock:
            self._opening = not self.is_replay  # a queue's rules go in after its reader started: a handler's
        try:  # detach waits until they are all in
            self.source.open(self)
        except BaseException:
            self._attached = False
            self.stop_watchdog()
            atexit.unregister(self.detach)
            raise
        finally:
            with self._attach_lock:
                self._opening = False
                asked, self._detach_asked = self._detach_asked, False
        if asked:
            self.detach()
        return self

    # -- hung handlers -----------------------------------------------------------------
    def _start_watchdog(self) -> None:
        if self.deadline is None:
            return
        self._dispatch.watch(True)
        self._watching.set()
        self._watchdog = threading.Thread(target=self._watch, name=f"pktlab-watchdog-{self.queue}", daemon=True)
        self._watchdog.start()

    def stop_watchdog(self) -> None:
        """Stop watching for hung handlers (detach's step)."""
        self._watching.clear()
        self._dispatch.watch(False)  # wakes it: no wait for its period
        if self._watchdog is not None:
            self._watchdog.join(5)
            self._watchdog = None

    def _watch(self) -> None:
        """Every deadline/4: if a handler call is past the deadline, verdict its packet and read on without it."""
        assert self.deadline is not None
        deadline_ns = int(self.deadline * 1e9)
        period_ns = int(max(self.deadline / 4, 0.002) * 1e9)
        stuck: set[str] = set()
        said: dict[str, float] = {}  # at most one note per handler per 10 s: a busy kernel can make many
        while self._watching.is_set():
            try:
                # sleeps without the GIL; comes back when a call is overdue, or once a second
                if self._dispatch.wait_overdue(deadline_ns, period_ns, 1_000_000_000) == 0:
                    break
                h = self._dispatch.rescue(deadline_ns)
                if h is not None:
                    self.chain.mark_stuck(h)
                    self.source.replace_reader()
                    stuck.add(h.name)
                    if time.monotonic() - said.get(h.name, -1e9) > 10:
                        said[h.name] = time.monotonic()
                        self.say(
                            f"handler {h.name!r} did not return within {self.deadline * 1000:.0f} ms: its packet got "
                            f"the error verdict ({self.on_error}) and it is skipped until it returns "
                            f"({h.rescued} packet(s) so far; see status())"
                        )
                now_stuck = {x.name for x in self.chain.stuck}
                for name in sorted(stuck - now_stuck):
                    if said.get(name, 0) >= time.monotonic() - 10:
                        self.say(f"handler {name!r} returned and is back in the chain")
                stuck = now_stuck
            except Exception as exc:  # pktlab's own failure; keep watching
                self.source.note_internal_error(f"watchdog: {type(exc).__name__}: {exc}")

    say_failures = True  # a handler's first failure is said in the cell's output (the grader turns it off)

    def _first_failure(self, h: Handler, failure: HandlerFailure) -> None:
        if self.say_failures:
            self.say(
                f"handler {h.name!r} failed ({failure.error}); its packet got the error verdict ({self.on_error}); "
                "further failures are counted in status() and kept with their tracebacks in s.errors"
            )

    def _first_hold_failure(self, error: str) -> None:
        if self.say_failures:
            self.say(
                f"the hold predicate failed ({error}); the packet went on through the chain, not held, as will "
                "every packet it fails on (counted in status())"
            )

    def _first_unfixed(self, why: str) -> None:
        self.say(
            f"a rewritten packet was sent as written, its lengths and checksums not fixed, because {why}; a "
            "receiver drops such a packet, unless a malformed packet is what the handler meant to send (counted in "
            "status())"
        )

    def say(self, message: str) -> None:
        """A note for the person at the notebook (stderr shows in the running cell's output)."""
        print(f"pktlab [{self.name}]: {message}", file=sys.stderr, flush=True)

    @property
    def stuck(self) -> list[Handler]:
        """Handlers skipped because a call of theirs is past the deadline and has not returned."""
        return self.chain.stuck

    @property
    def monitor_if_started(self) -> Any:
        """The live statistics thread, if a dashboard or the controls started one (else None)."""
        return self._monitor

    def detach(self, drain: float = 2.0) -> None:
        """Remove the rule, give every queued and held packet its verdict, unbind. Safe to call twice.

        Every step runs even when an earlier one fails (a rule iptables will not
        delete does not keep held packets from their verdict); the failures are
        raised together at the end as a :class:`~pktlab.errors.TeardownError`.

        A handler may call it (stop after some packets): the packet it is on gets the handler's verdict, and
        the reading thread unbinds the queue once the handler returns.
        """
        with self._attach_lock:
            if self._opening:  # a handler, while attach() installs the rules: attach() detaches when they are in
                self._detach_asked = True
                return
        if not self._attached:
            return
        self._attached = False
        atexit.unregister(self.detach)
        self._dispatch.hold_fn = None
        td = Teardown(f"session {self.name}")
        self.source.close(self, td, drain)
        td.finish("run `pktlab doctor --clean` to remove what is left")

    # -- flow verdicts --------------------------------------------------------------
    def _decide_flow(self, f: Any, verdict: str) -> int:
        """A handler gave ``f`` a flow verdict: live, the kernel decides the rest; the mark bit the verdict carries."""
        return self.source.decide_flow(self, f, verdict)

    @property
    def flows_offloaded(self) -> list[KernelFlow]:
        """The connections a handler gave a flow verdict (``pkt.accept(flow=True)``), with their packet counts.

        Live, the kernel's list (conntrack: packets of both directions since the
        connection began); a replay, the flows pktlab decided, with its counts.
        """
        kernel = self.source.flows_offloaded()
        if kernel is not None:
            return kernel
        return [KernelFlow(f.verdict, f.proto, f.a[0], f.a[1], f.b[0], f.b[1], sum(f.packets), sum(f.bytes))
                for f in self._dispatch.flows.decided_flows()]  # fmt: skip

    @property
    def flows_decided(self) -> int:
        """How many connections have a flow verdict now (cheap: pktlab's own count)."""
        return self._dispatch.flows.decided

    def revoke_flows(self, handler: str | None = None) -> int:
        """Take flow verdicts back (all, or those ``handler`` gave): their packets meet the handlers again.

        Re-running a handler's cell (replacing the handler) revokes the flow verdicts it gave.
        Returns how many flows pktlab had decided.
        """
        gone = self._dispatch.flows.revoke(handler)
        self.source.revoke_flows(None if handler is None else {(f.proto, f.a[0], f.a[1], f.b[0], f.b[1]) for f in gone})
        return len(gone)

    def _handler_replaced(self, name: str) -> None:
        if self._dispatch.flows.decided:
            self.revoke_flows(handler=name)
        self.source.handler_replaced(self)

    # -- offloaded verdicts --------------------------------------------------------
    def offload(self, expr: str, verdict: str | Verdict = "drop", *, mark: int | None = None) -> Offload:
        """Let the kernel give ``verdict`` to packets matching ``expr`` (tcpdump syntax) by itself.

        The rule goes in front of the session's queue rule, so matching packets
        never reach the queue; offloading the same expression again replaces it
        atomically.  ``verdict`` is ``"accept"``, ``"drop"`` or ``"mark"``
        (``mark=N`` sets the mark and lets the packet go on to the queue);
        ``accept`` with ``mark=N`` marks and accepts.
        """
        return self.source.offload(self, expr, verdict, mark)

    def remove_offload(self, expr: str) -> None:
        """Take an offloaded verdict away: its packets go to the queue again."""
        self.source.remove_offload(self, expr)

    @property
    def offloads(self) -> list[Offload]:
        """The verdicts offloaded to the kernel (a replay: none)."""
        return self.source.offloads

    def offload_hits(self, expr: str) -> int:
        """Packets the kernel decided for this offload so far (its rule's counter)."""
        return self.source.offload_hits(self, expr)

    def handler_family(self) -> str:
        """The address family of the session's packets (its queue rule's; a replay: both)."""
        rule = self.source.rule
        return rule.family if rule is not None else "both"

    def kernel_rule_counts(self) -> list[Any] | None:
        """The installed kernel handlers' rules with the kernel's counters (None: a replay, or detached)."""
        return self.source.kernel_rule_counts(self)

    def controls(self, period: float = 0.5) -> Any:
        """Pause, step, inspect, toggle handlers, set verdicts (see :mod:`pktlab.notebook.controls`)."""
        return hook("controls")(self, period)

    # -- holding and stepping ------------------------------------------------------------
    def hold(self, predicate: Callable[[Packet], Any] | None) -> HeldPackets:
        """Keep the packets ``predicate`` picks for the notebook to decide; ``hold(None)`` stops picking.

        Returns the live list of held packets (``held[0].accept()``); see :mod:`pktlab.pipeline.holding`.
        Packets already held stay held until given a verdict or released.
        """
        if predicate is not None:
            check_function(predicate, "the hold predicate", SessionError)
        self._dispatch.hold_fn = predicate
        return self.held

    def step(self, timeout: float = 5.0) -> bool:
        """While paused: let exactly one waiting packet through the chain; True if one came.

        The packet is read from the kernel queue (or the capture's next one) and handled
        like any other (or held, if a hold predicate picks it); the rest keep waiting.
        """
        self._not_in_a_handler("step()", "the packet it is on waits for it; call step() from the notebook")
        if not self.paused:
            raise SessionError("step() lets one packet through a paused session; pause() it first")
        if not self._attached:
            raise SessionError(f"session {self.name} is not attached; attach() it (paused) first, then step()")
        return self.source.step(timeout)

    def step_and_hold(self, timeout: float = 5.0) -> HeldPacket | None:
        """While paused: let one packet through the chain and hold it for the notebook, whatever the predicate.

        Returns the held packet (``.packet``, ``.accept()``, ``.drop()``), or None if none came.
        """
        previous = self._dispatch.hold_fn
        before = len(self.held)
        self._dispatch.hold_fn = _hold_all
        try:
            came = self.step(timeout)
        finally:
            self._dispatch.hold_fn = previous
        if not came or len(self.held) <= before:
            return None
        return self.held[len(self.held) - 1]

    def out_of_path(self) -> Any:
        """Take the session's rules out for a while (packets flow past the queue), then put them back.

        A context manager; the reader stays bound and the handlers stay; offloads come back too.
        """
        return self.source.out_of_path(self)

    def pause(self) -> None:
        """Stop reading: packets wait in the kernel queue (``status()`` shows how many) until :meth:`resume`.

        The kernel holds at most ``max_len`` packets; beyond that it drops new
        ones (``queue_dropped`` in ``status()``).
        """
        self.source.pause()

    def resume(self) -> None:
        """Read again; the packets that waited go through the chain first, in order."""
        self.source.resume()

    @property
    def paused(self) -> bool:
        return self.source.paused

    def __enter__(self) -> Session:
        return self

    def __exit__(self, *exc: object) -> None:
        self.detach()

    def kernel_counters(self) -> QueueCounters | None:
        """The kernel's counters of the queue (None when not bound, and for a replay)."""
        return self.source.counters()

    @property
    def dispatcher(self) -> Dispatcher:
        """The compiled dispatcher the packets go through (its counters: reused, writes, internal_errors)."""
        return self._dispatch

    def rate(self, window: float = 1.0) -> float:
        """Packets per second over the last ``window`` seconds."""
        if isinstance(window, bool) or not isinstance(window, int | float) or not window > 0:
            raise SessionError(f"rate() takes a window of seconds above 0, not {brief(window)}")
        return self.record.ring.count_since(time.time() - window) / window

    def status(self) -> Status:
        """A snapshot: counters from pktlab and, live, from the kernel (see :class:`Status`)."""
        fields: dict[str, Any] = {
            "name": self.name,
            "attached": self._attached,
            "paused": self.paused,
            "handlers": [(h.name, h.enabled, h.errors) for h in self.chain],
            "stuck": [(h.name, time.time() - (h.stuck_since or time.time()), h.rescued) for h in self.chain.stuck],
            "rescued": self._dispatch.rescued,
            "stuck_threads": len(self.source.stuck_threads),
            "counters": self.record.counters(),
            "rate_pps": self.rate(),
            "last_errors": self.errors[-3:],
            "errors_left_out": self.chain.left_out,
            "filter": self.filter.expr if self.filter is not None else None,
            "decided_flows": self._dispatch.flows.decided,
            "held": len(self.held),
            "hold_failures": self._dispatch.hold_failures,
            "last_hold_failure": self._dispatch.last_hold_failure,
            "unfixed_rewrites": self._dispatch.unfixed,
            "last_unfixed_rewrite": self._dispatch.last_unfixed,
            "tcp_adjusted": len(self._dispatch.seqadj.adjuster),
            "kept_back": self._dispatch.reordered,
            "flows": len(self._dispatch.flows) if self._dispatch.flows.enabled else None,
        }
        fields.update(self.source.status_fields(self))
        fields["internal_errors"] += self._dispatch.internal_errors
        fields["last_internal_error"] = self._dispatch.last_internal_error or fields["last_internal_error"]
        return Status(**fields)

    # -- replaying a capture ------------------------------------------------------------
    def run(self, *, pace: float | None = None, limit: int | None = None, stop_on_error: bool = False) -> Status:
        """Replay: pass the capture's packets through the chain, from the first, and wait for the last.

        The record and the outputs start afresh.  ``pace=1.0`` replays in real
        time (the gaps between capture timestamps), ``pace=2.0`` twice as fast,
        ``None`` as fast as possible; ``limit`` reads only the first packets;
        ``stop_on_error`` ends the run at the first packet a handler failed on.
        Interrupting the cell stops the run between two packets.
        """
        return self.source.run(self, pace, limit, stop_on_error)

    def configure(self, *, pace: float | None = None, limit: int | None = None, stop_on_error: bool = False) -> None:
        """Replay: how the next ``attach()`` (or ``run()``) reads the capture."""
        self.source.configure(self, pace, limit, stop_on_error)

    def wait(self, timeout: float | None = None) -> bool:
        """Replay: wait until the capture has been read to its end; True if it was within ``timeout``."""
        self._not_in_a_handler(
            "wait()", "the capture is read to its end only after it returns; to end the run early, s.detach() there"
        )
        return self.source.wait(self, timeout)

    def _not_in_a_handler(self, what: str, why: str) -> None:
        """Refuse a call that waits for this session's reading thread, made on that thread (in a handler)."""
        if self.source.reads_here:
            raise SessionError(f"{what} in a handler of {self.name} would wait for that handler itself: {why}")

    @property
    def packets(self) -> CapturePackets:
        """Replay: the capture's packets (``time``, ``data``, ``link``), read from the file when asked."""
        return self.source.packets(self)

    @property
    def outputs(self) -> list[tuple[float, bytes, str]]:
        """Replay: what left "the kernel" in the last run (time, bytes as rewritten, link), in order."""
        return self.source.outputs(self)

    def write_pcap(self, path: str | os.PathLike[str], *, dropped: bool = False) -> int:
        """Replay: write what would have left the kernel (accepted packets, as rewritten) to a pcap.

        ``dropped=True`` writes the capture's packets the chain dropped instead.
        Returns how many packets were written.
        """
        return self.source.write_pcap(self, path, dropped)

    def __repr__(self) -> str:
        return self.source.describe(self)

def _bpf_length(m: re.Match[str]) -> str:
    return f"--bytecode <{m.group(1) or m.group(2)} BPF instructions>"


def _hold_all(pkt: Packet) -> bool:
    return True


def _resolve_netns(target: Any) -> tuple[Any, str | None]:
    """(the lab, the namespace's name) of where a session attaches."""
    if target is None:
        return None, None
    if isinstance(target, str):
        return None, target
    where = getattr(target, "netns_and_lab", None)
    if where is None:
        raise SessionError(
            f"netns must be a lab host (lab.server), a Lab or a namespace name, not {type(target).__name__}"
        )
    name, lab = where()
    return lab, name


def attach(queue: int, **options: Any) -> Session:
    """Bind NFQUEUE ``queue`` and install its rule; see :class:`Session` for the options."""
    known = [p for p in inspect.signature(Session.__init__).parameters if p not in ("self", "queue")]
    unknown = sorted(set(options) - set(known))
    if unknown:
        raise SessionError(f"attach() has no option {', '.join(unknown)}; use {', '.join(known)}")
    return Session(queue, **options).attach()
