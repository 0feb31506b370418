"""The committed captures match their manifest and show what it says (no kernel needed)."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from scapy.layers.inet import ICMP, TCP, UDP
from scapy.utils import rdpcap

from pktlab import Packet

DATA = Path(__file__).resolve().parents[1] / "datasets"
MANIFEST = json.loads((DATA / "MANIFEST.json").read_text())


def load(name: str):
    entry = next(e for e in MANIFEST if e["name"] == name)
    path = DATA / entry["file"]
    assert hashlib.sha256(path.read_bytes()).hexdigest() == entry["sha256"]
    pkts = rdpcap(str(path))
    assert len(pkts) == entry["packets"]
    return pkts


def test_udp_capture_has_the_numbered_datagrams() -> None:
    pkts = load("lab-udp")
    assert all(UDP in p and p[UDP].dport == 9000 for p in pkts)
    assert [int.from_bytes(bytes(p[UDP].payload)[:4], "big") for p in pkts] == list(range(20))
    # pktlab's own views read the same fields
    views = [Packet(None, bytes(p)) for p in pkts]
    assert {v.ip.src for v in views} == {"10.77.1.1"} and {v.udp.dport for v in views} == {9000}


def test_icmp_capture_has_echo_requests() -> None:
    pkts = load("lab-icmp")
    assert [p[ICMP].type for p in pkts] == [8] * 4


def test_tcp_capture_has_a_whole_connection() -> None:
    pkts = load("lab-tcp")
    flags = [str(p[TCP].flags) for p in pkts]
    assert flags[0] == "S" and any("F" in f for f in flags)
    assert sum(len(p[TCP].payload) for p in pkts) == 32 * 1024


def test_every_file_is_in_the_manifest_and_small() -> None:
    files = {p.name for p in DATA.glob("*.pcap")}
    assert files == {e["file"] for e in MANIFEST}
    assert all(e["bytes"] <= 1 << 20 for e in MANIFEST)
