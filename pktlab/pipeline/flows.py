"""Flows: the connection a packet belongs to, the same object for both directions.

``pkt.flow`` gives the packet's :class:`Flow`: its endpoints (``a`` is the side
that sent the first packet pktlab saw), packet and byte counts per direction,
for TCP a state derived from the flags seen (``tcp_state``), and ``state``, a
dict a handler keeps per-connection data in.  The kernel's conntrack
attributes do not come with queued packets on this kernel
(``CONFIG_NETFILTER_NETLINK_GLUE_CT`` is off), so everything here is derived
from the packets that pass the session, live or replayed alike.

Tracking costs a little per packet, so it starts with ``s.track_flows()``, or
the first time a handler reads ``pkt.flow``; from then on every packet of the
session is counted (what passed before is not).  ``s.flows`` does not need it:
it reads the flows from the record, after the fact (``tcp_analysis.flow_summary``),
and adds the tracked flows' ``state`` and flow verdicts.  The table is bounded:
idle flows expire (TCP after ``tcp_idle`` s, closed or reset ones after
``closed_idle`` s, others after ``idle`` s), and beyond ``max_flows`` the flow
seen longest ago goes.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Any

from ..errors import PktlabError

__all__ = ["Flow", "FlowState", "FlowTable"]

FIN, SYN, RST, ACK = 0x01, 0x02, 0x04, 0x10
PROTO_NAMES = {1: "icmp", 6: "tcp", 17: "udp", 58: "icmpv6"}


class FlowState(dict):
    """A flow's own dict for handler data, bounded so that one flow cannot take the notebook's memory."""

    def __init__(self, limit: int) -> None:
        super().__init__()
        self.limit = limit

    def __setitem__(self, key: Any, value: Any) -> None:
        if key not in self and len(self) >= self.limit:
            raise PktlabError(
                f"flow.state already holds {self.limit} keys; keep fewer per connection (a counter or a small "
                "dict in one key), or raise FlowTable.state_limit"
            )
        super().__setitem__(key, value)

    def setdefault(self, key: Any, default: Any = None) -> Any:
        if key not in self:
            self[key] = default
        return self[key]

    def update(self, *args: Any, **kwargs: Any) -> None:  # type: ignore[override]
        for k, v in dict(*args, **kwargs).items():
            self[k] = v


class Flow:
    """One connection (or UDP/ICMP exchange) as pktlab saw it; ``pkt.flow``."""

    __slots__ = (
        "key",
        "proto",
        "a",
        "b",
        "first",
        "last",
        "packets",
        "bytes",
        "tcp_state",
        "state",
        "direction",
        "_fin",
        "_syn_acked",
        "table",
        "verdict",
        "decided_by",
        "kernel_bit",
    )

    def __init__(self, key: tuple, proto: int, a: tuple, b: tuple, now: float, state_limit: int) -> None:
        self.key = key
        self.proto = proto
        self.a = a  # (address, port) of the side that sent the first packet seen; port None without ports
        self.b = b
        self.first = self.last = now
        self.packets = [0, 0]  # a -> b, b -> a
        self.bytes = [0, 0]
        self.tcp_state: str | None = "new" if proto == 6 else None
        self.state = FlowState(state_limit)
        self.direction = "original"  # of the latest packet: the one a handler is looking at
        self._fin = [False, False]
        self._syn_acked = False
        self.table: FlowTable | None = None
        self.verdict: str | None = None  # a flow verdict: "accept" or "drop" for every later packet
        self.decided_by: str | None = None  # the handler that decided it
        self.kernel_bit = 0  # the mark bit its packets' verdicts carry to the kernel (0: pktlab decides them)

    @property
    def protocol(self) -> str:
        return PROTO_NAMES.get(self.proto, str(self.proto))

    @property
    def closed(self) -> bool:
        return self.tcp_state in ("closed", "reset")

    def _tcp(self, d: int, flags: int) -> None:
        s = self.tcp_state
        if flags & RST:
            self.tcp_state = "reset"
        elif flags & SYN and not flags & ACK:
            self.tcp_state = "syn-sent"
        elif flags & SYN:
            self.tcp_state = "syn-received"
        elif flags & FIN:
            self._fin[d] = True
            self.tcp_state = "closing" if all(self._fin) else "fin-wait"
        elif flags & ACK and s == "closing":
            self.tcp_state = "closed"
        elif s in ("new", "syn-received") or (s == "syn-sent" and flags & ACK):
            self.tcp_state = "established"

    def as_dict(self) -> dict[str, Any]:
        return {
            "proto": self.protocol,
            "a": self.a[0],
            "aport": self.a[1],
            "b": self.b[0],
            "bport": self.b[1],
            "tcp_state": self.tcp_state,
            "packets_ab": self.packets[0],
            "packets_ba": self.packets[1],
            "bytes_ab": self.bytes[0],
            "bytes_ba": self.bytes[1],
            "first": self.first,
            "last": self.last,
            "flow_verdict": self.verdict,
            "state": dict(self.state),
        }

    def __repr__(self) -> str:
        ap = f":{self.a[1]}" if self.a[1] is not None else ""
        bp = f":{self.b[1]}" if self.b[1] is not None else ""
        st = f" {self.tcp_state}" if self.tcp_state else ""
        return (
            f"<Flow {self.protocol} {self.a[0]}{ap} <-> {self.b[0]}{bp}{st} "
            f"{self.packets[0]}/{self.packets[1]} packets>"
        )


class FlowTable:
    """Every flow a session has seen since tracking started (see the module's docstring)."""

    is_flow_table = True  # how a packet tells the table from a flow without importing this module

    @property
    def enabled(self) -> bool:
        """Tracking has started: every packet is counted in its flow from now on."""
        return self._enabled

    @enabled.setter
    def enabled(self, on: bool) -> None:
        self._enabled = bool(on)
        if self.on_change is not None:
            self.on_change()

    def __init__(
        self,
        max_flows: int = 65536,
        idle: float = 60.0,
        tcp_idle: float = 600.0,
        closed_idle: float = 10.0,
        state_limit: int = 1024,
    ) -> None:
        self._enabled = False
        self.on_change: Any = None  # told when tracking starts or stops (the dispatcher's path without Python)
        self.max_flows = max_flows
        self.idle, self.tcp_idle, self.closed_idle = idle, tcp_idle, closed_idle
        self.state_limit = state_limit
        self.flows: OrderedDict[tuple, Flow] = OrderedDict()
        self.expired = 0
        self.evicted = 0
        self._swept = 0.0
        self.decided = 0  # flows with a flow verdict: the dispatcher looks them up before the handlers
        # the session's hook: make the kernel decide the rest of the flow; returns the mark bit for the verdict
        self.on_decide: Any = None

    def decide(self, f: Flow, verdict: str) -> None:
        """Give every later packet of ``f`` ``verdict`` (``pkt.accept(flow=True)``, ``pkt.drop(flow=True)``)."""
        bit = self.on_decide(f, verdict) if self.on_decide is not None else 0  # may refuse: nothing decided then
        if f.verdict is None:
            self.decided += 1
        f.verdict = verdict
        f.decided_by = None  # the dispatcher names the handler once its verdict is in
        f.kernel_bit = bit

    def revoke(self, handler: str | None = None) -> list[Flow]:
        """Take the flow verdicts back (all, or those ``handler`` gave): their packets meet the handlers again."""
        out = []
        for f in self.flows.values():
            if f.verdict is not None and (handler is None or f.decided_by == handler):
                f.verdict = f.decided_by = None
                f.kernel_bit = 0
                out.append(f)
        self.decided -= len(out)
        return out

    def decided_flows(self) -> list[Flow]:
        return [f for f in self.flows.values() if f.verdict is not None]

    def __len__(self) -> int:
        return len(self.flows)

    @staticmethod
    def key(proto: int, src: tuple, dst: tuple) -> tuple:
        """A flow's key, the same for both directions: (protocol, one endpoint, the other) in a fixed order."""
        return (proto, src, dst) if (src, dst) <= (dst, src) else (proto, dst, src)

    @staticmethod
    def endpoints(pkt: Any) -> tuple[int, tuple, tuple] | None:
        """(protocol, source, destination) of an IP packet; endpoints are (address, port or ICMP id or None)."""
        ip = pkt.ip or pkt.ipv6
        if ip is None:
            return None
        t = pkt.transport
        proto = pkt.proto
        if proto in (6, 17) and t is not None:
            return proto, (ip.src, t.sport), (ip.dst, t.dport)
        if proto in (1, 58) and t is not None and t.type in (0, 8, 128, 129):  # echo: the id names the exchange
            return proto, (ip.src, t.id), (ip.dst, t.id)
        return proto, (ip.src, None), (ip.dst, None)

    def observe(self, pkt: Any) -> Flow | None:
        """Count the packet in its flow (made if new) and return the flow; None for a packet that is not IP."""
        if not self._enabled:
            self.enabled = True
        try:  # what names the flow and its TCP state: a packet too short or inconsistent for it has no flow
            ends = self.endpoints(pkt)
            if ends is None:
                return None
            tcp_flags = pkt.tcp.flagbits if ends[0] == 6 and pkt.tcp is not None else 0
        except PktlabError:  # malformed (PacketFormatError): the packet's fault, not a flow's
            return None
        proto, src, dst = ends
        key = self.key(proto, src, dst)
        now = pkt.time
        if now - self._swept >= 1.0:
            self._sweep(now)
        f = self.flows.get(key)
        if f is not None and f.closed and tcp_flags & SYN and not tcp_flags & ACK:
            f = None  # a new connection on the ports of a finished one
        if f is None:
            old = self.flows.get(key)
            if old is not None and old.verdict is not None:  # a new connection on a decided flow's ports
                self.decided -= 1
            f = Flow(key, proto, src, dst, now, self.state_limit)
            f.table = self
            self.flows[key] = f
            while len(self.flows) > self.max_flows:
                _, gone = self.flows.popitem(last=False)
                self.decided -= gone.verdict is not None
                self.evicted += 1
        else:
            self.flows.move_to_end(key)
        d = 0 if src == f.a else 1
        f.direction = "original" if d == 0 else "reply"
        f.packets[d] += 1
        f.bytes[d] += len(pkt)
        f.last = now
        if proto == 6:
            f._tcp(d, tcp_flags)
        return f

    def _sweep(self, now: float) -> None:
        self._swept = now
        gone = []
        for k, f in self.flows.items():
            limit = self.closed_idle if f.closed else self.tcp_idle if f.proto == 6 else self.idle
            if now - f.last > limit:
                gone.append(k)
        for k in gone:
            if self.flows[k].verdict is not None:
                self.decided -= 1
            del self.flows[k]
        self.expired += len(gone)

    def df(self) -> Any:
        """The live flows as a pandas DataFrame, one row per flow, most recently seen last."""
        import pandas as pd

        if not self._enabled:
            self.enabled = True
        cols = [
            "proto",
            "a",
            "aport",
            "b",
            "bport",
            "tcp_state",
            "packets_ab",
            "packets_ba",
            "bytes_ab",
            "bytes_ba",
            "first",
            "last",
            "state",
        ]
        df = pd.DataFrame([f.as_dict() for f in list(self.flows.values())], columns=cols)
        for c in ("first", "last"):
            df[c] = pd.to_datetime(df[c], unit="s")
        return df
