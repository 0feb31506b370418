"""The assignments and their checks.

A replay check gets the :class:`~pktlab.ReplaySession` the student's handlers
ran on (the held-back capture) and returns ``(passed, reason)``.  A live check
names where the handlers sit in a client–router–server lab and a traffic
function that returns ``(passed, reason)`` from what the lab's hosts saw.
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


def _fw_live_blocked(lab: Any) -> Result:
    code = (
        "import socket\n"
        "try:\n"
        f"    socket.create_connection(('{lab.server.addr}', 9002), timeout=1.5); print('connected')\n"
        "except ConnectionRefusedError: print('refused')\n"
        "except OSError: print('timeout')\n"
    )
    import sys

    out = lab.client.run([sys.executable, "-c", code], timeout=10).stdout.strip()
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


# -- DNS rewriter --------------------------------------------------------------------
NEW_ADDRESS = "10.77.2.99"


def _dns_pairs(s: Any) -> list[tuple[bytes, bytes | None]]:
    """(input bytes, output bytes or None if dropped) for every replayed packet, in order."""
    outs = iter(s.outputs)
    pairs = []
    for cp, e in zip(s.packets, s.record, strict=True):
        pairs.append((cp.data, next(outs)[1] if e.verdict != "drop" else None))
    return pairs


def _answers(data: bytes) -> tuple[str | None, list[str]]:
    from ..packet.model import Packet

    d = Packet(None, data).dns
    if d is None or not d.qr:
        return None, []
    return d.qname, [rr.address for rr in d.answers if getattr(rr, "address", None)]


def _dns_rewritten(s: Any) -> Result:
    for before, after in _dns_pairs(s):
        name, _ = _answers(before)
        if name == "lab.example.":
            if after is None:
                return False, "the answer for lab.example. was dropped; rewrite it instead"
            _, addrs = _answers(after)
            if addrs != [NEW_ADDRESS]:
                return False, f"the answer for lab.example. says {addrs}, not [{NEW_ADDRESS!r}]"
            return True, f"the answer for lab.example. now says {NEW_ADDRESS}"
    return False, "the capture's answer for lab.example. was not found"


def _dns_checksums(s: Any) -> Result:
    from scapy.layers.inet import IP, UDP

    changed = [after for before, after in _dns_pairs(s) if after is not None and after != before]
    if not changed:
        return False, "no packet was rewritten"
    for data in changed:
        ip = IP(data)
        ref = IP(data)
        del ref.chksum, ref.len, ref[UDP].chksum, ref[UDP].len
        ref = IP(bytes(ref))
        if (ip.len, ip.chksum, ip[UDP].len, ip[UDP].chksum) != (ref.len, ref.chksum, ref[UDP].len, ref[UDP].chksum):
            return False, "a rewritten packet has a wrong IP/UDP length or checksum; the receiver would drop it"
    return True, f"{len(changed)} rewritten packet(s) with right lengths and checksums"


def _dns_others_untouched(s: Any) -> Result:
    for before, after in _dns_pairs(s):
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
        ReplayCheck("rewritten packets keep right lengths and checksums", 2, _dns_checksums),
        ReplayCheck("other names and other traffic pass unchanged", 2, _dns_others_untouched),
        LiveCheck("live: the client resolves lab.example. to 10.77.2.99", 2, "-p udp", _dns_live),
        LiveCheck("live: other.example. is left alone", 1, "-p udp", _dns_live_other),
    ),
)

ASSIGNMENTS = {a.name: a for a in (FIREWALL, DNS_REWRITER)}
