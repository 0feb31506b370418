"""Ethernet frames (as read from capture files): the link header, then the usual views after it."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st
from scapy.layers.inet import IP, UDP
from scapy.layers.inet6 import IPv6
from scapy.layers.l2 import ARP, Dot1Q, Ether

from pktlab import Packet
from tests.conftest import read_every_view

MAC_A, MAC_B = "02:00:00:00:00:01", "02:00:00:00:00:02"


def frame(*layers) -> Packet:
    pkt = Ether(src=MAC_A, dst=MAC_B)
    for layer in layers:
        pkt = pkt / layer
    return Packet(None, bytes(pkt), link="ethernet")


def test_ethernet_then_ip_views() -> None:
    p = frame(IP(src="10.77.1.1", dst="10.77.1.2") / UDP(sport=5, dport=9000) / b"hi")
    assert (p.eth.src, p.eth.dst, p.eth.type, p.eth.vlan) == (MAC_A, MAC_B, 0x0800, None)
    assert p.ip.src == "10.77.1.1" and p.udp.dport == 9000 and p.payload == b"hi" and p.version == 4
    assert "udp 10.77.1.1:5 > 10.77.1.2:9000" in repr(p)
    p.ip.dst = "10.77.2.2"
    p.udp.payload = b"rewritten"
    out = Ether(bytes(p))
    assert out.src == MAC_A and out[IP].dst == "10.77.2.2" and bytes(out[UDP].payload) == b"rewritten"
    ref = Ether(bytes(out))
    del ref[IP].len, ref[IP].chksum, ref[UDP].len, ref[UDP].chksum
    assert bytes(Ether(bytes(ref))) == bytes(out)  # lengths and checksums fixed after the link header
    assert p.scapy[IP].dst == "10.77.2.2"


def test_vlan_tag_and_ipv6() -> None:
    p = frame(Dot1Q(vlan=42) / IPv6(src="fd77:1::1", dst="fd77:1::2") / UDP(dport=53) / b"q")
    assert p.eth.vlan == 42 and p.ipv6.dst == "fd77:1::2" and p.udp.dport == 53 and p.ip is None


def test_non_ip_frames_have_no_ip_views() -> None:
    p = frame(ARP(psrc="10.77.1.1", pdst="10.77.1.2"))
    assert p.eth.type == 0x0806 and p.ip is None and p.ipv6 is None and p.udp is None and p.version == 0
    assert "non-IP frame (type 0x0806)" in repr(p)
    assert not [o for o in read_every_view(p) if o[0] not in ("ok", "PacketFormatError")]
    assert "eth" in p._repr_html_()


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=90))
def test_arbitrary_frames_only_raise_packet_format_error(data: bytes) -> None:
    p = Packet(None, data, link="ethernet")
    assert not [o for o in read_every_view(p) if o[0] not in ("ok", "PacketFormatError")]
    if p.eth is not None:
        p.eth.as_dict()
    assert bytes(p) == data


def test_set_payload_replaces_the_ip_packet_and_keeps_the_link_header() -> None:
    p = frame(Dot1Q(vlan=7) / IP(src="10.77.1.1", dst="10.77.1.2") / UDP(dport=9000) / b"old")
    new = IPv6(src="fd77:1::1", dst="fd77:1::2") / UDP(sport=1, dport=53) / b"new payload"
    p.set_payload(bytes(new))
    out = Ether(bytes(p))
    assert out.src == MAC_A and out[Dot1Q].vlan == 7 and out[Dot1Q].type == 0x86DD  # EtherType follows the version
    assert p.ip is None and p.ipv6.dst == "fd77:1::2" and p.udp.dport == 53 and p.payload == b"new payload"
    assert bytes(p)[18:] == bytes(new)
    p.udp.dport = 54  # writes land in the new IP packet, after the link header
    assert Ether(bytes(p))[UDP].dport == 54


def test_set_payload_refuses_what_a_frame_cannot_carry() -> None:
    import pytest

    from pktlab import PacketFormatError

    p = frame(IP(dst="10.77.1.2") / UDP(dport=9000))
    with pytest.raises(PacketFormatError, match="not an IPv4 or IPv6 packet"):
        p.set_payload(b"\x00\x01\x02")
    with pytest.raises(PacketFormatError, match="no bytes"):
        p.set_payload(b"")
    arp = frame(ARP(psrc="10.77.1.1", pdst="10.77.1.2"))
    with pytest.raises(PacketFormatError, match="no IP packet"):
        arp.set_payload(bytes(IP(dst="10.77.1.2")))
