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


def capture(  # type: ignore[no-untyped-def]
    name: str,
    rule: str,
    traffic,
    description: str,
    *,
    topology: str = "pair",
    on: str = "server",
    hook: str = "INPUT",
    family: str = "ipv4",
) -> dict:
    with pktlab.Lab(topology) as lab:
        s = pktlab.attach(1, rule=rule, netns=lab[on], hook=hook, family=family, snaplen=65535, record_size=10_000)
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


def http_get(lab: pktlab.Lab) -> None:
    """One HTTP/1.1 GET from the client to a Python http.server on the server, through the router."""
    import tempfile

    with tempfile.TemporaryDirectory() as root:
        Path(root, "index.html").write_text("<h1>pktlab</h1>\n")
        lab.server.popen([sys.executable, "-m", "http.server", "8080", "--directory", root])
        from pktlab.lab import wait_until

        if not wait_until(lambda: ":8080" in lab.server.run("ss -ltn").stdout, timeout=10):
            raise RuntimeError("the HTTP server in the lab did not start listening")
        fetch = (
            f"import urllib.request; print(urllib.request.urlopen('http://{lab.server.addr}:8080/index.html').status)"
        )
        lab.client.run([sys.executable, "-c", fetch], timeout=20)


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
        capture(
            "lab-dns",
            "-p udp -m multiport --ports 53",
            lambda lab: lab.dns("lab.example.", answer="10.77.2.53"),
            "one DNS query (A, lab.example.) and its answer, seen forwarded by the router of a "
            "client-router-server lab",
            topology="router",
            on="router",
            hook="FORWARD",
        ),
        capture(
            "lab-http",
            "-p tcp -m multiport --ports 8080",
            http_get,
            "one HTTP/1.1 GET of /index.html and its HTTP/1.0 200 response (Python's http.server): the "
            "whole connection, both directions, seen forwarded by the router",
            topology="router",
            on="router",
            hook="FORWARD",
        ),
        capture(
            "lab-udp6",
            "-p udp --dport 9000",
            lambda lab: lab.udp(10, size=32, ipv6=True),
            "10 numbered UDP datagrams over IPv6, fd77:1::1 -> fd77:1::2 port 9000",
            family="ipv6",
        ),
    ]
    manifest = OUT / "MANIFEST.json"
    manifest.write_text(json.dumps(entries, indent=2) + "\n")
    for e in entries:
        print(f"{e['file']}: {e['packets']} packets, {e['bytes']} bytes")
    return 0


if __name__ == "__main__":
    sys.exit(main())
