"""The assignments and their checks.

A replay check gets the :class:`~pktlab.ReplaySession` the student's handlers
ran on (the held-back capture) and returns ``(passed, reason)``.  A live check
names where the handlers sit in a client–router–server lab (one queue per
hook, each with its iptables match) and a traffic function that returns
``(passed, reason)`` from what the lab's hosts saw.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(os.environ.get("PKTLAB_ASSIGNMENTS", Path(__file__).resolve().parents[2] / "notebooks" / "assignments"))
Result = tuple[bool, str]


@dataclass(frozen=True)
class ReplayCheck:
    name: str
    points: int
    judge: Callable[[Any], Result]  # gets the ReplaySession after run()


@dataclass(frozen=True)
class LiveCheck:
    name: str
    points: int
    rule: str  # iptables match of the queue rule on the router's FORWARD hook
    traffic: Callable[[Any], Result]  # gets the Lab while the handlers are attached
    # more queues on the router, as (hook, iptables match): the same chain of handlers sits on each
    also: tuple[tuple[str, str], ...] = ()

    @property
    def queues(self) -> tuple[tuple[str, str], ...]:
        """Every (hook, match) the handlers are attached to, the FORWARD queue first."""
        return (("FORWARD", self.rule), *self.also)


@dataclass(frozen=True)
class Assignment:
    name: str
    title: str
    handlers: tuple[str, ...]  # functions the student defines, chained in this order
    checks: tuple[ReplayCheck | LiveCheck, ...]

    @property
    def heldback(self) -> Path:
        return ROOT / self.name / "grading" / "heldback.pcap"


# -- helpers used by the checks ---------------------------------------------------
def _rows(s: Any) -> list[tuple[Any, ...]]:
    """(packet, verdict) for every replayed packet."""
    from ..packet.model import Packet

    frames = list(s.packets)  # read the capture once
    return [(Packet(None, frames[e.id - 1].data), e.verdict) for e in s.record]


def _flow(p: Any) -> tuple[str, int, str, int] | None:
    if p.ip is None or p.tcp is None:
        return None
    a, b = (p.ip.src, p.tcp.sport), (p.ip.dst, p.tcp.dport)
    return (*min(a, b), *max(a, b))  # type: ignore[return-value]


def _describe(p: Any) -> str:
    return p.summary() if hasattr(p, "summary") else repr(p)


# -- firewall: only established TCP ----------------------------------------------------
def _fw_service_passes(s: Any) -> Result:
    rows = _rows(s)
    service = {_flow(p) for p, _ in rows if p.tcp is not None and p.tcp.dport == 9001 and p.tcp.flags.syn}
    mine = [(p, v) for p, v in rows if _flow(p) in service]
    bad = [p for p, v in mine if v != "accept"]
    if not mine:
        return False, "the capture's connection to port 9001 was not found"
    if bad:
        return False, f"{len(bad)} of {len(mine)} packets of the connection to port 9001 were not accepted, first: " + (
            _describe(bad[0])
        )
    return True, f"all {len(mine)} packets of the connection to port 9001 were accepted (both directions)"


def _fw_other_syn_dropped(s: Any) -> Result:
    syns = [(p, v) for p, v in _rows(s) if p.tcp is not None and p.tcp.flags.syn and not p.tcp.flags.ack
            and p.tcp.dport != 9001]  # fmt: skip
    if not syns:
        return False, "the capture's SYN to port 9002 was not found"
    kept = [p for p, v in syns if v != "drop"]
    if kept:
        return False, f"a SYN to port {kept[0].tcp.dport} was accepted; only connections to 9001 may open"
    return True, "the SYN to port 9002 was dropped"


def _fw_stray_dropped(s: Any) -> Result:
    rows = _rows(s)
    opened = {_flow(p) for p, _ in rows if p.tcp is not None and p.tcp.flags.syn}
    stray = [(p, v) for p, v in rows if p.tcp is not None and _flow(p) not in opened]
    if not stray:
        return False, "the capture's packet outside any connection was not found"
    kept = [p for p, v in stray if v != "drop"]
    if kept:
        return False, f"a TCP packet of no open connection was accepted: {_describe(kept[0])}"
    return True, f"{len(stray)} TCP packet(s) outside any connection dropped"


def _fw_other_traffic(s: Any) -> Result:
    other = [(p, v) for p, v in _rows(s) if p.tcp is None]
    if not other:
        return False, "the capture's UDP datagrams were not found"
    bad = [p for p, v in other if v != "accept"]
    if bad:
        return False, f"{len(bad)} non-TCP packet(s) were not accepted; the firewall must leave them alone"
    return True, f"all {len(other)} non-TCP packets accepted"


def _fw_live_transfer(lab: Any) -> Result:
    r = lab.tcp(65536, port=9001, src="client", dst="server", timeout=10)
    if r.get("received") != 65536:
        return False, f"the server received {r.get('received')} of 65536 bytes through the router"
    return True, "64 KiB to port 9001 arrived through the router"


def _connect_from(host: Any, addr: str, port: int) -> str:
    """What a TCP connection from lab ``host`` to ``addr``:``port`` came to: connected, refused or timeout (1.5 s)."""
    import sys

    code = (
        "import socket\n"
        "try:\n"
        f"    socket.create_connection(('{addr}', {port}), timeout=1.5); print('connected')\n"
        "except ConnectionRefusedError: print('refused')\n"
        "except OSError: print('timeout')\n"
    )
    return host.run([sys.executable, "-c", code], timeout=10).stdout.strip()


def _fw_live_blocked(lab: Any) -> Result:
    out = _connect_from(lab.client, lab.server.addr, 9002)
    if out != "timeout":
        return False, f"a connection to port 9002 was {out} (its SYN crossed the router); it must be dropped"
    return True, "a connection to port 9002 timed out: its SYN was dropped"


FIREWALL = Assignment(
    "firewall",
    "A stateful firewall: only TCP connections to port 9001",
    ("firewall",),
    (
        ReplayCheck("the connection to port 9001 passes", 2, _fw_service_passes),
        ReplayCheck("a SYN to another port is dropped", 2, _fw_other_syn_dropped),
        ReplayCheck("a TCP packet outside any connection is dropped", 2, _fw_stray_dropped),
        ReplayCheck("non-TCP traffic passes", 1, _fw_other_traffic),
        LiveCheck("live: 64 KiB to port 9001 through the router", 2, "-p tcp", _fw_live_transfer),
        LiveCheck("live: a connection to port 9002 is blocked", 1, "-p tcp", _fw_live_blocked),
    ),
)


def _pairs(s: Any) -> list[tuple[bytes, bytes | None]]:
    """(input bytes, output bytes or None if dropped) for every replayed packet, in order."""
    outs = iter(s.outputs)
    pairs = zip(s.packets, s.record, strict=True)
    return [(cp.data, next(outs)[1] if e.verdict != "drop" else None) for cp, e in pairs]


def _bad_checksums(data: bytes) -> str | None:
    """What is wrong with a packet's IP length or IP/TCP/UDP/ICMP checksums (scapy recomputes them), or None."""
    from scapy.layers.inet import ICMP, IP, TCP, UDP

    ip = IP(data)
    ref = IP(data)
    del ref.chksum, ref.len
    for layer in (TCP, UDP, ICMP):
        if layer in ref:
            del ref[layer].chksum
            if layer is UDP:
                del ref[UDP].len
    ref = IP(bytes(ref))
    if (ip.len, ip.chksum) != (ref.len, ref.chksum):
        return "its IP length or header checksum"
    for layer in (TCP, UDP, ICMP):
        if layer in ip and ip[layer].chksum != ref[layer].chksum:
            return f"its {layer.__name__} checksum"
    return None


# -- DNS rewriter --------------------------------------------------------------------
NEW_ADDRESS = "10.77.2.99"


def _answers(data: bytes) -> tuple[str | None, list[str]]:
    from ..packet.model import Packet

    d = Packet(None, data).dns
    if d is None or not d.qr:
        return None, []
    return d.qname, [rr.address for rr in d.answers if getattr(rr, "address", None)]


def _dns_rewritten(s: Any) -> Result:
    for before, after in _pairs(s):
        name, _ = _answers(before)
        if name == "lab.example.":
            if after is None:
                return False, "the answer for lab.example. was dropped; rewrite it instead"
            _, addrs = _answers(after)
            if addrs != [NEW_ADDRESS]:
                return False, f"the answer for lab.example. says {addrs}, not [{NEW_ADDRESS!r}]"
            return True, f"the answer for lab.example. now says {NEW_ADDRESS}"
    return False, "the capture's answer for lab.example. was not found"


def _changed_checksums(s: Any) -> Result:
    """Every packet the handlers changed keeps right lengths and checksums (shared by the rewriting assignments)."""
    changed = [after for before, after in _pairs(s) if after is not None and after != before]
    if not changed:
        return False, "no packet was rewritten"
    for data in changed:
        wrong = _bad_checksums(data)
        if wrong is not None:
            return False, f"a rewritten packet has a wrong {wrong}; the receiver would drop it: {_describe_bytes(data)}"
    return True, f"{len(changed)} rewritten packet(s) with right lengths and checksums"


def _dns_others_untouched(s: Any) -> Result:
    for before, after in _pairs(s):
        name, _ = _answers(before)
        if name == "lab.example.":
            continue
        if after != before:
            what = "dropped" if after is None else "changed"
            return False, f"a packet other than the lab.example. answer was {what}: {_describe_bytes(before)}"
    return True, "every other packet (other names, queries, non-DNS traffic) passed unchanged"


def _describe_bytes(data: bytes) -> str:
    from ..packet.model import Packet

    return Packet(None, data).summary()


def _dns_live(lab: Any) -> Result:
    r = lab.dns("lab.example.", answer="10.77.2.53")
    if not r.get("answered"):
        return False, "the DNS query through the router got no answer"
    if r.get("addresses") != [NEW_ADDRESS] or not r.get("id_ok"):
        return False, f"the client got {r.get('addresses')} for lab.example., not [{NEW_ADDRESS!r}]"
    return True, f"the client got {NEW_ADDRESS} for lab.example. through the router"


def _dns_live_other(lab: Any) -> Result:
    r = lab.dns("other.example.", answer="10.77.2.54")
    if r.get("addresses") != ["10.77.2.54"]:
        return False, f"the client got {r.get('addresses')} for other.example., not the server's ['10.77.2.54']"
    return True, "other.example. was answered unchanged"


DNS_REWRITER = Assignment(
    "dns-rewriter",
    "A DNS rewriter: lab.example. points to 10.77.2.99",
    ("rewrite_dns",),
    (
        ReplayCheck("the answer for lab.example. is rewritten", 3, _dns_rewritten),
        ReplayCheck("rewritten packets keep right lengths and checksums", 2, _changed_checksums),
        ReplayCheck("other names and other traffic pass unchanged", 2, _dns_others_untouched),
        LiveCheck("live: the client resolves lab.example. to 10.77.2.99", 2, "-p udp", _dns_live),
        LiveCheck("live: other.example. is left alone", 1, "-p udp", _dns_live_other),
    ),
)

# -- stateful NAT ---------------------------------------------------------------------
NAT_INSIDE = "10.77.1."  # the client's network, 10.77.1.0/24
NAT_OUTSIDE = "10.77.2.1"  # the router's address on the server's side
NAT_FIRST_PORT = 40000  # the first flow's port; each new flow takes the next


def _ends(p: Any) -> tuple[int, str, int, str, int] | None:
    """(protocol, source, source port or echo id, destination, destination port or echo id) of a TCP, UDP or ICMP
    echo packet: the endpoints pkt.flow is named by, flat."""
    from ..pipeline.flows import FlowTable

    e = FlowTable.endpoints(p)
    if e is None or e[1][1] is None:
        return None
    proto, (src, sport), (dst, dport) = e
    return proto, src, sport, dst, dport


def _proto(number: int) -> str:
    from ..pipeline.flows import PROTO_NAMES

    return PROTO_NAMES.get(number, str(number)).upper()


def _nat_rows(s: Any) -> tuple[list[tuple[Any, Any, Any]], list[tuple[Any, Any, Any]], dict[tuple, int]]:
    """Outbound and inbound (packet, its ends, what left or None) of the replay; the flows in the order they start."""
    from ..packet.model import Packet

    out, inbound, flows = [], [], {}
    for before, after in _pairs(s):
        p = Packet(None, before)
        e = _ends(p)
        if e is None:
            continue
        left = Packet(None, after) if after is not None else None
        if e[1].startswith(NAT_INSIDE):
            flows.setdefault(e, len(flows))
            out.append((p, e, left))
        elif e[3] == NAT_OUTSIDE:
            inbound.append((p, e, left))
    return out, inbound, flows


def _flow_text(e: tuple) -> str:
    proto, src, sport, dst, dport = e
    if proto == 1:
        return f"ICMP echo {src} -> {dst} (id {sport})"
    return f"{_proto(proto)} {src}:{sport} -> {dst}:{dport}"


def _nat_ports(out: list[tuple[Any, Any, Any]]) -> tuple[dict[tuple, int], str | None]:
    """The port the student's NAT gave each outbound flow, or why its outbound translation is wrong."""
    ports: dict[tuple, int] = {}
    for p, e, left in out:
        if left is None:
            return ports, f"an outbound packet was dropped ({p.summary()}); the NAT must send it on from {NAT_OUTSIDE}"
        a = _ends(left)
        if a is None or a[0] != e[0]:
            return ports, f"an outbound packet left as something else: {left.summary()}"
        if a[1] != NAT_OUTSIDE:
            return ports, f"an outbound packet left from {a[1]}, not from the router's {NAT_OUTSIDE}: {left.summary()}"
        if a[3:] != e[3:] and not (e[0] == 1 and a[3] == e[3]):
            return ports, f"the NAT changed an outbound packet's destination: {p.summary()} left as {left.summary()}"
        if ports.setdefault(e, a[2]) != a[2]:
            return ports, f"the packets of one flow ({_flow_text(e)}) left from two ports, {ports[e]} and {a[2]}"
    taken: dict[tuple[int, int], tuple] = {}
    for e, port in ports.items():
        other = taken.setdefault((e[0], port), e)
        if other != e:
            return ports, (f"two flows left from the same {_proto(e[0])} port {port} ({_flow_text(other)} and "
                           f"{_flow_text(e)}): their replies could not be told apart")  # fmt: skip
    return ports, None


def _nat_outbound(s: Any) -> Result:
    out, _, flows = _nat_rows(s)
    if not out:
        return False, "the capture's outbound packets were not found"
    _, wrong = _nat_ports(out)
    if wrong is not None:
        return False, wrong
    return True, f"{len(out)} outbound packets of {len(flows)} flows left from {NAT_OUTSIDE}, one port per flow"


def _nat_replies(s: Any) -> Result:
    out, inbound, flows = _nat_rows(s)
    ports, _ = _nat_ports(out)
    by_port = {(e[0], NAT_FIRST_PORT + i): e for e, i in flows.items()}
    replies = [(p, e, left) for p, e, left in inbound if (e[0], e[4]) in by_port]
    if not replies:
        return False, "the capture's replies were not found"
    for p, e, left in replies:
        flow = by_port[e[0], e[4]]
        n = flows[flow] + 1
        rule = f"the assignment numbers flows from {NAT_FIRST_PORT} in the order they start"
        gave = ports.get(flow)
        why = f"; {rule}, so flow {n} ({_flow_text(flow)}) has port {e[4]}" + (
            f", and your NAT gave it {gave}" if gave is not None and gave != e[4] else "")  # fmt: skip
        if left is None:
            return False, f"the reply {p.summary()} was dropped{why}"
        a = _ends(left)
        if a is None or (a[3], a[4]) != (flow[1], flow[2]) or a[1] != e[1]:
            return False, f"the reply {p.summary()} left as {left.summary()}, not to {flow[1]}:{flow[2]}{why}"
    return True, f"{len(replies)} replies of {len(flows)} flows translated back to the client"


def _nat_unknown_dropped(s: Any) -> Result:
    _, inbound, flows = _nat_rows(s)
    known = {(e[0], NAT_FIRST_PORT + i) for e, i in flows.items()}
    unknown = [(p, e, left) for p, e, left in inbound if (e[0], e[4]) not in known]
    if not unknown:
        return False, "the capture's inbound packets of no flow were not found"
    for p, e, left in unknown:
        if left is not None:
            mine = [f for f, i in flows.items() if NAT_FIRST_PORT + i == e[4]]
            whose = f" ({e[4]} is the port of a {_proto(mine[0][0])} flow, not of a {_proto(e[0])} one)" if mine else ""
            return False, f"an inbound packet of no flow was let in: {p.summary()}{whose}; it must be dropped"
    return True, f"{len(unknown)} inbound packets of no flow dropped"


def _no_way_back(lab: Any) -> None:
    """The server forgets its route to the client's network, as a host on the internet knows none to a private one:
    only what the NAT sends from the router's address can be answered."""
    lab.server.run(["ip", "-4", "route", "del", "default"], timeout=10)


def _nat_live_tcp(lab: Any) -> Result:
    _no_way_back(lab)
    r = lab.tcp(65536, port=9001, timeout=10)
    if r.get("received") != 65536:
        return False, f"64 KiB to the server's port 9001 did not get through the NAT: {r.get('stopped')}"
    if r.get("peer") != NAT_OUTSIDE:
        return False, f"the server saw the connection come from {r.get('peer')}, not from the router's {NAT_OUTSIDE}"
    return True, f"64 KiB over TCP through the NAT (the server saw {NAT_OUTSIDE})"


def _nat_live_udp(lab: Any) -> Result:
    _no_way_back(lab)
    r = lab.dns("lab.example.", answer="10.77.2.53", timeout=3)
    peers = r.get("server", {}).get("peers", [])
    if not r.get("answered"):
        return False, f"a DNS query over UDP through the NAT got no answer: {r.get('stopped')}"
    if peers != [NAT_OUTSIDE]:
        return False, f"the DNS server saw the query come from {peers}, not from the router's {NAT_OUTSIDE}"
    return True, f"a DNS query over UDP answered through the NAT (the server saw {NAT_OUTSIDE})"


def _nat_live_ping(lab: Any) -> Result:
    _no_way_back(lab)
    r = lab.ping(3, interval=0.2, wait=1.0)
    if r.received != 3:
        return False, f"{r.received} of 3 pings through the NAT were answered"
    return True, "3 pings through the NAT answered"


def _nat_live_unknown(lab: Any) -> Result:
    out = _connect_from(lab.server, NAT_OUTSIDE, 45001)
    if out != "timeout":
        return False, (f"a connection from the server to the router's port 45001 (no flow) was {out}: its SYN reached "
                       "the router; the NAT must drop it")  # fmt: skip
    return True, "a connection from outside to a port of no flow timed out: its SYN was dropped"


_NAT_QUEUES = (("PREROUTING", f"-d {NAT_OUTSIDE}"),)  # replies are translated before the router routes them

NAT = Assignment(
    "nat",
    "A stateful NAT: the client's flows leave from the router's address",
    ("nat",),
    (
        ReplayCheck("outbound packets leave from the router's address, one port per flow", 3, _nat_outbound),
        ReplayCheck("replies are translated back to the client", 3, _nat_replies),
        ReplayCheck("inbound packets of no flow are dropped", 2, _nat_unknown_dropped),
        ReplayCheck("translated packets keep right lengths and checksums", 1, _changed_checksums),
        LiveCheck("live: 64 KiB over TCP through the NAT", 2, f"-s {NAT_INSIDE}0/24", _nat_live_tcp, _NAT_QUEUES),
        LiveCheck("live: a DNS query over UDP through the NAT", 1, f"-s {NAT_INSIDE}0/24", _nat_live_udp, _NAT_QUEUES),
        LiveCheck("live: pings through the NAT", 1, f"-s {NAT_INSIDE}0/24", _nat_live_ping, _NAT_QUEUES),
        LiveCheck("live: a connection from outside is dropped", 1, f"-s {NAT_INSIDE}0/24", _nat_live_unknown,
                  _NAT_QUEUES),  # fmt: skip
    ),
)


# -- per-flow token-bucket policer -------------------------------------------------------
POLICE_RATE = 50_000  # bytes per second each flow may send (IP lengths)
POLICE_BURST = 5_000  # the bucket: bytes a flow may send at once, and what it starts with


def _bucket(times_sizes: list[tuple[float, int]]) -> list[bool]:
    """The verdicts of the assignment's token bucket (accept: True) for one flow's packets."""
    tokens, last, out = float(POLICE_BURST), None, []
    for t, n in times_sizes:
        if last is not None:
            tokens = min(POLICE_BURST, tokens + POLICE_RATE * max(0.0, t - last))
        last = t
        ok = n <= tokens
        tokens -= n if ok else 0
        out.append(ok)
    return out


def _bucket_passes(pkts: list[tuple[float, int, bool]], since: float = float("-inf")) -> int:
    """Bytes the assignment's bucket lets through of one flow's packets (of those from time ``since`` on)."""
    verdicts = _bucket([(t, n) for t, n, _ in pkts])
    return sum(n for (t, n, _), ok in zip(pkts, verdicts, strict=True) if ok and t >= since)


def _police_flows(s: Any) -> dict[tuple, list[tuple[float, int, bool]]]:
    """Each flow's packets in order: (time, IP length, accepted by the student's policer)."""
    from ..packet.model import Packet

    flows: dict[tuple, list[tuple[float, int, bool]]] = {}
    for cp, e in zip(s.packets, s.record, strict=True):
        p = Packet(None, cp.data)
        key = _ends(p)
        if key is not None:
            flows.setdefault(key, []).append((cp.time, len(cp.data), e.verdict == "accept"))
    return flows


def _rate_of(pkts: list[tuple[float, int, bool]]) -> float:
    span = pkts[-1][0] - pkts[0][0]
    return sum(n for _, n, _ in pkts) / span if span > 0 else float("inf")


def _fast_and_slow(s: Any) -> tuple[list[tuple[tuple, list]], list[tuple[tuple, list]]]:
    """The paced flows of the capture over the rate, and those under it (a burst of a few packets is neither)."""
    flows = [(k, v) for k, v in _police_flows(s).items() if len(v) >= 50]
    return ([(k, v) for k, v in flows if _rate_of(v) > 1.5 * POLICE_RATE],
            [(k, v) for k, v in flows if _rate_of(v) < 0.75 * POLICE_RATE])  # fmt: skip


def _police_cut(s: Any) -> Result:
    fast, _ = _fast_and_slow(s)
    if not fast:
        return False, "the capture's flow at twice the rate was not found"
    for key, pkts in fast:
        ideal = _bucket_passes(pkts)
        got = sum(n for _, n, ok in pkts if ok)
        span = pkts[-1][0] - pkts[0][0]
        if not 0.95 * ideal <= got <= 1.05 * ideal:
            return False, (f"the flow {_flow_text(key)} sent {_rate_of(pkts):,.0f} B/s for {span:.1f} s; your policer "
                           f"let {got:,} bytes through ({(got - POLICE_BURST) / span:,.0f} B/s after the burst), the "
                           f"bucket lets {ideal:,} (rate {POLICE_RATE:,} B/s, burst {POLICE_BURST:,} bytes) "
                           "±5 %")  # fmt: skip
    return True, f"{len(fast)} flow(s) at twice the rate cut to {POLICE_RATE:,} B/s (within 5 % of the bucket)"


def _police_first_burst(s: Any) -> Result:
    flows = _police_flows(s)
    if not any(len(v) >= 20 for v in flows.values()):
        return False, "the capture's flows were not found"
    for key, pkts in flows.items():
        total = 0
        for _, n, ok in pkts:
            if total + n > POLICE_BURST:  # a full bucket passes these, however fast they come
                break
            if not ok:
                return False, (f"a packet among the first {POLICE_BURST:,} bytes of {_flow_text(key)} was dropped; "
                               "the bucket starts full, so a flow's first burst passes whole")  # fmt: skip
            total += n
    return True, f"the first {POLICE_BURST:,} bytes of every flow passed"


def _police_slow(s: Any) -> Result:
    fast, slow = _fast_and_slow(s)
    if not slow or not fast:
        return False, "the capture's flows over and under the rate were not found"
    for key, pkts in slow:
        lost = [p for p in pkts if not p[2]]
        if lost:
            return False, (f"{len(lost)} of {len(pkts)} packets of {_flow_text(key)}, a flow at "
                           f"{_rate_of(pkts):,.0f} B/s (under the rate), were dropped while another flow went over "
                           "it; each flow needs a bucket of its own")  # fmt: skip
    return True, f"{sum(len(v) for _, v in slow)} packets of {len(slow)} flow(s) under the rate all passed"


def _police_pause(s: Any) -> Result:
    bursts = [(k, v) for k, v in _police_flows(s).items() if 20 <= len(v) < 50]
    if not bursts:
        return False, "the capture's flow that pauses between two bursts was not found"
    for key, pkts in bursts:
        gaps = [i for i in range(1, len(pkts)) if pkts[i][0] - pkts[i - 1][0] > 0.5]
        if not gaps:
            continue
        second = pkts[gaps[0] :]
        got = sum(n for _, n, ok in second if ok)
        ideal_second = _bucket_passes(pkts, since=second[0][0])
        if got > POLICE_BURST:
            return False, (f"after a pause, {_flow_text(key)} sent {got:,} bytes at once through your policer; the "
                           f"bucket holds at most {POLICE_BURST:,} bytes, whatever the pause")  # fmt: skip
        if got < ideal_second:
            return False, (f"after a pause of {second[0][0] - pkts[gaps[0] - 1][0]:.1f} s, {_flow_text(key)} got "
                           f"{got:,} bytes through; a bucket refilled at {POLICE_RATE:,} B/s lets "
                           f"{ideal_second:,}")  # fmt: skip
        return True, f"after a pause the flow sent its burst again ({got:,} bytes), no more"
    return False, "the capture's flow that pauses between two bursts was not found"


def _police_live_pair(lab: Any) -> tuple[Any, Any]:
    """A flow at twice the rate and one at half of it, side by side, client to server, through a 20 ms link."""
    lab.link("client", "router").set(delay=0.02)
    size = 500 - 28  # datagrams of 500 IP bytes
    fast = lab.start_udp(int(6 * POLICE_RATE / 500), size=size, rate=2 * POLICE_RATE / 500, port=9000, timeout=10)
    slow = lab.start_udp(int(1.5 * POLICE_RATE / 500), size=size, rate=POLICE_RATE / 2 / 500, port=9001, timeout=10)
    return fast.wait(), slow.wait()


def _police_live_cut(lab: Any) -> Result:
    fast, _ = _police_live_pair(lab)
    # the bucket lets RATE x (time) + BURST through; the band is wide for this machine's scheduling (a sender that
    # stalls sends less for a moment, then catches up in a burst the bucket partly drops)
    expected = POLICE_RATE * fast.seconds + POLICE_BURST
    got = fast.received * 500
    if not 0.85 * expected <= got <= 1.15 * expected:
        return False, (f"at twice the rate for {fast.seconds:.1f} s, {got:,} bytes arrived ({fast.received} of "
                       f"{fast.sent} datagrams); the bucket lets {expected:,.0f} through, ±15 %")  # fmt: skip
    share = got / expected
    return True, f"at twice the rate, {got:,} bytes arrived in {fast.seconds:.1f} s ({share:.0%} of the bucket)"


def _police_live_slow(lab: Any) -> Result:
    _, slow = _police_live_pair(lab)
    if slow.received < 0.95 * slow.sent:
        return False, (f"a flow at half the rate lost {slow.sent - slow.received} of {slow.sent} datagrams beside one "
                       "at twice the rate; each flow needs a bucket of its own")  # fmt: skip
    return True, f"a flow at half the rate beside one at twice it: {slow.received} of {slow.sent} datagrams arrived"


POLICER = Assignment(
    "policer",
    f"A per-flow token-bucket policer: {POLICE_RATE:,} bytes/s with a {POLICE_BURST:,}-byte burst",
    ("police",),
    (
        ReplayCheck("a flow at twice the rate is cut to the rate", 3, _police_cut),
        ReplayCheck("a flow's first burst passes whole", 1, _police_first_burst),
        ReplayCheck("a flow under the rate loses nothing beside one over it", 2, _police_slow),
        ReplayCheck("after a pause, a flow sends no more than the burst at once", 2, _police_pause),
        LiveCheck("live: twice the rate through a 20 ms link arrives at the rate", 2, "-p udp", _police_live_cut),
        LiveCheck("live: a flow at half the rate beside it loses (almost) nothing", 1, "-p udp", _police_live_slow),
    ),
)

ASSIGNMENTS = {a.name: a for a in (FIREWALL, DNS_REWRITER, NAT, POLICER)}


def grading_folders() -> list[Path]:
    """What a submission must not see: every assignment's grading folder (held-back capture, reference)."""
    return [a.heldback.parent for a in ASSIGNMENTS.values()]
