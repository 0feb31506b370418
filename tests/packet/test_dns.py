"""The DNS view against scapy's dissection (no kernel needed)."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scapy.layers.dns import DNS, DNSQR, DNSRR
from scapy.layers.inet import IP, TCP, UDP

from pktlab import Packet, PacketFormatError
from tests.conftest import read_every_view

QUERY = (
    IP(src="10.77.1.1", dst="10.77.1.2") / UDP(sport=5353, dport=53) / DNS(id=77, rd=1, qd=DNSQR(qname="lab.example."))
)
ANSWER = (
    IP(src="10.77.1.2", dst="10.77.1.1")
    / UDP(sport=53, dport=5353)
    / DNS(
        id=77,
        qr=1,
        aa=1,
        rd=1,
        ra=1,
        qd=DNSQR(qname="lab.example."),
        an=[
            DNSRR(rrname="lab.example.", type="CNAME", ttl=60, rdata="host.lab.example."),
            DNSRR(rrname="host.lab.example.", type="A", ttl=300, rdata="10.77.1.2"),
            DNSRR(rrname="host.lab.example.", type="AAAA", ttl=300, rdata="fd77:1::2"),
        ],
    ).compress()  # names after the first become pointers
)


def test_query_fields_match_scapy() -> None:
    p = Packet(None, bytes(QUERY))
    ref = IP(bytes(QUERY))[DNS]
    d = p.dns
    assert (d.id, d.qr, d.opcode, d.rd, d.qdcount, d.ancount) == (ref.id, ref.qr, ref.opcode, ref.rd, 1, 0)
    assert d.qname == "lab.example." and d.questions[0].type == 1 and d.questions[0].cls == 1


def test_answers_with_compression_match_scapy_and_rewrite() -> None:
    raw = bytes(ANSWER)
    assert raw.count(b"\xc0") >= 1  # scapy compressed the repeated names
    p = Packet(None, raw)
    ref = IP(raw)[DNS]
    ans = p.dns.answers
    assert [a.name for a in ans] == [r.rrname.decode() for r in ref.an]
    assert [a.type for a in ans] == [5, 1, 28] and [a.ttl for a in ans] == [60, 300, 300]
    assert ans[0].target == "host.lab.example." and ans[1].address == "10.77.1.2" and ans[2].address == "fd77:1::2"
    ans[1].address = "10.77.1.9"
    ans[1].ttl = 5
    out = IP(bytes(p))
    assert out[DNS].an[1].rdata == "10.77.1.9" and out[DNS].an[1].ttl == 5
    ref2 = IP(bytes(out))
    del ref2[UDP].chksum
    assert bytes(out) == bytes(IP(bytes(ref2)))  # the UDP checksum was fixed
    with pytest.raises(ValueError, match="only A and AAAA"):
        ans[0].address = "1.2.3.4"


def test_dns_over_tcp_skips_the_length_prefix() -> None:
    msg = bytes(QUERY[DNS])
    p = Packet(None, bytes(IP() / TCP(sport=40000, dport=53, flags="PA") / (len(msg).to_bytes(2, "big") + msg)))
    assert p.dns.qname == "lab.example." and p.dns.id == 77
    assert Packet(None, bytes(IP() / TCP(dport=53, flags="S"))).dns is None
    assert Packet(None, bytes(IP() / UDP(sport=40000, dport=54) / msg)).dns is None


def test_pointer_loops_and_cut_names_raise_packet_format_error() -> None:
    header = (1).to_bytes(2, "big") + b"\x01\x00" + b"\x00\x01" + bytes(6)
    loop = header + b"\xc0\x0c" + b"\x00\x01\x00\x01"  # a name that points at itself
    p = Packet(None, bytes(IP() / UDP(dport=53) / loop))
    with pytest.raises(PacketFormatError, match="more than 32 pointers"):
        _ = p.dns.questions
    cut = header + b"\x05lab"
    with pytest.raises(PacketFormatError, match="runs past the end"):
        _ = Packet(None, bytes(IP() / UDP(dport=53) / cut)).dns.qname


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(st.integers(28, 140), st.integers(0, 255)), max_size=5), st.integers(0, 60))
def test_mutated_dns_only_raises_packet_format_error(flips, cut) -> None:
    data = bytearray(bytes(ANSWER))
    for at, value in flips:
        if at < len(data):
            data[at] = value
    p = Packet(None, bytes(data[: len(data) - cut]))
    bugs = [o for o in read_every_view(p) if o[0] not in ("ok", "PacketFormatError")]
    assert not bugs
    try:
        d = p.dns
        if d is not None:
            d.as_dict()
            [(a.name, a.address, a.target, a.data) for a in d.answers]
    except PacketFormatError:
        pass
