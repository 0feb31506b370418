"""Building answers and checking user-built packets (pktlab.packet.replies), checked against scapy."""

from __future__ import annotations

import pytest

from pktlab import PacketFormatError, SessionError
from pktlab.packet.replies import outgoing, tcp_flag_bits
from pktlab.testing import icmp_echo, tcp, udp


def _checksums_ok(data: bytes) -> bool:
    """Whether scapy, recomputing every checksum, gets the same bytes."""
    from scapy.layers.inet import IP
    from scapy.layers.inet6 import IPv6

    cls = IP if data[0] >> 4 == 4 else IPv6
    p = cls(data)
    if cls is IP:
        del p.chksum
    l4 = p.payload
    delattr(l4, "cksum" if "cksum" in l4.fields else "chksum")  # (del, not the dict: scapy drops its cache)
    return bytes(cls(bytes(p))) == data


@pytest.mark.parametrize("ipv6", [False, True])
def test_a_udp_answer_swaps_addresses_and_ports(ipv6: bool) -> None:
    q = udp(payload=b"question", sport=40001, dport=53, ipv6=ipv6)
    a = q.make_reply(b"an answer")
    ip_q, ip_a = (q.ipv6, a.ipv6) if ipv6 else (q.ip, a.ip)
    assert (ip_a.src, ip_a.dst) == (ip_q.dst, ip_q.src)
    assert (a.udp.sport, a.udp.dport, a.udp.payload) == (53, 40001, b"an answer")
    assert _checksums_ok(bytes(a)) and not a.modified


def test_an_echo_request_gets_an_echo_reply_with_its_id_sequence_and_data() -> None:
    from scapy.layers.inet import ICMP, IP

    q = icmp_echo(seq=7)
    q.icmp.payload = b"ping data"
    a = q.make_reply()
    p = IP(bytes(a))
    assert (p[ICMP].type, p[ICMP].seq, bytes(p[ICMP].payload)) == (0, 7, b"ping data")
    assert _checksums_ok(bytes(a))
    assert IP(bytes(q.make_reply(b"other"))).load == b"other"


def test_an_icmpv6_echo_request_gets_an_echo_reply() -> None:
    from scapy.layers.inet6 import ICMPv6EchoRequest, IPv6

    from pktlab import Packet

    q = Packet(None, bytes(IPv6(src="fd77:1::1", dst="fd77:1::2") / ICMPv6EchoRequest(id=3, seq=9, data=b"x6")))
    a = q.make_reply()
    assert (a.icmpv6.type, a.icmpv6.id, a.icmpv6.seq, a.icmpv6.payload) == (129, 3, 9, b"x6")
    assert _checksums_ok(bytes(a))


def test_a_tcp_answer_continues_the_conversation() -> None:
    q = tcp(flags="PA", payload=b"GET / HTTP/1.0\r\n\r\n", seq=1000, ack=5000, sport=40002, dport=80)
    a = q.make_reply(b"HTTP/1.0 200 OK\r\n\r\n", flags="PA")
    t = a.tcp
    assert (t.sport, t.dport, t.seq, t.ack, str(t.flags)) == (80, 40002, 5000, 1000 + 18, "PA")
    assert t.payload == b"HTTP/1.0 200 OK\r\n\r\n" and _checksums_ok(bytes(a))
    syn = tcp(flags="S", seq=0xFFFFFFFF)
    sa = syn.make_reply(flags="SA", seq=77)
    assert (sa.tcp.seq, sa.tcp.ack, str(sa.tcp.flags)) == (77, 0, "SA")  # the SYN counts one, wrapping


def test_a_tcp_answer_from_the_handlers_own_segment() -> None:
    from scapy.layers.inet import TCP

    q = tcp(flags="PA", payload=b"x", sport=40003, dport=80)
    a = q.make_reply(segment=TCP(sport=80, dport=40003, flags="R", seq=9))
    assert (a.tcp.sport, a.tcp.dport, str(a.tcp.flags), a.tcp.seq) == (80, 40003, "R", 9)
    assert _checksums_ok(bytes(a))
    with pytest.raises(PacketFormatError, match="no valid header"):
        q.make_reply(segment=b"short")
    with pytest.raises(PacketFormatError, match="segment= answers a TCP packet"):
        udp().make_reply(segment=b"x" * 20)


def test_what_cannot_be_answered_says_why() -> None:
    from scapy.layers.inet import ICMP, IP

    from pktlab import Packet

    unreachable = Packet(None, bytes(IP(src="10.77.1.1", dst="10.77.1.2") / ICMP(type=3, code=1)))
    with pytest.raises(PacketFormatError, match="not an echo request"):
        unreachable.make_reply()
    gre = Packet(None, bytes(IP(src="10.77.1.1", dst="10.77.1.2", proto=47) / bytes(8)))
    with pytest.raises(PacketFormatError, match="protocol 47 cannot be answered"):
        gre.make_reply(b"x")
    later = Packet(None, bytes(IP(src="10.77.1.1", dst="10.77.1.2", proto=17, frag=100) / bytes(8)))
    with pytest.raises(PacketFormatError, match="later fragment"):
        later.make_reply(b"x")
    with pytest.raises(PacketFormatError, match="does not fit an IP packet"):
        udp().make_reply(bytes(70000))
    with pytest.raises(PacketFormatError, match="must be bytes, str or a scapy packet"):
        udp().make_reply(12)
    with pytest.raises(PacketFormatError, match="not a TCP flag"):
        tcp_flag_bits("SX")


def test_reply_of_a_packet_without_a_session_says_how_to_build_it() -> None:
    with pytest.raises(SessionError, match="make_reply"):
        udp().reply(b"x")


def test_outgoing_checks_and_fixes_a_users_packet() -> None:
    from scapy.layers.inet import IP, UDP
    from scapy.layers.l2 import Ether

    raw = bytearray(bytes(IP(src="10.77.1.2", dst="10.77.1.1") / UDP(sport=1, dport=2) / b"data"))
    raw[-1:] = b"!"  # checksum now wrong
    assert not _checksums_ok(bytes(raw))
    assert _checksums_ok(bytes(outgoing(bytes(raw))))
    assert bytes(outgoing(bytes(raw), fix=False)) == bytes(raw)
    framed = Ether() / IP(src="10.77.1.2", dst="10.77.1.1") / UDP() / b"x"
    assert bytes(outgoing(framed)) == bytes(framed.payload)
    for bad, why in ((b"\x00" * 30, "not an IPv4/IPv6 packet"), (b"\x60" + bytes(30), "too few for an IPv6"),
                     (b"\x4f" + bytes(20), "header length 60 does not fit")):  # fmt: skip
        with pytest.raises(PacketFormatError, match=why):
            outgoing(bad)
