"""Capture the held-back traffic the assignment grader replays, from real lab traffic.

Run as root: `.venv/bin/python scripts/make_grading_data.py`.  Each capture is
what the router of a client-router-server lab forwarded (both directions),
written to notebooks/assignments/<name>/grading/heldback.pcap.
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
    return 0


if __name__ == "__main__":
    sys.exit(main())
