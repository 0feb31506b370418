"""The committed captures match their manifest and show what it says (no kernel needed)."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
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


def _same(view, layer, pairs: dict[str, str]) -> None:
    for ours, theirs in pairs.items():
        a, b = getattr(view, ours), getattr(layer, theirs)
        assert a == (int(b) if isinstance(a, int) and not isinstance(b, str) else b), (ours, a, b)


def test_every_view_field_matches_scapy_on_the_captures() -> None:
    from scapy.layers.dns import DNS
    from scapy.layers.http import HTTPRequest, HTTPResponse
    from scapy.layers.inet import IP
    from scapy.layers.inet6 import IPv6

    seen = set()
    for entry in MANIFEST:
        if entry["name"] == "lab-malformed":
            continue  # scapy and pktlab may disagree on broken packets; see the test below
        for sp in load(entry["name"]):
            p = Packet(None, bytes(sp))
            if IP in sp:
                seen.add("ip")
                _same(
                    p.ip,
                    sp[IP],
                    {
                        f: f
                        for f in ("version", "ihl", "tos", "len", "id", "frag", "ttl", "proto", "chksum", "src", "dst")
                    },
                )
                assert p.ip.flags == int(sp[IP].flags)
            if IPv6 in sp:
                seen.add("ipv6")
                _same(p.ipv6, sp[IPv6], {f: f for f in ("version", "tc", "fl", "plen", "nh", "hlim", "src", "dst")})
            if TCP in sp:
                seen.add("tcp")
                _same(
                    p.tcp,
                    sp[TCP],
                    {f: f for f in ("sport", "dport", "seq", "ack", "dataofs", "window", "chksum", "urgptr")},
                )
                assert int(p.tcp.flags) == int(sp[TCP].flags)
                assert p.payload == bytes(sp[TCP].payload)
            if UDP in sp:
                seen.add("udp")
                _same(p.udp, sp[UDP], {f: f for f in ("sport", "dport", "len", "chksum")})
            if ICMP in sp:
                seen.add("icmp")
                _same(p.icmp, sp[ICMP], {f: f for f in ("type", "code", "chksum", "id", "seq")})
            if DNS in sp:
                seen.add("dns")
                d, ref = p.dns, sp[DNS]
                _same(
                    d,
                    ref,
                    {
                        f: f
                        for f in (
                            "id",
                            "qr",
                            "opcode",
                            "aa",
                            "tc",
                            "rd",
                            "ra",
                            "rcode",
                            "qdcount",
                            "ancount",
                            "nscount",
                            "arcount",
                        )
                    },
                )
                assert d.qname == ref.qd[0].qname.decode()
                assert [a.address for a in d.answers] == [rr.rdata for rr in (ref.an or [])]
            if TCP in sp and b"HTTP/1." in bytes(sp[TCP].payload).split(b"\r\n", 1)[0]:
                raw = bytes(sp[TCP].payload)
                h = p.http
                if raw.startswith(b"HTTP/"):
                    seen.add("http response")
                    ref = HTTPResponse(raw)
                    assert (h.status, h.reason) == (int(ref.Status_Code), ref.Reason_Phrase.decode())
                else:
                    seen.add("http request")
                    ref = HTTPRequest(raw)
                    assert (h.method, h.target, h.version) == (
                        ref.Method.decode(),
                        ref.Path.decode(),
                        ref.Http_Version.decode(),
                    )
                    assert h.headers["Host"] == ref.Host.decode()
    assert seen == {"ip", "ipv6", "tcp", "udp", "icmp", "dns", "http request", "http response"}


def test_malformed_packets_only_raise_packet_format_error_and_a_replay_survives_them() -> None:
    import pktlab
    from tests.conftest import read_every_view

    pkts = pktlab.datasets.load("lab-malformed").packets()
    assert len(pkts) == 12
    outcomes = [read_every_view(p) for p in pkts]
    assert {kind for o in outcomes for kind, _ in o} <= {"ok", "PacketFormatError"}  # nothing else escapes
    assert sum(any(kind == "PacketFormatError" for kind, _ in o) for o in outcomes) >= 6
    s = pktlab.replay("lab-malformed")
    s.add_handler(lambda p: (read_every_view(p), None)[1], "read_all")
    st = s.run()
    assert st.packets == 12 and st.counters["accept"] == 12 and st.counters["errors"] == 0


def test_tftp_capture_has_a_whole_read() -> None:
    pkts = load("lab-tftp")
    ops = [bytes(p[UDP].payload)[:2] for p in pkts]
    assert ops[0] == b"\x00\x01" and bytes(pkts[0][UDP].payload)[2:9] == b"lab.bin" and pkts[0][UDP].dport == 69
    assert ops.count(b"\x00\x03") == 3 and ops.count(b"\x00\x04") == 3


def test_the_recorded_traces_show_a_packets_life_and_three_drops() -> None:
    import pktlab

    assert pktlab.datasets.trace_names() == ["lab-drops", "lab-ping"]
    ping = pktlab.datasets.trace("lab-ping")
    request, reply = ping.packets
    assert request.hosts == ["client", "router", "server"] and reply.hosts == ["server", "router", "client"]
    for p in ping.packets:
        times = [s.t_ns for s in p.steps]
        assert times == sorted(times) and all(s.exact for s in p.steps)
        assert [s.kind for s in p.steps if s.host == "router"].count("pktlab") == 1
    drops = pktlab.datasets.trace("lab-drops").drops
    assert list(drops["reason"]) == ["NO_SOCKET", "NETFILTER_DROP", "NOT_SPECIFIED"]
    assert "udp dport 9301 drop" in drops["by"][1] and "handler no_9302" in drops["by"][2]
    with pytest.raises(pktlab.PktlabError, match="the recorded traces are lab-drops, lab-ping"):
        pktlab.datasets.trace("nope")


def test_the_slow_page_capture_has_the_whole_page_and_its_retransmissions() -> None:
    import sys

    import pktlab

    load("lab-web-slow")
    sys.path.insert(0, str(DATA.parent / "scripts"))
    try:
        from make_datasets import slow_page_content
    finally:
        sys.path.pop(0)
    s = pktlab.replay("lab-web-slow", snaplen=65535, record_size=5000)
    s.run()
    df = s.df
    assert set(df["flow"]) == {0} and list(df.loc[:1, "flags"]) == ["S", "AS"]
    rtt = df.loc[1, "t"] - df.loc[0, "t"]
    assert 0.040 <= rtt < 0.080  # the 20 ms delay each way, seen from the router
    marks = df["analysis"].dropna()
    assert marks.str.contains("retransmission").sum() >= 3 and marks.str.contains("duplicate ack").any()
    f = s.follow(0)
    assert f.missing == {"client": 0, "server": 0} and f.client.startswith(b"GET /page.bin HTTP/1.1\r\n")
    assert f.server.startswith(b"HTTP/1.0 200 OK\r\n") and f.server.endswith(slow_page_content())
