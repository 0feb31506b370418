"""A traced packet's life through lab hosts, step by step with the kernel's own times: views and files.

:class:`Trace` is what :func:`pktlab.trace` gives (:mod:`.tracer` makes it):
per packet, every step on every host it crossed, each with the kernel's
CLOCK_MONOTONIC time in ns.  ``text()`` is an indented timeline per packet
(each step's time since the packet's first step and since the step before,
the time spent per host), ``df`` a DataFrame, ``drops`` the packets that died
and why, ``plot()`` swimlanes (one lane per host and hook, time on x).
``save()``/``Trace.load()`` keep a trace in a JSON file (a recorded trace is
what a notebook shows where nothing can be traced, as on Binder).
"""

from __future__ import annotations

import json
import struct
import time
from dataclasses import asdict, dataclass, field
from html import escape
from typing import Any

from ..packet.model import summarize

HOOKS = ("PREROUTING", "INPUT", "FORWARD", "OUTPUT", "POSTROUTING")
# the lanes of one host, top to bottom, in the order a packet can cross them
LANES = ("device in", "PREROUTING", "OUTPUT", "INPUT", "FORWARD", "POSTROUTING", "device out", "local")
_ICMP = {(1, 0): "echo-reply", (1, 8): "echo-request", (1, 3): "destination-unreachable", (1, 11): "time-exceeded",
         (58, 128): "echo-request", (58, 129): "echo-reply", (58, 1): "destination-unreachable",
         (58, 135): "neighbor-solicitation", (58, 136): "neighbor-advertisement"}  # fmt: skip
FORMAT = "pktlab-trace/1"
COPY_DELIVERED = "a copy was delivered to a socket before"  # said of a drop after delivery (ping_rcv)


def _transport(head: bytes) -> tuple[int, int] | None:
    """(protocol, offset of the transport header) of a packet starting at its IP header."""
    from ..packet.views.ip import ipv6_upper

    if len(head) >= 20 and head[0] >> 4 == 4:
        return head[9], (head[0] & 15) * 4
    if len(head) >= 40 and head[0] >> 4 == 6:
        try:
            p, off, _ = ipv6_upper(head, 0)
        except Exception:  # extension headers beyond the bytes reported
            return None
        return p, off
    return None


def identity(head: bytes) -> tuple[Any, ...]:
    """What names one packet on every host it crosses: addresses, IP id (flow label), transport fields.

    Hop-by-hop fields (TTL, hop limit, the IPv4 checksum) and transport
    checksums (completed on the way when a sender leaves them to offload) are
    left out, so a router's copy is the same packet; a NAT's rewrite makes it
    another one.  Without an IP id, IPv6 UDP datagrams of one flow and one
    length are not told apart.
    """
    tp = _transport(head)
    if tp is None:
        return ("raw", head[:20].hex())
    proto, off = tp
    if head[0] >> 4 == 4:
        net: tuple[Any, ...] = (4, head[12:20].hex(), struct.unpack_from("!H", head, 4)[0])
    else:
        net = (6, head[8:40].hex(), int.from_bytes(head[1:4], "big") & 0xFFFFF)
    t = head[off : off + 8]
    if proto == 17:
        fields = t[:6]  # ports, length
    elif proto in (1, 58):
        fields = t[:2] + t[4:8]  # type, code, id, sequence
    else:
        fields = t  # TCP: ports, sequence number
    return (*net, proto, fields.hex())


def describe(head: bytes) -> str:
    """A packet in a few words: ``icmp 10.77.1.1 > 10.77.2.2 echo-request id 7 seq 1``, ``udp a:1 > b:2 len 14``."""
    s = summarize(head)
    tp = _transport(head)
    if tp is None or s["src"] is None:
        return f"{s['proto']} packet"
    proto, off = tp
    t = head[off:]
    if proto in (6, 17) and s["sport"] is not None:
        out = f"{s['proto']} {s['src']}:{s['sport']} > {s['dst']}:{s['dport']}"
        if proto == 6 and len(t) >= 14:
            flags = "".join(c for c, bit in zip("FSRPAU", range(6), strict=True) if t[13] >> bit & 1)
            return out + f" [{flags}] seq {struct.unpack_from('!I', t, 4)[0]}"
        if proto == 17 and len(t) >= 6:
            return out + f" len {struct.unpack_from('!H', t, 4)[0] - 8}"
        return out
    out = f"{s['proto']} {s['src']} > {s['dst']}"
    if proto in (1, 58) and len(t) >= 8:
        name = _ICMP.get((proto, t[0]), f"type {t[0]}")
        out += f" {name}"
        if "echo" in name:
            out += f" id {struct.unpack_from('!H', t, 4)[0]} seq {struct.unpack_from('!H', t, 6)[0]}"
    return out


@dataclass
class Step:
    """One step of a packet on one host, at the kernel's time."""

    host: str
    t_ns: int  # the kernel's CLOCK_MONOTONIC, ns
    lane: str  # device in, a netfilter hook, device out, local
    kind: str  # receive, hook, rule, policy, return, pktlab, device queue, transmit, socket, consumed, drop
    text: str
    verdict: str | None = None
    table: str = ""  # "ip filter" for rules and policies
    chain: str = ""
    reason: str | None = None  # drop: the kernel's reason
    where: str | None = None  # drop: the kernel function
    by: str | None = None  # drop: the rule or the pktlab handler whose verdict it was
    exact: bool = True  # False: the kernel's time of this step was lost; it is placed at the step before's time


@dataclass
class TracedPacket:
    """One packet: its first bytes as traced and its steps on every host, in time order."""

    head: bytes
    steps: list[Step] = field(default_factory=list)

    @property
    def key(self) -> tuple[Any, ...]:
        return identity(self.head)

    @property
    def start_ns(self) -> int:
        return self.steps[0].t_ns if self.steps else 0

    def summary(self) -> str:
        return describe(self.head)

    @property
    def hosts(self) -> list[str]:
        """The hosts it crossed, in the order it crossed them."""
        out: list[str] = []
        for s in self.steps:
            if not out or out[-1] != s.host:
                out.append(s.host)
        return out

    @property
    def passes(self) -> list[tuple[str, list[Step]]]:
        """(host, its steps there) in the order the packet crossed the hosts."""
        out: list[tuple[str, list[Step]]] = []
        for s in self.steps:
            if not out or out[-1][0] != s.host:
                out.append((s.host, []))
            out[-1][1].append(s)
        return out

    def hooks(self, host: str) -> list[str]:
        """The netfilter hooks this packet crossed on ``host``, in order."""
        out: list[str] = []
        for s in self.steps:
            if s.host == host and s.lane in HOOKS and (not out or out[-1] != s.lane):
                out.append(s.lane)
        return out

    @property
    def dropped(self) -> Step | None:
        return next((s for s in self.steps if s.kind == "drop"), None)


class Trace:
    """Traced packets with their timelines; ``text()``, ``df``, ``drops``, ``plot()``, ``save()``."""

    def __init__(
        self, packets: list[TracedPacket], filter_expr: str, hosts: list[str], lost: int = 0, wall_offset: float = 0.0
    ) -> None:
        self.packets = packets
        self.filter = filter_expr
        self.hosts = hosts
        self.lost = lost  # kernel events that did not reach pktlab (buffers full): steps missing from the timelines
        self.wall_offset = wall_offset  # wall-clock time minus the kernel's monotonic clock, s

    def __len__(self) -> int:
        return len(self.packets)

    def wall(self, t_ns: int) -> float:
        """A kernel time as wall-clock seconds since the epoch."""
        return self.wall_offset + t_ns / 1e9

    def rows(self) -> list[dict[str, Any]]:
        out = []
        for n, p in enumerate(self.packets):
            prev = p.start_ns
            for s in p.steps:
                out.append(
                    {
                        "packet": n,
                        "host": s.host,
                        "lane": s.lane,
                        "kind": s.kind,
                        "step": s.text,
                        "verdict": s.verdict,
                        "reason": s.reason,
                        "kernel_ns": s.t_ns,
                        "t_us": (s.t_ns - p.start_ns) / 1e3,
                        "dt_us": (s.t_ns - prev) / 1e3,
                        "exact": s.exact,
                    }
                )
                prev = s.t_ns
        return out

    @property
    def df(self) -> Any:
        """One row per step: packet, host, lane, kind, step, verdict, reason, kernel_ns, time, t_us, dt_us."""
        import pandas as pd

        cols = ["packet", "host", "lane", "kind", "step", "verdict", "reason", "kernel_ns", "t_us", "dt_us", "exact"]
        df = pd.DataFrame(self.rows(), columns=cols)
        df.insert(8, "time", pd.to_datetime([self.wall(t) for t in df["kernel_ns"]], unit="s"))
        return df

    @property
    def drops(self) -> Any:
        """The traced packets that were dropped: where, why (the kernel's reason), and the rule or handler."""
        import pandas as pd

        rows = []
        for n, p in enumerate(self.packets):
            d = p.dropped
            if d is not None:
                rows.append({"packet": n, "time": pd.to_datetime(self.wall(d.t_ns), unit="s"), "kernel_ns": d.t_ns,
                             "host": d.host, "reason": d.reason, "where": d.where, "by": d.by,
                             "summary": p.summary()})  # fmt: skip
        return pd.DataFrame(rows, columns=["packet", "time", "kernel_ns", "host", "reason", "where", "by", "summary"])

    def text(self) -> str:
        """An indented timeline per packet: each host, each step with µs since the packet's first step and the last.

        Times are the kernel's own (CLOCK_MONOTONIC); a step marked ``~`` lost
        its time and is placed at the one before.
        """
        lines = []
        for n, p in enumerate(self.packets):
            lines.append(f"packet {n}: {p.summary()}")
            prev = p.start_ns
            for host, steps in p.passes:
                spent = (steps[-1].t_ns - steps[0].t_ns) / 1e3
                lines.append(f"  {host}  ({spent:.1f} µs here)")
                for s in steps:
                    t = f"{(s.t_ns - p.start_ns) / 1e3:10.1f} µs {(s.t_ns - prev) / 1e3:+9.1f}{' ' if s.exact else '~'}"
                    lane = s.lane if s.lane in HOOKS else ""
                    v = f" -> {s.verdict}" if s.verdict and s.verdict != "continue" else ""
                    lines.append(f"    {t} {lane:<11} {s.text}{v}")
                    prev = s.t_ns
        if not self.packets:
            lines.append(f"no packet matching {self.filter or '(everything)'} crossed {', '.join(self.hosts)}")
        if self.lost:
            lines.append(f"({self.lost} kernel events were lost: the event buffers were full; timelines miss steps)")
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.text()

    def __repr__(self) -> str:
        return f"<Trace: {len(self.packets)} packet(s) matching {self.filter or '(everything)'}; .text() shows them>"

    def _repr_html_(self) -> str:
        return f"<pre>{escape(self.text())}</pre>"

    def plot(self) -> Any:
        """Swimlanes: one lane per host and hook (device, netfilter hooks, local delivery), the kernel's time on x.

        Each packet is a coloured path through the lanes; drops are red crosses (grey where a
        copy of the packet had reached a socket before); hover shows the step, its verdict and its time.
        """
        from bokeh.models import ColumnDataSource, HoverTool, NumeralTickFormatter
        from bokeh.palettes import Category10_10
        from bokeh.plotting import figure

        used = {(s.host, s.lane) for p in self.packets for s in p.steps}
        hosts = list(dict.fromkeys([h for p in self.packets for h in p.hosts] + self.hosts))
        lanes = [f"{h} {lane}" for h in hosts for lane in LANES if (h, lane) in used]
        t0 = min((p.start_ns for p in self.packets), default=0)
        span_ns = max((s.t_ns for p in self.packets for s in p.steps), default=t0) - t0
        # µs for a packet's path, ms once packets spread over more than a tenth of a second
        # (an axis of 800,000 µs printed as 8.000e+5)
        unit, per_ns = ("ms", 1e6) if span_ns > 100_000_000 else ("µs", 1e3)
        fig = figure(
            y_range=list(reversed(lanes)) or ["(no packet)"],
            height=max(220, 24 * len(lanes) + 90),
            width=850,
            x_axis_label=f"{unit} since the first packet's first step (the kernel's clock)",
            title=f"trace of {self.filter or 'every packet'}: {len(self.packets)} packet(s)",
            tools="pan,xwheel_zoom,box_zoom,reset",
        )
        hover_renderers = []
        drops: list[Step] = []
        for n, p in enumerate(self.packets):
            src = ColumnDataSource(
                {
                    "t": [(s.t_ns - t0) / per_ns for s in p.steps],
                    "lane": [f"{s.host} {s.lane}" for s in p.steps],
                    "step": [s.text[:90] for s in p.steps],
                    "verdict": [s.verdict or "" for s in p.steps],
                    "dt": [0.0] + [(b.t_ns - a.t_ns) / 1e3 for a, b in zip(p.steps, p.steps[1:], strict=False)],
                    "packet": [f"{n}: {p.summary()}"] * len(p.steps),
                }
            )
            colour = Category10_10[n % 10]
            fig.line("t", "lane", source=src, color=colour, alpha=0.6, line_width=2, legend_label=f"packet {n}")
            hover_renderers.append(fig.scatter("t", "lane", source=src, color=colour, size=8))
            drops += [s for s in p.steps if s.kind == "drop"]
        # a drop after a copy reached a socket (ping_rcv freeing the original) is not a lost packet: grey, not red
        after_copy = [s for s in drops if COPY_DELIVERED in s.text]
        for group, colour, label in ((
            [s for s in drops if s not in after_copy], "red", "dropped"),
            (after_copy, "grey", "freed after a copy reached a socket"),
        ):  # fmt: skip
            if group:
                fig.scatter([(s.t_ns - t0) / per_ns for s in group], [f"{s.host} {s.lane}" for s in group],
                            marker="x", size=16, line_width=3, color=colour, legend_label=label)  # fmt: skip
        fig.add_tools(
            HoverTool(
                renderers=hover_renderers,
                tooltips=[("packet", "@packet"), ("step", "@step"), ("verdict", "@verdict"),
                          ("time", f"@t{{0,0.0[00]}} {unit} (+@dt{{0,0.0}} µs)")],  # fmt: skip
            )
        )
        fig.xaxis.formatter = NumeralTickFormatter(format="0,0.[00]")
        if self.packets:
            fig.legend.click_policy = "hide"
            fig.legend.location = "top_left"
            fig.add_layout(fig.legend[0], "right")
        return fig

    def save(self, path: str) -> None:
        """Write the trace to a JSON file (:meth:`Trace.load` reads it back)."""
        doc = {
            "format": FORMAT,
            "filter": self.filter,
            "hosts": self.hosts,
            "lost": self.lost,
            "wall_offset": self.wall_offset,
            "recorded": time.strftime("%Y-%m-%d %H:%M:%S"),
            "packets": [{"head": p.head.hex(), "steps": [asdict(s) for s in p.steps]} for p in self.packets],
        }
        with open(path, "w") as f:
            json.dump(doc, f, indent=1)

    @classmethod
    def load(cls, path: str) -> Trace:
        """A trace saved by :meth:`save`."""
        with open(path) as f:
            doc = json.load(f)
        if doc.get("format") != FORMAT:
            raise ValueError(f"{path} is not a pktlab trace ({FORMAT}); save one with trace.save(path)")
        packets = [TracedPacket(bytes.fromhex(p["head"]), [Step(**s) for s in p["steps"]]) for p in doc["packets"]]
        return cls(packets, doc["filter"], doc["hosts"], doc.get("lost", 0), doc.get("wall_offset", 0.0))
