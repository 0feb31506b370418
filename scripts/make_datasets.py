"""Capture the datasets in datasets/ from real lab traffic, and write their manifest.

Run as root: `.venv/bin/python scripts/make_datasets.py`.  Each capture is what a
pktlab session saw at the server's INPUT hook (raw IP, whole packets).  Packet
timings, ports chosen by the kernel, TCP sequence numbers and checksums differ
from one run to the next; the kinds and counts of packets do not.
"""

from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path

import pktlab

OUT = Path(__file__).resolve().parents[1] / "datasets"


def capture(name: str, rule: str, traffic, description: str) -> dict:  # type: ignore[no-untyped-def]
    with pktlab.Lab() as lab:
        s = pktlab.attach(1, rule=rule, netns=lab.server, snaplen=65535, record_size=10_000)
        try:
            traffic(lab)
        finally:
            s.detach()
        path = OUT / f"{name}.pcap"
        n = s.to_pcap(path)
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    return {
        "name": name,
        "file": path.name,
        "description": description,
        "packets": n,
        "bytes": path.stat().st_size,
        "sha256": digest,
        "linktype": "raw IPv4/IPv6 (101)",
    }


def main() -> int:
    OUT.mkdir(exist_ok=True)
    entries = [
        capture(
            "lab-udp",
            "-p udp --dport 9000",
            lambda lab: lab.udp(20, size=32),
            "20 numbered UDP datagrams, client 10.77.1.1 -> server 10.77.1.2 port 9000 (first 4 payload "
            "bytes: the sequence number)",
        ),
        capture(
            "lab-icmp",
            "-p icmp",
            lambda lab: lab.ping(4, interval=0.05),
            "4 ICMP echo requests from the client, seen at the server",
        ),
        capture(
            "lab-tcp",
            "-p tcp --dport 9001",
            lambda lab: lab.tcp(32 * 1024),
            "one TCP connection to port 9001 carrying 32 KiB: handshake, data segments, teardown "
            "(client -> server direction)",
        ),
    ]
    manifest = OUT / "MANIFEST.json"
    manifest.write_text(json.dumps(entries, indent=2) + "\n")
    for e in entries:
        print(f"{e['file']}: {e['packets']} packets, {e['bytes']} bytes")
    return 0


if __name__ == "__main__":
    sys.exit(main())
