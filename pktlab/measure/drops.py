"""Why a packet was dropped: the kernel's own drop reasons, on a lab's hosts, as they happen.

``pktlab.drops(lab, "udp", seconds=5)`` watches the kernel's ``skb:kfree_skb``
tracepoint with bpftrace (Debian's, run as a managed subprocess like the
trace's ``nft monitor``; bpftrace because this kernel has tracepoints with BPF
and BTF but no kprobes, and a bpftrace script needs no compiler at install
time).  For every packet freed as dropped in one of the hosts' namespaces it
reports the kernel's time (ns, turned into wall-clock time), the host, the
reason as the kernel names it (``NO_SOCKET``, ``NETFILTER_DROP``,
``SOCKET_RCVBUFF``, ``IP_NOROUTE``, ``TCP_CSUM`` ...), the kernel function that
dropped it, and the packet (its first 64 bytes from the IP header).  A packet a
pktlab session's verdict dropped (freed in ``nfqnl_reinject``; this kernel
gives such drops no reason, ``NOT_SPECIFIED``) names the session and the
handler, found in the session's record.

The namespaces are filtered in the kernel (bpftrace's predicate on the
device's or socket's namespace); the tcpdump expression is run on the
reported header bytes, in pktlab (bpftrace cannot run a classic BPF
program), so it sees the first 64 bytes of each packet only.  Packets the
kernel frees without a reason are reported as ``NOT_SPECIFIED`` (IPv6
multicast a host does not listen to, for instance): a filter keeps them out.
"""

from __future__ import annotations

import os
import re
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from ..errors import LabError
from ..kernel import bpf as _bpf
from ..kernel import bpftrace as _bpftrace
from ..kernel import netns as _netns
from ..packet.model import summarize
from .nft_trace import drop_counters

HEAD = 64  # bytes of each dropped packet reported, from its IP header
_LINE = re.compile(r"^D (\d+) (\d+) (\d+) (\S+) (.*)$")

# bpftrace: one line per dropped packet of the namespaces watched, its header as hex digits
_SCRIPT = """
tracepoint:skb:kfree_skb
{{
  $skb = (struct sk_buff *)args->skbaddr;
  $ns = (uint32)0;
  if ($skb->dev != 0) {{ $ns = $skb->dev->nd_net.net->ns.inum; }}
  else if ($skb->sk != 0) {{ $ns = $skb->sk->__sk_common.skc_net.net->ns.inum; }}
  if ($skb->mark == {ready_mark}) {{ printf("{ready_line}\\n"); }}
  else if ({predicate}) {{
    $p = $skb->head + $skb->network_header;
    $n = $skb->tail - $skb->network_header;
    printf("D %llu %u %u %s %r\\n", nsecs, $ns, args->reason, ksym(args->location), buf($p, $n < {head} ? $n : {head}));
  }}
}}
"""


def available() -> str:
    """What watching drops needs, checked (for ``pktlab doctor``); raises with the fix if something is missing."""
    _bpftrace.require()
    names = _bpftrace.drop_reasons()
    return f"bpftrace and the skb:kfree_skb tracepoint ({len(names)} drop reasons)"


@dataclass(frozen=True)
class Drop:
    """One packet the kernel dropped."""

    time: float  # wall-clock seconds, from the kernel's own timestamp
    kernel_ns: int  # the kernel's monotonic clock (CLOCK_MONOTONIC), ns
    host: str  # the lab host (its role)
    reason: str  # the kernel's name for why (NO_SOCKET, NETFILTER_DROP, ...)
    where: str  # the kernel function that dropped it
    head: bytes  # its first bytes, from the IP header
    session: str | None = None  # the pktlab session whose verdict dropped it
    handler: str | None = None  # the handler whose verdict it was
    rule: str | None = None  # NETFILTER_DROP: the rule whose counter rose ("one of: ..." when several did)

    def summary(self) -> str:
        s = summarize(self.head)
        src = f"{s['src']}:{s['sport']}" if s["sport"] is not None else str(s["src"])
        dst = f"{s['dst']}:{s['dport']}" if s["dport"] is not None else str(s["dst"])
        return f"{s['proto']} {src} > {dst}"

    def __str__(self) -> str:
        t = time.strftime("%H:%M:%S", time.localtime(self.time)) + f".{int(self.time % 1 * 1e6):06d}"
        by = f" by session {self.session}, handler {self.handler!r}" if self.session else ""
        by += f" by rule {self.rule}" if self.rule else ""
        return f"{t} {self.host:<7} {self.reason:<16} {self.summary()}  (in {self.where}){by}"


class Drops:
    """The drops seen: ``.df`` (a DataFrame), ``str()`` one line each, ``len()``."""

    def __init__(self, drops: list[Drop], filter_expr: str, hosts: list[str], lost: int = 0) -> None:
        self.drops = drops
        self.filter = filter_expr
        self.hosts = hosts
        self.lost = lost  # drops the kernel's event buffers could not hold (not in the list)

    def __len__(self) -> int:
        return len(self.drops)

    def __iter__(self):  # type: ignore[no-untyped-def]
        return iter(self.drops)

    @property
    def df(self) -> Any:
        import pandas as pd

        rows = [
            {"time": pd.to_datetime(d.time, unit="s"), "kernel_ns": d.kernel_ns, "host": d.host, "reason": d.reason,
             "where": d.where, **summarize(d.head), "session": d.session, "handler": d.handler, "rule": d.rule}
            for d in self.drops
        ]  # fmt: skip
        cols = ["time", "kernel_ns", "host", "reason", "where", "proto", "src", "dst", "sport", "dport", "session",
                "handler", "rule"]  # fmt: skip
        return pd.DataFrame(rows, columns=cols)

    def __str__(self) -> str:
        head = f"{len(self.drops)} drop(s) on {', '.join(self.hosts)}"
        if self.filter:
            head += f" matching {self.filter}"
        if self.lost:
            head += f" ({self.lost} more lost: the kernel's event buffers were full)"
        return "\n".join([head, *(str(d) for d in self.drops)])

    __repr__ = __str__  # what a cell shows: the drops, one per line

    def _repr_html_(self) -> str:
        from html import escape

        return "<pre>" + escape(str(self)) + "</pre>"


class DropWatch:
    """Drops on some lab hosts, watched while it runs; :meth:`wait` (or leaving ``with``) gives :class:`Drops`."""

    def __init__(
        self,
        target: Any,
        filter: str = "",  # noqa: A002 - tcpdump's word
        seconds: float = 10.0,
        count: int | None = None,
        on_drop: Callable[[Drop], object] | None = None,
        sessions: Iterable[Any] = (),
    ) -> None:
        hosts = list(target.hosts.values()) if hasattr(target, "hosts") else (
            [target] if hasattr(target, "netns") else list(target))  # fmt: skip
        if not hosts:
            raise LabError("nothing to watch: give a lab or some of its hosts")
        if not 0 < seconds <= 3600:
            raise ValueError(f"seconds {seconds!r} is out of range; watch for 0..3600 seconds")
        if count is not None and (not isinstance(count, int) or count < 1):
            raise ValueError(f"count must be a positive number of drops (or None), not {count!r}")
        self.hosts = hosts
        self.filter = filter
        self.program = _bpf.compile(filter) if filter else None
        self.seconds = seconds
        self.count = count
        self.on_drop = on_drop
        self.lab = getattr(hosts[0], "lab", None)
        self.sessions = list(sessions)  # besides the lab's sessions at the time of each drop
        self.drops: list[Drop] = []
        self._inum: dict[int, str] = {}
        self._bpftrace: _bpftrace.BpftraceProcess | None = None
        self._counters: dict[str, dict[tuple[str, str, str, int], tuple[str, int]]] = {}
        self._credit: dict[str, dict[str, int]] = {}  # per namespace: drops counted by a rule, not yet reported
        self._enough = threading.Event()
        self._t0 = 0.0
        self._result: Drops | None = None
        self._reasons: dict[int, str] = {}
        self._wall_offset = _bpftrace.wall_minus_monotonic()

    @property
    def lost(self) -> int:
        """Drops the kernel could not hand to bpftrace (its event buffers were full)."""
        return self._bpftrace.lost if self._bpftrace is not None else 0

    def start(self) -> DropWatch:
        _bpftrace.require()
        self._reasons = _bpftrace.drop_reasons()
        for h in self.hosts:
            try:
                self._inum[os.stat(os.path.join(_netns.NETNS_DIR, h.netns)).st_ino] = h.role
            except FileNotFoundError:
                raise LabError(f"host {h.role}'s namespace {h.netns} is gone; is the lab still up?") from None
        predicate = " || ".join(f"$ns == {n}" for n in self._inum)
        script = _SCRIPT.format(predicate=predicate, head=HEAD, ready_mark=_bpftrace.READY_MARK,
                                ready_line=_bpftrace.READY_LINE)  # fmt: skip
        self._counters = {h.netns: drop_counters(h.netns) for h in self.hosts}  # drop rules' counters, to name them
        # started once the probe has seen a drop made for the purpose: a drop right after drops() returns is seen
        self._bpftrace = _bpftrace.BpftraceProcess(script, self._on_line, "skb:kfree_skb").start(
            prove=_bpftrace.probe_drop
        )
        self._t0 = time.monotonic()
        return self

    def _on_line(self, line: str) -> None:
        m = _LINE.match(line)
        if not m:
            return
        ns, inum, reason, where, raw = m.groups()
        head = _bpftrace.unescape(raw)
        if self.program is not None and not self.program.matches(head):
            return
        k = int(ns)
        d = Drop(self._wall_offset + k / 1e9, k, self._inum.get(int(inum), inum),
                 self._reasons.get(int(reason), f"reason {reason}"), where, head)  # fmt: skip
        d = self._by_pktlab(d)
        if d.reason == "NETFILTER_DROP" and d.session is None:
            d = self._by_rule(d)
        self.drops.append(d)
        if self.on_drop is not None:
            self.on_drop(d)
        if self.count is not None and len(self.drops) >= self.count:
            self._enough.set()

    def _by_rule(self, d: Drop) -> Drop:
        """A netfilter drop: the dropping rule whose packet counter rose (iptables rules count packets).

        Counters are read again only when no earlier rise is left to account
        for: each drop takes one packet of a rise.  A rule without a counter,
        or a chain's drop policy, is not named; several rules rising at once
        are named as "one of".
        """
        host = next(h for h in self.hosts if h.role == d.host)
        credit = self._credit.setdefault(host.netns, {})
        if not any(credit.values()):
            before = self._counters.get(host.netns, {})
            now = drop_counters(host.netns)
            self._counters[host.netns] = now
            for k, (rule, n) in now.items():
                rise = n - before.get(k, ("", 0))[1]
                if rise > 0:
                    credit[f"{k[0]} {k[1]} {k[2]}: {rule}"] = credit.get(f"{k[0]} {k[1]} {k[2]}: {rule}", 0) + rise
        other = "ip6 " if d.head[:1] and d.head[0] >> 4 == 4 else "ip "  # an IPv4 packet meets no ip6 table's rule
        rose = [r for r, n in credit.items() if n > 0 and not r.startswith(other)]
        if not rose:
            return d
        credit[max(rose, key=lambda r: credit[r])] -= 1  # one drop of the rises accounted for
        named = rose[0] if len(rose) == 1 else "one of: " + "; ".join(rose)
        return Drop(d.time, d.kernel_ns, d.host, d.reason, d.where, d.head, d.session, d.handler, named)

    def _by_pktlab(self, d: Drop) -> Drop:
        """A drop by a queue's verdict: the session and handler whose verdict it was, from their records."""
        if d.reason != "NETFILTER_DROP" and not d.where.startswith("nfqnl_"):  # a verdict is freed by nfqnl_reinject
            return d
        key = d.head[:28]
        lab_sessions = list(self.lab.sessions) if self.lab is not None else []
        for s in self.sessions + [x for x in lab_sessions if x not in self.sessions]:
            for e in reversed(s.record.tail(1000)):
                if e.verdict == "drop" and e.head[:28] == key:
                    return Drop(d.time, d.kernel_ns, d.host, d.reason, d.where, d.head, s.name, e.handler)
        return d

    def wait(self) -> Drops:
        """Until ``seconds`` have passed (or ``count`` drops were seen); then stop and give the drops."""
        if self._result is not None:
            return self._result
        enough = self._enough.wait(max(0.0, self.seconds - (time.monotonic() - self._t0)))
        return self.stop(settle=0.0 if enough else 0.3)

    def stop(self, settle: float = 0.3) -> Drops:
        """Stop watching and give the drops seen, after ``settle`` s for events still on their way from the kernel."""
        if self._result is not None:
            return self._result
        if settle > 0 and self._bpftrace is not None and self._bpftrace.running:
            time.sleep(settle)  # bpftrace reads the kernel's event buffers a moment after the drop
        if self._bpftrace is not None:
            self._bpftrace.stop()
        self._result = Drops(list(self.drops), self.filter, [h.role for h in self.hosts], self.lost)
        return self._result

    def __enter__(self) -> DropWatch:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def __repr__(self) -> str:
        if self._result is not None:
            return f"<DropWatch done: {len(self._result)} drop(s)>"
        return f"<DropWatch: {len(self.drops)} drop(s) so far on {', '.join(h.role for h in self.hosts)}>"


def drops(
    target: Any,
    filter: str = "",  # noqa: A002
    *,
    seconds: float = 10.0,
    count: int | None = None,
    on_drop: Callable[[Drop], object] | None = None,
) -> DropWatch:
    """Start watching a lab's (or some hosts') dropped packets; ``.wait()`` or ``.stop()`` gives :class:`Drops`.

    ::

        with pktlab.drops(lab, "udp") as w:
            lab.udp(10, port=9999)          # nobody listens there: NO_SOCKET
        print(w.stop())
    """
    return DropWatch(target, filter, seconds, count, on_drop).start()
