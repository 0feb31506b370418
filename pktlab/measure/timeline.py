"""Follow packets hook by hook through lab hosts, with nftables tracing.

For each traced host pktlab adds, for the time of the trace:

* iptables ``raw`` rules (PREROUTING and OUTPUT, IPv4 and IPv6) that run the
  tcpdump filter as BPF (``-m bpf``) and set the packet's trace flag
  (``-j TRACE``, which iptables-nft turns into ``meta nftrace set 1``);
* an nftables table ``pktlab_trace_<pid>_<n>`` with an empty base chain on
  each of the five hooks, so every hook a traced packet crosses shows up even
  where no other rule is;
* an ``nft monitor trace`` process reading the kernel's trace events.

Events are grouped per packet (addresses, IP id or flow label, ports, ICMP id
and sequence; a trace id of the kernel per host) and joined with pktlab's own
record when a rule sent the packet to a queue a session reads: the handler, its
verdict and its time appear in the timeline.  Trace events carry no kernel
timestamp; pktlab stamps each as its monitor delivers it (a few µs to tens of
µs after the fact), which is the time resolution of the timeline.
"""

from __future__ import annotations

import atexit
import itertools
import os
import re
import signal
import subprocess
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from html import escape
from typing import TYPE_CHECKING, Any

from ..errors import LabError, MissingToolError, RuleError
from ..kernel import bpf as _bpf
from ..kernel import netns as _netns
from ..kernel import rules as _rules

if TYPE_CHECKING:
    from ..lab.network import Host, Lab
    from ..pipeline.session import Session

HOOK_ORDER = {"PREROUTING": 0, "INPUT": 1, "FORWARD": 1, "OUTPUT": 0, "POSTROUTING": 2}
_SEQ = itertools.count(1)
_LINE = re.compile(r"^trace id (\w+) (\w+) (\S+) (\S+) (packet: |rule |policy |verdict )(.*)$")
_VERDICT = re.compile(r"\s*\(verdict (\w+)[^)]*\)")
_TTL = re.compile(r"\b(?:ip ttl|ip6 hoplimit) (\d+)")
_QUEUE = re.compile(r"queue num (\d+)|NFQUEUE --queue-num (\d+)")
_KEY_PARTS = (
    re.compile(r"\bip6? saddr (\S+)"),
    re.compile(r"\bip6? daddr (\S+)"),
    re.compile(r"\bip id (\d+)"),
    re.compile(r"\bip6 flowlabel (\d+)"),
    re.compile(r"\b(?:ip protocol|ip6 nexthdr) (\S+)"),
    re.compile(r"\b(?:icmp|icmpv6) id (\d+)"),
    re.compile(r"\b(?:icmp|icmpv6) sequence (\d+)"),
    re.compile(r"\b(?:tcp|udp|th) sport (\d+)"),
    re.compile(r"\b(?:tcp|udp|th) dport (\d+)"),
    re.compile(r"\btcp sequence (\d+)"),
)
_TRACE_MEMBER = 1 << (9 - 1)  # NFNLGRP_NFTRACE in a netlink socket's group mask


@dataclass
class TraceEvent:
    """One trace event as the kernel reported it, stamped when pktlab read it."""

    host: str
    trace_id: str
    t_ns: int  # time.time_ns() at reading
    family: str
    table: str
    chain: str
    hook: str
    kind: str  # packet, rule, policy, verdict, pktlab
    text: str
    verdict: str | None = None
    own: bool = False  # from pktlab's tracing table (hook markers)


@dataclass
class TracedPacket:
    """The events of one packet on every traced host it crossed, in order."""

    key: tuple[str, ...]
    passes: list[tuple[str, list[TraceEvent]]] = field(default_factory=list)  # (host, events)

    @property
    def start_ns(self) -> int:
        return min(evs[0].t_ns for _, evs in self.passes)

    def summary(self) -> str:
        first = next(e for _, evs in self.passes for e in evs if e.kind == "packet")
        m = re.search(r"(ip6? saddr \S+ ip6? daddr \S+)", first.text)
        what = re.search(r"\b(icmpv?6? type \S+|tcp flags \S+|udp dport \d+|tcp dport \d+)", first.text)
        return " ".join(x.group(1) for x in (m, what) if x) or first.text[:60]

    def hooks(self, host: str) -> list[str]:
        """The hooks this packet crossed on ``host``, in order."""
        out: list[str] = []
        for h, evs in self.passes:
            if h != host:
                continue
            for e in evs:
                if e.kind == "packet" and e.own and (not out or out[-1] != e.hook):
                    out.append(e.hook)
        return out


class Trace:
    """The result of a trace: packets with their timelines; ``df``, ``text()``, ``plot()``."""

    def __init__(self, packets: list[TracedPacket], filter_expr: str, hosts: list[str]) -> None:
        self.packets = packets
        self.filter = filter_expr
        self.hosts = hosts

    def __len__(self) -> int:
        return len(self.packets)

    def rows(self) -> list[dict[str, Any]]:
        out = []
        for n, p in enumerate(self.packets):
            t0 = p.start_ns
            for host, evs in p.passes:
                prev = None
                for e in evs:
                    out.append(
                        {
                            "packet": n,
                            "host": host,
                            "hook": e.hook,
                            "table": f"{e.family} {e.table}",
                            "chain": e.chain,
                            "kind": e.kind,
                            "event": e.text,
                            "verdict": e.verdict,
                            "t_us": (e.t_ns - t0) / 1e3,
                            "dt_us": (e.t_ns - prev) / 1e3 if prev is not None else 0.0,
                            "pktlab_table": e.own,
                        }
                    )
                    prev = e.t_ns
        return out

    @property
    def df(self) -> Any:
        import pandas as pd

        cols = ["packet", "host", "hook", "table", "chain", "kind", "event", "verdict", "t_us", "dt_us", "pktlab_table"]
        return pd.DataFrame(self.rows(), columns=cols)

    def text(self) -> str:
        """An indented timeline per packet: each host it crossed, each hook, each rule met and its verdict.

        Times are µs since the packet entered that host, as pktlab read the events.
        """
        lines = []
        for n, p in enumerate(self.packets):
            lines.append(f"packet {n}: {p.summary()}")
            for host, evs in p.passes:
                lines.append(f"  {host}")
                t0 = evs[0].t_ns
                hook = None
                for e in evs:
                    t = f"{(e.t_ns - t0) / 1e3:+9.1f} µs"
                    if e.hook != hook:
                        hook = e.hook
                        lines.append(f"    {t}  {hook}")
                    if e.kind == "packet" or (e.own and e.kind != "rule"):
                        continue  # pktlab's own hook markers: the hook line above says it
                    if e.kind == "pktlab":
                        lines.append(f"    {t}    pktlab {e.text} -> {e.verdict}")
                    elif e.kind == "rule":
                        v = f" -> {e.verdict}" if e.verdict else ""
                        lines.append(f"    {t}    {e.family} {e.table} {e.chain}: rule {e.text}{v}")
                    else:
                        lines.append(f"    {t}    {e.family} {e.table} {e.chain}: {e.kind} {e.verdict}")
        if not self.packets:
            lines.append(f"no packet matching {self.filter or '(everything)'} crossed {', '.join(self.hosts)}")
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.text()

    def _repr_html_(self) -> str:
        return f"<pre>{escape(self.text())}</pre>"

    def plot(self) -> Any:
        """A bokeh chart of each packet's path: one row per host and hook, one colour per packet, hover shows the event.

        The x axis is the order of the events along the packet's path, not time:
        the times pktlab has are when it read each host's events, which do not
        line up across hosts (kernel timestamps are what a time axis needs).
        """
        from bokeh.models import ColumnDataSource, HoverTool
        from bokeh.palettes import Category10_10
        from bokeh.plotting import figure

        rows = [r for r in self.rows() if r["kind"] != "packet" or r["pktlab_table"]]
        cats: list[str] = []
        for r in rows:
            c = f"{r['host']} {r['hook']}"
            if c not in cats:
                cats.append(c)
        fig = figure(
            y_range=list(reversed(cats)),
            height=max(200, 28 * len(cats) + 80),
            width=800,
            x_axis_label="step along the packet's path (order of events, not time)",
            title=f"trace of {self.filter or 'every packet'}",
            tools="pan,wheel_zoom,box_zoom,reset",
        )
        for n in sorted({r["packet"] for r in rows}):
            mine = [r for r in rows if r["packet"] == n]
            src = ColumnDataSource(
                {
                    "t": list(range(len(mine))),
                    "read_us": [r["t_us"] for r in mine],
                    "y": [f"{r['host']} {r['hook']}" for r in mine],
                    "event": [f"{r['table']} {r['chain']}: {r['kind']} {r['event'][:80]}" for r in mine],
                    "verdict": [r["verdict"] or "" for r in mine],
                }
            )
            colour = Category10_10[n % 10]
            fig.line("t", "y", source=src, color=colour, alpha=0.5, legend_label=f"packet {n}")
            fig.scatter("t", "y", source=src, color=colour, size=8)
        fig.add_tools(HoverTool(tooltips=[("step", "@t"), ("event", "@event"), ("verdict", "@verdict")]))
        fig.legend.click_policy = "hide"
        return fig


def _packet_key(text: str) -> tuple[str, ...]:
    out = []
    for rx in _KEY_PARTS:
        m = rx.search(text)
        out.append(m.group(1) if m else "")
    return tuple(out)


class _HostTrace:
    """Tracing on one host: rules, table, monitor."""

    def __init__(self, host: Host, program: _bpf.BpfProgram, tag: str, table: str) -> None:
        self.host = host
        self.program = program
        self.tag = tag
        self.table = table
        self.proc: subprocess.Popen[str] | None = None
        self.thread: threading.Thread | None = None
        self.events: list[TraceEvent] = []
        self.ruleset = _rules.RuleSet(tag, host.netns)

    def start(self, on_event: Any) -> None:
        ns = self.host.netns
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
        self.proc = subprocess.Popen(
            _netns.argv_in(ns, ["stdbuf", "-oL", "nft", "monitor", "trace"]),
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
            bufsize=1,
        )
        self.thread = threading.Thread(target=self._read, args=(on_event,), name=f"pktlab-trace-{ns}", daemon=True)
        self.thread.start()
        self._wait_subscribed()
        # the flag is set last, so no packet is flagged before the monitor listens
        match = self.program.match_args() if self.program.instructions else []
        self.ruleset.install(
            [_rules.TargetRule(hook, tuple(match), ("-j", "TRACE")) for hook in ("PREROUTING", "OUTPUT")]
        )

    def _wait_subscribed(self) -> None:
        """Until the monitor's netlink socket has joined the trace group (else the first events are missed)."""
        assert self.proc is not None
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise MissingToolError(f"nft monitor trace exited at once in {self.host.netns}; is nftables installed?")
            try:
                with open(f"/proc/{self.proc.pid}/net/netlink") as f:
                    for line in f.readlines()[1:]:
                        parts = line.split()
                        if parts[1] == "12" and int(parts[2]) == self.proc.pid and int(parts[3], 16) & _TRACE_MEMBER:
                            return
            except (OSError, IndexError, ValueError):
                pass
            time.sleep(0.01)
        raise RuleError(f"nft monitor trace did not start listening in {self.host.netns} within 5 s")

    def _read(self, on_event: Any) -> None:
        assert self.proc is not None and self.proc.stdout is not None
        for line in self.proc.stdout:
            t = time.time_ns()
            m = _LINE.match(line.rstrip())
            if not m:
                continue
            tid, family, table, chain, kind, rest = m.groups()
            kind = kind.rstrip(": ")
            verdict = None
            if kind == "rule":
                v = _VERDICT.search(rest)
                verdict = v.group(1) if v else None
                rest = " ".join(_VERDICT.sub("", rest).split())
            elif kind in ("policy", "verdict"):
                verdict = rest.split()[0] if rest.split() else None
                rest = ""
            ev = TraceEvent(
                self.host.role, tid, t, family, table, chain, chain, kind, rest, verdict, table == self.table
            )
            self.events.append(ev)
            on_event(self, ev)

    def stop(self) -> None:
        try:
            self.ruleset.remove()
        except (RuleError, MissingToolError, LabError):
            pass
        if self.proc is not None and self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGTERM)  # our own child, by PID
            try:
                self.proc.wait(2)
            except subprocess.TimeoutExpired:
                os.kill(self.proc.pid, signal.SIGKILL)
                self.proc.wait(2)
        if self.thread is not None:
            self.thread.join(2)
        if os.path.exists(os.path.join(_netns.NETNS_DIR, self.host.netns)):
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
        if not isinstance(count, int) or count < 1:
            raise ValueError(f"count must be a positive number of packets, not {count!r}")
        if not 0 < timeout <= 600:
            raise ValueError(f"timeout {timeout!r} s is out of range; use 0..600 seconds")
        self.hosts = host_list
        self.filter = filter
        self.count = count
        self.timeout = timeout
        self.program = _bpf.compile(filter)
        self.sessions = list(sessions) or (lab.sessions if lab is not None else [])
        n = next(_SEQ)
        tag = _rules.make_tag(f"trace-{n}")
        self._hosts = [_HostTrace(h, self.program, tag, f"pktlab_trace_{os.getpid()}_{n}") for h in host_list]
        self._keys: dict[tuple[str, ...], float] = {}
        self._tid_key: dict[tuple[str, str], tuple[str, ...]] = {}
        self._lock = threading.Lock()
        self._enough = threading.Event()
        self._t_start = 0.0
        self._result: Trace | None = None
        self.running = False

    def _on_event(self, ht: _HostTrace, ev: TraceEvent) -> None:
        if ev.kind != "packet":
            return
        with self._lock:
            k = (ht.host.role, ev.trace_id)
            if k in self._tid_key:
                return
            key = _packet_key(ev.text)
            self._tid_key[k] = key
            if key not in self._keys:
                self._keys[key] = time.monotonic()
                if len(self._keys) >= self.count:
                    self._enough.set()

    def start(self) -> Tracer:
        if self.running:
            return self
        started = []
        try:
            for ht in self._hosts:
                ht.start(self._on_event)
                started.append(ht)
        except BaseException:
            for ht in started:
                ht.stop()
            raise
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

    def _build(self) -> Trace:
        keys = sorted(self._keys, key=self._keys.__getitem__)[: self.count]
        packets = {k: TracedPacket(k) for k in keys}
        for ht in self._hosts:
            by_tid: dict[str, list[TraceEvent]] = {}
            for ev in ht.events:
                by_tid.setdefault(ev.trace_id, []).append(ev)
            for tid, evs in by_tid.items():
                key = self._tid_key.get((ht.host.role, tid))
                if key not in packets:
                    continue
                _fill_hooks(evs)
                packets[key].passes.append((ht.host.role, self._join_queue(ht.host, evs)))
        out = [p for p in packets.values() if p.passes]
        for p in out:
            p.passes.sort(key=_hop_order)
        out.sort(key=lambda p: p.start_ns)
        return Trace(out, self.filter, [h.role for h in self.hosts])

    def _join_queue(self, host: Host, evs: list[TraceEvent]) -> list[TraceEvent]:
        """After each 'queue' verdict, pktlab's record of that packet (handler, verdict, time) as an event."""
        out: list[TraceEvent] = []
        first = next((e for e in evs if e.kind == "packet"), None)
        for e in evs:
            out.append(e)
            if e.verdict != "queue" or first is None:
                continue
            q = _QUEUE.search(e.text)
            num = int(q.group(1) or q.group(2)) if q else None
            for s in self.sessions:
                if s.netns != host.netns or (num is not None and s.queue != num):
                    continue
                hit = _find_in_record(s, first.text, e.t_ns)
                if hit is not None:
                    t_ns, text, verdict = hit
                    out.append(
                        TraceEvent(
                            host.role,
                            e.trace_id,
                            max(t_ns, e.t_ns),
                            e.family,
                            "pktlab",
                            "queue",
                            e.hook,
                            "pktlab",
                            text,
                            verdict,
                        )  # fmt: skip
                    )
        return out


def _find_in_record(s: Session, packet_text: str, near_ns: int) -> tuple[int, str, str] | None:
    """The record entry of the packet a trace event describes (by addresses and IP id), if the session has it."""
    from ..packet.model import Packet

    key = _packet_key(packet_text)
    for e in reversed(s.record.tail(4096)):
        if abs(e.time * 1e9 - near_ns) > 5e9:
            continue
        try:
            p = Packet(None, e.head)
            ip = p.ip or p.ipv6
            if ip is None or (ip.src, ip.dst) != key[:2] or (p.ip is not None and str(p.ip.id) != key[2]):
                continue
        except Exception:  # a record head that does not parse (truncated): not this packet
            continue
        what = f"queue {s.queue} ({s.name}): " + (f"handler {e.handler}" if e.handler else "no handler decided")
        what += f", {e.handler_us:.1f} µs in handlers" + (" (rewritten)" if e.modified else "")
        what += f"; {e.error}" if e.error else ""
        return int(e.time * 1e9), what, e.verdict
    return None


def _hop_order(hp: tuple[str, list[TraceEvent]]) -> tuple[int, int, int]:
    """Hosts in the order the packet crossed them: TTL falls at each router; the sender's OUTPUT comes first.

    (Read times are not used: each host's monitor is read on its own schedule.)
    """
    evs = hp[1]
    first = next((e for e in evs if e.kind == "packet"), evs[0])
    m = _TTL.search(first.text)
    ttl = int(m.group(1)) if m else 0
    return (-ttl, 0 if first.hook == "OUTPUT" else 1, evs[0].t_ns)


def _fill_hooks(evs: list[TraceEvent]) -> None:
    """Give events in user chains the hook of the base chain before them."""
    hook = "?"
    for e in evs:
        if e.chain.upper() in HOOK_ORDER:
            hook = e.chain.upper()
        e.hook = hook


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
        tr.result.df
    """
    return Tracer(target, filter, count, timeout).start()
