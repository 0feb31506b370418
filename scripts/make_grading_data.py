"""Capture the held-back traffic the assignment grader replays, from real lab traffic.

Run as root: `.venv/bin/python scripts/make_grading_data.py`.  Each capture is
what the router of a client-router-server lab forwarded (both directions),
written to notebooks/assignments/<name>/grading/heldback.pcap.  The NAT's is what
a NAT on the router sees: the reference NAT runs there (its replies need it), and
the capture holds the packets as they arrived, before it translated them.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pktlab

ROOT = Path(os.environ.get("PKTLAB_ASSIGNMENTS", Path(__file__).resolve().parents[1] / "notebooks" / "assignments"))


def capture(name: str, traffic) -> int:  # type: ignore[no-untyped-def]
    out = ROOT / name / "grading" / "heldback.pcap"
    out.parent.mkdir(parents=True, exist_ok=True)
    with pktlab.Lab("router") as lab:
        s = pktlab.attach(1, netns=lab.router, hook="FORWARD", snaplen=65535, record_size=10_000)
        try:
            traffic(lab)
        finally:
            s.detach()
        n = s.to_pcap(out)
    print(f"{out.relative_to(ROOT.parent.parent)}: {n} packets")
    return n


def nat_capture(out: Path, traffic) -> int:  # type: ignore[no-untyped-def]
    """What a NAT on the router sees of ``traffic``: outbound packets (FORWARD, from the client's network) and
    packets to the router's outside address (PREROUTING), as they arrived, with the reference NAT translating."""
    ns: dict = {}
    exec((ROOT / "nat" / "grading" / "reference.py").read_text(), ns)
    with pktlab.Lab("router") as lab:
        lab.server.run(["ip", "-4", "route", "del", "default"])  # the server knows no way back but the NAT
        outbound = pktlab.attach(1, rule="-s 10.77.1.0/24", netns=lab.router, hook="FORWARD", snaplen=65535,
                                 record_size=10_000, gso=False, name="nat-out")  # fmt: skip
        inbound = pktlab.attach(2, rule="-d 10.77.2.1", netns=lab.router, hook="PREROUTING", snaplen=65535,
                                record_size=10_000, gso=False, name="nat-in")  # fmt: skip
        for s in (outbound, inbound):
            s.add_handler(ns["nat"], "nat")
        try:
            traffic(lab)
        finally:
            outbound.detach()
            inbound.detach()
        if outbound.errors or inbound.errors:
            raise RuntimeError(f"the reference NAT failed: {(outbound.errors or inbound.errors)[0]}")
        return pktlab.to_pcap([outbound, inbound], out)


def from_outside(lab: pktlab.Lab, udp_ports: tuple[int, ...], tcp_port: int | None, ping: bool) -> None:
    """Packets from the server to the router's outside address that belong to no flow."""
    code = "import socket\n"
    for port in udp_ports:
        code += f"socket.socket(socket.AF_INET, socket.SOCK_DGRAM).sendto(b'hello', ('10.77.2.1', {port}))\n"
    if tcp_port is not None:
        code += (f"try: socket.create_connection(('10.77.2.1', {tcp_port}), timeout=0.5)\n"
                 "except OSError: pass\n")  # fmt: skip
    lab.server.run([sys.executable, "-c", code], timeout=10)
    if ping:
        lab.server.ping("10.77.2.1", count=1, wait=0.5)


def nat_traffic(lab: pktlab.Lab) -> None:
    """A DNS exchange, a TCP connection, pings and one-way UDP through the NAT; then what comes from outside to no
    flow (a datagram, a datagram to the TCP flow's port, a SYN, a ping)."""
    for what, ok in (("dns", lab.dns("lab.example.", answer="10.77.2.53").get("answered")),
                     ("tcp", lab.tcp(8192, port=9001).get("received") == 8192),
                     ("ping", lab.ping(2, interval=0.1).received == 2),
                     ("udp", lab.udp(3).received == 3)):  # fmt: skip
        if not ok:
            raise RuntimeError(f"the {what} traffic did not get through the reference NAT")
    from_outside(lab, (45000, 40001), 45001, True)


def police_traffic(lab: pktlab.Lab) -> None:
    """A flow at twice the policer's rate and one at half of it, side by side; then a flow of two bursts of 20
    datagrams a second apart (500-byte IP packets throughout)."""
    size = 500 - 28
    fast = lab.start_udp(400, size=size, rate=200, port=9000, timeout=10)
    slow = lab.start_udp(100, size=size, rate=50, port=9001, timeout=10)
    if fast.wait().received != 400 or slow.wait().received != 100:
        raise RuntimeError("the policer's traffic lost datagrams on its way (no policer on the path)")
    bursts = (
        "import socket, time\n"
        "s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n"
        "for b in range(2):\n"
        f"    for i in range(20): s.sendto(bytes({size}), ('{lab.server.addr}', 9002))\n"
        "    time.sleep(1.0 if b == 0 else 0)\n"
    )
    lab.client.run([sys.executable, "-c", bursts], timeout=10)


def firewall_traffic(lab: pktlab.Lab) -> None:
    """A connection to the service port, a SYN to another port, a stray ACK, some UDP."""
    lab.tcp(8192, port=9001)
    refused = (
        "import socket\n"
        f"try: socket.create_connection(('{lab.server.addr}', 9002), timeout=1)\n"
        "except OSError: pass\n"
    )
    lab.client.run([sys.executable, "-c", refused], timeout=10)
    stray = (
        "from scapy.all import IP, TCP, send\n"
        f"send(IP(dst='{lab.server.addr}')/TCP(sport=40000, dport=9001, flags='A', seq=1000, ack=2000), verbose=0)\n"
    )
    lab.client.run([sys.executable, "-c", stray], timeout=30)
    lab.udp(5)


def dns_traffic(lab: pktlab.Lab) -> None:
    """Answers for lab.example. and other.example., and a few UDP datagrams that are not DNS."""
    lab.dns("lab.example.", answer="10.77.2.53")
    lab.dns("other.example.", answer="10.77.2.54")
    lab.udp(3)


def main() -> int:
    capture("firewall", firewall_traffic)
    capture("dns-rewriter", dns_traffic)
    capture("policer", police_traffic)
    out = ROOT / "nat" / "grading" / "heldback.pcap"
    print(f"{out.relative_to(ROOT.parent.parent)}: {nat_capture(out, nat_traffic)} packets")
    return 0


if __name__ == "__main__":
    sys.exit(main())
