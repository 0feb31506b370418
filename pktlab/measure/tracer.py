"""Tracing packets through lab hosts: what runs in the kernel while a trace lasts, and how its events are joined.

For each traced host pktlab adds, for the time of the trace:

* iptables ``raw`` rules (PREROUTING and OUTPUT, IPv4 and IPv6) that run the
  tcpdump filter as BPF (``-m bpf``) and set the packet's trace flag
  (``-j TRACE``, which iptables-nft turns into ``meta nftrace set 1``): the
  filter runs in the kernel, and only flagged packets are reported;
* an nftables table ``pktlab_trace_<pid>_<n>`` with an empty base chain on
  each of the five hooks, so every hook a traced packet crosses shows up even
  where no other rule is;
* a netlink socket that receives the kernel's trace messages
  (:class:`~.nft_trace.TraceListener`).

One bpftrace process (:class:`~.kernel_steps.KernelClock`) stamps each trace
message with the kernel's time and adds the steps nftables does not see
(device receive and transmit, socket delivery, the end of the packet and the
kernel's drop reason).  Steps are joined per packet: within a host by trace
id and by the kernel's packet address, across hosts by the packet's identity
(:func:`~.timeline.identity`); a rule that sent the packet to a queue a pktlab
session reads is followed by that session's record of it (handler, verdict,
time in the handlers).

Bounds: the kernel flags at most ``count`` packets per host and direction
(``-m limit`` with a burst of ``count``, at most 10,000), so a flood is not
traced beyond what was asked; the trace lasts at most ``timeout`` seconds;
the tracepoint script remembers at most 65,536 received packets waiting to be
recognised as traced; events the kernel's buffers could not hold (bpftrace's
per-CPU buffers, the trace socket's receive buffer) are counted in
:attr:`Trace.lost`.
"""

from __future__ import annotations

import atexit
import itertools
import os
import re
import threading
import time
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from ..errors import LabError, MissingToolError, RuleError
from ..kernel import bpf as _bpf
from ..kernel import bpftrace as _bpftrace
from ..kernel import netns as _netns
from ..kernel import rules as _rules
from .kernel_steps import KernelClock, KernelStep
from .nft_trace import TraceListener, TraceMessage, rule_texts
from .timeline import COPY_DELIVERED, HOOKS, Step, Trace, TracedPacket, identity

if TYPE_CHECKING:
    from ..lab.network import Host, Lab
    from ..pipeline.session import Session

_SEQ = itertools.count(1)
MAX_COUNT = 10_000  # packets per trace: the kernel's token bucket (xt limit's burst) holds at most this many
_LINK = re.compile(r"^(\d+): ([^:@\s]+)")
_SOCKET_PROTOS = {1: "icmp", 6: "tcp", 17: "udp", 58: "icmpv6", 255: "raw"}


class _HostTrace:
    """Tracing on one host: the hook table, the listener, the flagging rules, and what was heard."""

    def __init__(self, host: Host, program: _bpf.BpfProgram, tag: str, table: str, count: int) -> None:
        self.host = host
        self.program = program
        self.count = count
        self.table = table
        self.ruleset = _rules.RuleSet(tag, host.netns)
        self.listener: TraceListener | None = None
        self.messages: list[tuple[int, TraceMessage, tuple[Any, ...] | None]] = []  # n, message, packet identity
        self.current: dict[int, tuple[Any, ...]] = {}  # trace id -> the packet its last message with a header named
        self.rules: dict[tuple[str, str, str, int], str] = {}
        self.links: dict[int, str] = {}
        self.own: set[tuple[str, str, str, int]] = set()  # pktlab's flagging rules
        self.inode = 0

    def prepare(self, on_message: Any) -> None:
        ns = self.host.netns
        try:
            self.inode = os.stat(os.path.join(_netns.NETNS_DIR, ns)).st_ino
        except FileNotFoundError:
            raise LabError(f"host {self.host.role}'s namespace {ns} is gone; is the lab still up?") from None
        chains = "\n".join(
            f"  chain {hook} {{ type filter hook {hook.lower()} priority {prio}; }}"
            for hook, prio in (
                ("PREROUTING", -299),  # right after raw (-300), where the TRACE rule flags the packet
                ("OUTPUT", -299),
                ("INPUT", -400),
                ("FORWARD", -400),
                ("POSTROUTING", -400),
            )
        )
        proc = _netns.run(ns, ["nft", "-f", "-"], input=f"table inet {self.table} {{\n{chains}\n}}\n", check=False)
        if proc.returncode != 0:
            why = proc.stderr.strip()
            raise RuleError(f"nft could not add the tracing table in {ns}: {why}; is nftables installed?")
        self.listener = TraceListener(ns, lambda n, m: on_message(self, n, m)).start()
        for line in _netns.run(ns, ["ip", "-o", "link", "show"], check=False).stdout.splitlines():
            m = _LINK.match(line)
            if m:
                self.links[int(m.group(1))] = m.group(2)
        self.rules = rule_texts(ns)

    def flag(self) -> None:
        """Install the rules that set the trace flag on matching packets (last: everything listens already).

        Each rule flags at most ``count`` packets (a token bucket of that many
        that refills once a day): under a flood the kernel stops tracing once
        the trace has its packets, whatever pktlab is doing.
        """
        match = self.program.match_args() if self.program.instructions else []
        match += ["-m", "limit", "--limit", "1/day", "--limit-burst", str(self.count)]
        self.ruleset.install(
            [_rules.TargetRule(hook, tuple(match), ("-j", "TRACE")) for hook in ("PREROUTING", "OUTPUT")]
        )
        now = rule_texts(self.host.netns)
        self.own = {k for k in now if k not in self.rules}
        self.rules.update(now)

    def hidden(self, msg: TraceMessage) -> bool:
        """A message of pktlab's own flagging rules, or of a chain that holds nothing else: not the packet's story."""
        here = [k for k in self.rules if k[:3] == (msg.family, msg.table, msg.chain)]
        return bool(here) and all(k in self.own for k in here)

    def unflag(self) -> None:
        try:
            self.ruleset.remove()
        except (RuleError, MissingToolError, LabError):
            pass

    def stop(self) -> None:
        if self.listener is not None:
            self.listener.stop()
        if os.path.exists(os.path.join(_netns.NETNS_DIR, self.host.netns)):
            self.rules.update(rule_texts(self.host.netns))  # rules added while tracing
            _netns.run(self.host.netns, ["nft", "delete", "table", "inet", self.table], check=False)


class Tracer:
    """A running trace on some lab hosts; :meth:`wait` (or leaving ``with``) gives the :class:`Trace`."""

    def __init__(
        self,
        hosts: Lab | Host | Iterable[Host],
        filter: str = "",  # noqa: A002 - tcpdump's word
        count: int = 10,
        timeout: float = 10.0,
        sessions: Iterable[Session] = (),
    ) -> None:
        from ..lab.network import Host, Lab

        if isinstance(hosts, Lab):
            lab: Lab | None = hosts
            host_list = list(hosts.hosts.values())
        elif isinstance(hosts, Host):
            lab, host_list = hosts.lab, [hosts]
        else:
            host_list = list(hosts)
            lab = host_list[0].lab if host_list else None
        if not host_list:
            raise LabError("nothing to trace: give a lab or some of its hosts")
        if not isinstance(count, int) or not 1 <= count <= MAX_COUNT:
            raise ValueError(f"count must be a number of packets from 1 to {MAX_COUNT:,}, not {count!r}")
        if not 0 < timeout <= 600:
            raise ValueError(f"timeout {timeout!r} s is out of range; use 0..600 seconds")
        self.hosts = host_list
        self.filter = filter
        self.count = count
        self.timeout = timeout
        self.program = _bpf.compile(filter)
        self.lab = lab
        self.sessions = list(sessions)
        n = next(_SEQ)
        tag = _rules.make_tag(f"trace-{n}")
        self._hosts = [_HostTrace(h, self.program, tag, f"pktlab_trace_{os.getpid()}_{n}", count) for h in host_list]
        self._clock: KernelClock | None = None
        self._keys: dict[tuple[Any, ...], int] = {}  # packet identity -> order first seen
        self._heads: dict[tuple[Any, ...], bytes] = {}
        self._lock = threading.Lock()
        self._enough = threading.Event()
        self._t_start = 0.0
        self._wall_offset = 0.0
        self._result: Trace | None = None
        self.running = False

    @property
    def messages_kept(self) -> int:
        """The kernel's trace messages the tracer holds for its packets (bounded by ``count``)."""
        return sum(len(ht.messages) for ht in self._hosts)

    def _on_message(self, ht: _HostTrace, n: int, msg: TraceMessage | None) -> None:
        """One trace message of a host, in the order the kernel sent them.

        The kernel's trace id is a hash of the packet's address, its flow hash
        and its input interface: consecutive packets of one flow often reuse
        one buffer and share it.  So a message belongs to the packet named by
        the last message with the packet's header (the first of each chain
        the packet enters) under its trace id.
        """
        if msg is None:
            return
        with self._lock:
            if msg.head:
                ht.current[msg.trace_id] = identity(msg.head)
            key = ht.current.get(msg.trace_id)
            if key is not None and key not in self._keys and len(self._keys) >= self.count:
                return  # a packet beyond the count (another host's rule flagged it first): not kept
            ht.messages.append((n, msg, key))
            if key is not None and key not in self._keys:
                self._keys[key] = len(self._keys)
                self._heads[key] = msg.head
                if len(self._keys) >= self.count:
                    self._enough.set()

    def start(self) -> Tracer:
        if self.running:
            return self
        _bpftrace.require()
        started: list[_HostTrace] = []
        try:
            for ht in self._hosts:
                started.append(ht)
                ht.prepare(self._on_message)
            self._clock = KernelClock(
                [ht.inode for ht in self._hosts], [ht.listener.inode for ht in self._hosts if ht.listener]
            ).start()
            for ht in self._hosts:
                ht.flag()
        except BaseException:
            for ht in started:
                ht.unflag()
            if self._clock is not None:
                self._clock.stop()
            for ht in started:
                ht.stop()
            raise
        self._wall_offset = _bpftrace.wall_minus_monotonic()
        self.running = True
        self._t_start = time.monotonic()
        atexit.register(self.stop)
        return self

    def wait(self, settle: float = 0.3) -> Trace:
        """Until ``count`` packets were seen (plus ``settle`` s for their later hops) or the timeout."""
        if self._result is not None:
            return self._result
        left = self.timeout - (time.monotonic() - self._t_start)
        if self._enough.wait(max(0.0, left)):
            time.sleep(settle)
        return self.stop()

    def stop(self) -> Trace:
        """Stop tracing now, remove the rules and tables, and build the result."""
        if self._result is not None:
            return self._result
        atexit.unregister(self.stop)
        for ht in self._hosts:
            ht.unflag()
        if self._clock is not None:
            time.sleep(0.05)  # bpftrace reads the kernel's per-CPU buffers a moment after each event
            self._clock.stop()
        for ht in self._hosts:
            ht.stop()
        self.running = False
        self._result = self._build()
        return self._result

    def __enter__(self) -> Tracer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.wait() if exc[0] is None else self.stop()

    @property
    def result(self) -> Trace:
        return self.wait()

    def __repr__(self) -> str:
        if self._result is not None:
            return f"<Tracer done: {len(self._result)} packet(s); .result shows them>"
        hosts = ", ".join(h.role for h in self.hosts)
        return (
            f"<Tracer: {len(self._keys)}/{self.count} packet(s) matching {self.filter or '(everything)'} on {hosts}, "
            f"at most {self.timeout:g} s; send traffic, then .wait()>"
        )

    # joining -----------------------------------------------------------------------------------------------

    def _build(self) -> Trace:
        chosen = sorted(self._keys, key=self._keys.__getitem__)[: self.count]
        packets: dict[tuple[Any, ...], TracedPacket] = {}
        lost = self._clock.lost if self._clock is not None else 0
        for ht in self._hosts:
            lost += self._netfilter_steps(ht, chosen, packets) + (ht.listener.overflows if ht.listener else 0)
        if self._clock is not None:
            join_kernel_steps(packets, self._hosts, self._clock.steps)
        out = [p for p in packets.values() if p.steps]
        for p in out:
            p.steps.sort(key=lambda s: s.t_ns)
            self._name_drops(p)
        out.sort(key=lambda p: p.start_ns)
        return Trace(out, self.filter, [h.role for h in self.hosts], lost, self._wall_offset)

    def _netfilter_steps(
        self, ht: _HostTrace, chosen: list[tuple[Any, ...]], packets: dict[tuple[Any, ...], TracedPacket]
    ) -> int:
        """The steps of one host's trace messages; returns how many messages had no kernel time."""
        stamps = self._clock.stamps.get(ht.listener.inode, {}) if self._clock and ht.listener else {}
        wanted = set(chosen)
        hook: dict[tuple[Any, ...], str] = {}
        last_t: dict[tuple[Any, ...], int] = {}
        unstamped = 0
        role = ht.host.role
        for n, msg, key in sorted(ht.messages, key=lambda x: x[0]):
            if key is None or key not in wanted:
                continue
            if key not in packets:
                packets[key] = TracedPacket(self._heads[key])
            t = stamps.get(n)
            exact = t is not None
            if t is None:
                unstamped += 1
                t = last_t.get(key, 0)
            last_t[key] = t
            if msg.chain.upper() in HOOKS and msg.head:  # a base chain's first message: the packet is at its hook
                hook[key] = msg.chain.upper()
            lane = hook.get(key, "?")
            steps = packets[key].steps
            if msg.table == ht.table:  # pktlab's own empty chains: the packet reached this hook
                if msg.head:
                    steps.append(Step(role, t, lane, "hook", f"{lane} hook", exact=exact))
                continue
            if ht.hidden(msg):
                continue
            where = f"{msg.family} {msg.table} {msg.chain}"
            if msg.kind == "rule":
                if msg.handle is None:
                    continue  # the end of a chain's rules: the policy or return message says the rest
                text = ht.rules.get((msg.family, msg.table, msg.chain, msg.handle), f"rule handle {msg.handle}")
                verdict = f"{msg.verdict} {msg.target}" if msg.target else msg.verdict
                steps.append(Step(role, t, lane, "rule", f"{where}: {text}", verdict, f"{msg.family} {msg.table}",
                                  msg.chain, exact=exact))  # fmt: skip
                if msg.verdict == "queue" and msg.queue is not None:
                    steps += self._queue_steps(ht, msg.queue, lane, packets[key].head, t)
            elif msg.kind == "policy":
                steps.append(Step(role, t, lane, "policy", f"{where}: policy", msg.verdict, f"{msg.family} {msg.table}",
                                  msg.chain, exact=exact))  # fmt: skip
            else:
                steps.append(Step(role, t, lane, "return", f"{where}: return", msg.verdict, f"{msg.family} {msg.table}",
                                  msg.chain, exact=exact))  # fmt: skip
        return unstamped

    def _queue_steps(self, ht: _HostTrace, queue: int, lane: str, head: bytes, t_ns: int) -> list[Step]:
        """What the pktlab session reading ``queue`` on this host did with the packet, from its record.

        The step's time is when the session decided the verdict (the record's
        ``decided_ns``, the kernel's clock); the kernel reinjects or frees the
        packet after it.
        """
        sessions = self.sessions + [s for s in (self.lab.sessions if self.lab else []) if s not in self.sessions]
        key = identity(head)
        for s in sessions:
            if s.netns != ht.host.netns or s.queue != queue:
                continue
            for e in reversed(s.record.tail(4096)):
                if not t_ns < e.decided_ns < t_ns + 10**10 or identity(bytes(e.head)) != key:
                    continue
                if e.handler:
                    by = f"handler {e.handler}, {e.handler_us:.1f} µs in handlers"
                elif e.handler_us:
                    by = f"no handler decided, {e.handler_us:.1f} µs in handlers"
                else:
                    by = "no handler ran"
                what = f"pktlab queue {queue} ({s.name}): {by}"
                what += (" (rewritten)" if e.modified else "") + (f"; {e.error}" if e.error else "")
                return [Step(ht.host.role, e.decided_ns, lane, "pktlab", what, e.verdict)]
        return []

    @staticmethod
    def _name_drops(p: TracedPacket) -> None:
        """A drop's lane is where the packet was; a netfilter drop names its rule, a queue's drop its handler."""
        for i, s in enumerate(p.steps):
            if s.kind != "drop":
                continue
            before = [b for b in p.steps[:i] if b.host == s.host]
            if before:
                s.lane = before[-1].lane
            culprit = next((b for b in reversed(before) if b.verdict == "drop" and b.kind in ("rule", "policy",
                                                                                                "pktlab")), None)
            if culprit is not None:
                s.by = culprit.text
                s.text += f" by {culprit.text}"
            s.text += f" (in {s.where})"
            if any(b.kind == "socket" for b in before):
                s.text += "; " + COPY_DELIVERED


def trace(
    target: Lab | Host | Iterable[Host],
    filter: str = "",  # noqa: A002
    count: int = 10,
    timeout: float = 10.0,
) -> Tracer:
    """Start tracing ``count`` packets matching ``filter`` on a lab's hosts; ``.wait()`` returns the :class:`Trace`.

    ::

        with pktlab.trace(lab, "icmp", count=2) as tr:
            lab.ping(1)
        print(tr.result.text())
    """
    return Tracer(target, filter, count, timeout).start()


def join_kernel_steps(packets: dict[tuple[Any, ...], TracedPacket], hosts: Any, steps: Any) -> None:
    """Device, socket and end-of-life steps, joined to packets by identity, else by the kernel's packet address.

    ``hosts``: each traced host (``inode`` of its namespace, ``host.role``, ``links``: ifindex to name);
    ``steps``: the kernel's steps (:class:`KernelStep`) in any order.
    """
    by_inode = {ht.inode: ht for ht in hosts}
    owner: dict[tuple[int, int], tuple[Any, ...]] = {}
    later: dict[tuple[int, int], list[tuple[int, tuple[Any, ...]]]] = {}
    receives: list[KernelStep] = []
    for st in sorted(steps, key=lambda s: s.t_ns):
        ht = by_inode.get(st.netns_inode)
        if ht is None:
            continue
        if st.kind == "receive":
            receives.append(st)
            continue
        where = (st.netns_inode, st.skb)
        key: tuple[Any, ...] | None = identity(st.head) if st.head else None
        if key not in packets:
            key = owner.get(where)
        if key is None or key not in packets:
            continue
        owner[where] = key
        later.setdefault(where, []).append((st.t_ns, key))
        packets[key].steps.append(kernel_step(ht, st))
        if st.kind in ("transmit", "consumed", "drop"):
            # the packet left this host (its buffer goes on to the next namespace) or was freed: a buffer
            # at this address from now on is another packet's (an echo reply reusing the request's memory
            # came back through the client and joined the request, loop run m21b-1)
            del owner[where]
    for st in receives:  # a receive belongs to the packet of the next step at the same address on that host
        ht = by_inode[st.netns_inode]
        t_nxt, nxt = next(((t, k) for t, k in later.get((st.netns_inode, st.skb), []) if t >= st.t_ns), (0, None))
        if nxt is None:
            continue
        # ... unless the packet was elsewhere in between: then the receive is another packet's, left behind
        # at the same buffer (what the script's keying by data buffer prevents; checked, not assumed)
        role = ht.host.role
        if any(o.host != role and st.t_ns < o.t_ns < t_nxt for o in packets[nxt].steps):
            continue
        packets[nxt].steps.append(kernel_step(ht, st))

def kernel_step(ht: Any, st: KernelStep) -> Step:
    """One kernel step as a step of the trace, on the host it happened in."""
    role = ht.host.role
    dev = ht.links.get(st.ifindex or 0, f"ifindex {st.ifindex}")
    if st.kind == "receive":
        return Step(role, st.t_ns, "device in", st.kind, f"received by {dev}")
    if st.kind == "device queue":
        return Step(role, st.t_ns, "device out", st.kind, f"queued to {dev}'s queueing discipline")
    if st.kind == "transmit":
        return Step(role, st.t_ns, "device out", st.kind, f"transmitted by {dev}")
    if st.kind == "socket":
        proto = _SOCKET_PROTOS.get(st.socket_proto or 0, f"protocol {st.socket_proto}")
        return Step(role, st.t_ns, "local", st.kind, f"delivered to a socket ({proto})")
    if st.kind == "consumed":
        return Step(role, st.t_ns, "local", st.kind, "buffer freed after use (consume_skb, not a drop)")
    return Step(role, st.t_ns, "local", "drop", f"dropped: {st.reason}", reason=st.reason, where=st.where)
