"""Packet and views on bytes made by scapy (no kernel needed)."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pktlab.packet._core import payload_sums_taken, shared_copies
from scapy.layers.inet import ICMP, IP, TCP, UDP
from scapy.layers.inet6 import IPv6, IPv6ExtHdrDestOpt, IPv6ExtHdrHopByHop
from scapy.packet import Raw

from pktlab import ACCEPT, DROP, REPEAT, Packet, PacketFormatError
from pktlab.packet.model import summarize
from tests.conftest import read_every_view


def P(scapy_pkt) -> Packet:
    return Packet(None, bytes(scapy_pkt))


def test_reads_ipv4_udp_fields() -> None:
    p = P(IP(src="10.77.1.1", dst="10.77.1.2", ttl=33) / UDP(sport=1234, dport=9000) / b"hello")
    assert p.ip.src == "10.77.1.1" and p.ip.dst == "10.77.1.2" and p.ip.ttl == 33
    assert p.ip.version == 4 and p.ip.ihl == 5 and p.ip.proto == 17
    assert p.udp.sport == 1234 and p.udp.dport == 9000 and p.udp.len == 13
    assert p.udp.payload == b"hello" and p.payload == b"hello"
    assert p.tcp is None and p.icmp is None and p.ipv6 is None
    assert len(p) == 33 and bytes(p) == bytes(IP(bytes(p)))


def test_tcp_flags_and_options() -> None:
    raw = IP(dst="10.0.0.1") / TCP(flags="SA", options=[("MSS", 1460), ("NOP", None), ("WScale", 7)]) / b"x"
    p = P(raw)
    assert p.tcp.flags.syn and p.tcp.flags.ack and not p.tcp.flags.fin
    assert p.tcp.flags == "SA" and str(p.tcp.flags) == "SA"
    assert p.tcp.header_len == len(TCP(bytes(raw[TCP]))) - 1
    assert p.tcp.options.startswith(b"\x02\x04\x05\xb4")
    assert p.payload == b"x"


def test_ipv4_options_shift_the_transport_header() -> None:
    raw = IP(dst="10.0.0.1", options=b"\x94\x04\x00\x00") / UDP(dport=53) / b"q"
    p = P(raw)
    assert p.ip.ihl == 6 and p.ip.options == b"\x94\x04\x00\x00"
    assert p.udp.dport == 53 and p.payload == b"q"


def test_ipv6_extension_headers_are_walked() -> None:
    raw = IPv6(src="fd77::1", dst="fd77::2", hlim=9) / IPv6ExtHdrHopByHop() / IPv6ExtHdrDestOpt() / UDP(dport=7) / b"v6"
    p = P(raw)
    assert p.ip is None and p.ipv6.hlim == 9 and p.ipv6.dst == "fd77::2"
    assert p.udp.dport == 7 and p.payload == b"v6"


@pytest.mark.parametrize(
    "pkt",
    [
        IP(src="1.2.3.4", dst="5.6.7.8") / UDP(sport=1, dport=2) / b"abcdefg",
        IP(src="1.2.3.4", dst="5.6.7.8") / TCP(sport=1, dport=2, flags="PA") / b"payload!",
        IP(src="1.2.3.4", dst="5.6.7.8") / ICMP(id=5, seq=6) / b"ping",
        IPv6(src="fd77::1", dst="fd77::2") / UDP(sport=1, dport=2) / b"six",
        IPv6(src="fd77::1", dst="fd77::2") / IPv6ExtHdrDestOpt() / TCP(sport=1, dport=2) / b"six",
    ],
    ids=["udp", "tcp", "icmp", "udp6", "tcp6-ext"],
)
def test_rewrites_fix_lengths_and_checksums_like_scapy(pkt) -> None:
    p = P(pkt)
    t = p.transport
    if hasattr(type(t), "sport"):
        t.sport = 4444
    p.payload = b"a different, longer payload"
    if p.ip:
        p.ip.dst = "9.9.9.9"
        p.ip.ttl = 1
    assert_scapy_agrees(bytes(p))
    assert p.modified


def assert_scapy_agrees(out: bytes) -> None:
    """Let scapy recompute every length and checksum of ``out`` from scratch: it must get ``out``."""
    ref_layer = IP if out[0] >> 4 == 4 else IPv6
    ref = ref_layer(out)
    for layer in (ref_layer, UDP, TCP, ICMP):
        if layer in ref:
            for f in ("chksum", "len", "plen"):
                if f in ref[layer].fields:
                    delattr(ref[layer], f)  # (scapy then builds the packet again: no cached bytes)
    assert out == bytes(ref)


def test_the_fix_up_says_why_it_left_a_malformed_rewrite_as_written() -> None:
    """Writes that leave headers the fix-up cannot read: the packet stays as written from that header on, and
    fix_packet says why (the dispatcher tells the user); a well-formed packet, a fragment and a packet of no IP
    protocol it fixes give None."""
    from pktlab.packet._core import fix_packet

    def fixed(data: bytes) -> tuple[object, bytes]:
        p = Packet(None, data)
        why = fix_packet(p)
        return why, bytes(p)  # (fixed now: bytes() does not fix it again)

    udp = bytes(IP(src="10.77.1.1", dst="10.77.1.2") / UDP(dport=9) / b"abcd")
    why, out = fixed(b"\x4f" + udp[1:])  # ihl 15
    assert why == "its IPv4 header length field (ihl 15) says 60 bytes, more than the packet's 32", why
    assert out == b"\x4f" + udp[1:]  # as written: not even the IP checksum touched
    why, _ = fixed(b"\x44" + udp[1:])
    assert "says 16 bytes, less than the 20 it has at least" in why
    why, _ = fixed(b"\x75" + udp[1:])
    assert why == "its first byte says IP version 7, neither 4 nor 6"
    why, _ = fixed(udp[:12])
    assert why == "it is 12 bytes from the IP header on, shorter than an IPv4 header (20)"
    tcp = bytes(IP(dst="10.77.1.2", len=30) / TCP(dport=80))[:30]
    why, _ = fixed(tcp)
    assert why == "its TCP header is cut short (10 of its 20 bytes are there)"
    why, _ = fixed(bytes(IP(dst="10.77.1.2") / UDP(dport=9))[:24])
    assert why == "its UDP header is cut short (4 of its 8 bytes are there)"
    v6 = bytes(IPv6(dst="fd00::2", nh=6, plen=8) / Raw(b"\0" * 8))
    why, _ = fixed(v6)
    assert why == "its TCP header is cut short (8 of its 20 bytes are there)"
    ttl3 = bytes(IP(src="10.77.1.1", dst="10.77.1.2", ttl=3) / UDP(dport=9) / b"abcd")
    assert fixed(udp[:8] + b"\x03" + udp[9:]) == (None, ttl3)  # the IP checksum fixed
    assert fixed(bytes(IP(dst="10.77.1.2", flags="MF", proto=6) / Raw(b"\0" * 8)))[0] is None  # a fragment
    assert fixed(bytes(IP(dst="10.77.1.2", proto=47) / Raw(b"\0" * 4)))[0] is None  # GRE: no checksum of ours


def test_ipv4_udp_zero_checksum_stays_zero() -> None:
    raw = bytearray(bytes(IP(dst="10.0.0.1") / UDP(dport=9) / b"abc"))
    raw[26:28] = b"\0\0"  # "no checksum", allowed for UDP over IPv4
    p = Packet(None, bytes(raw))
    p.payload = b"abcd"
    out = bytes(p)
    assert out[28:] == b"abcd" and out[24:26] == (12).to_bytes(2, "big")  # length fixed...
    assert out[26:28] == b"\0\0"  # ...but no checksum invented


def test_raw_slices_read_and_write() -> None:
    p = P(IP(dst="10.0.0.1") / UDP(dport=9000) / b"hello")
    assert p.raw[16:20] == bytes([10, 0, 0, 1])
    assert p.raw[0] == 0x45
    p.raw[28:33] = b"HELLO"
    assert p.payload == b"HELLO"
    assert UDP(bytes(p)[20:]).chksum == UDP(bytes(IP(dst="10.0.0.1") / UDP(dport=9000) / b"HELLO")[20:]).chksum


def test_bit_fields_write_without_touching_neighbours() -> None:
    p = P(IP(dst="10.0.0.1", flags="DF", frag=0) / UDP())
    p.ip.frag = 5
    assert p.ip.flags == 2 and p.ip.frag == 5
    p.ip.ihl = 5
    assert p.ip.version == 4
    with pytest.raises(ValueError, match="13 bits wide"):
        p.ip.frag = 1 << 13


def test_a_write_of_the_wrong_type_is_refused_with_what_the_field_takes() -> None:
    """Before: ``payload = 5`` wrote five NUL bytes (``bytes(5)``), ``payload = "hi"`` said "string argument
    without an encoding", ``ttl = 5.5`` "unsupported operand type(s) for >>", ``mark="3"`` was taken as 3."""
    import numpy as np

    p = P(IP(dst="10.0.0.1", ttl=9) / UDP(dport=53) / b"query")
    with pytest.raises(TypeError, match=r"^udp\.payload takes bytes \(or a bytearray\), not int 5$"):
        p.udp.payload = 5
    with pytest.raises(TypeError, match=r"^udp\.payload takes bytes, not str; encode the text first \('hi'\.encode"):
        p.udp.payload = "hi"
    with pytest.raises(TypeError, match=r"^set_payload\(\) takes bytes"):
        p.set_payload(7)
    with pytest.raises(TypeError, match=r"^ttl takes an int of 8 bits, not float 5\.5$"):
        p.ip.ttl = 5.5
    with pytest.raises(TypeError, match=r"^ttl takes an int of 8 bits, not str '5'$"):
        p.ip.ttl = "5"
    with pytest.raises(TypeError, match=r"^the mark takes an int of 32 bits, not str '3'$"):
        p.accept(mark="3")
    assert p.udp.payload == b"query" and p.ip.ttl == 9 and p.mark == 0 and not p.modified  # nothing changed
    p.ip.ttl = np.uint8(17)  # what says it is an int is one
    p.udp.payload = memoryview(b"answer")
    p.accept(mark=np.int64(4))
    assert p.ip.ttl == 17 and p.udp.payload == b"answer" and p.mark == 4


def test_truncated_packets_raise_packet_format_error() -> None:
    full = bytes(IP(dst="10.0.0.1") / TCP())
    p = Packet(None, full[:30])
    with pytest.raises(PacketFormatError, match="past the end"):
        _ = p.tcp.window
    bad_ihl = bytearray(full)
    bad_ihl[0] = 0x42
    with pytest.raises(PacketFormatError, match="less than 20"):
        _ = Packet(None, bytes(bad_ihl)).tcp


def test_verdict_methods_return_verdicts_and_marks() -> None:
    p = P(IP() / UDP())
    assert p.accept() is ACCEPT and p.drop() is DROP and p.repeat(mark=3) is REPEAT
    assert p.mark == 3
    p.accept(mark=0x10)
    assert p.mark == 0x10
    with pytest.raises(ValueError):
        p.set_mark(-1)


def test_scapy_round_trip_and_assignment() -> None:
    p = P(IP(dst="10.0.0.1") / UDP(dport=53) / b"x")
    sp = p.scapy
    assert sp[UDP].dport == 53
    sp[UDP].dport = 54
    del sp[UDP].chksum
    p.scapy = sp
    assert p.udp.dport == 54 and p.modified


def test_repr_is_one_line() -> None:
    p = P(IP(src="10.77.1.1", dst="10.77.1.2") / UDP(sport=5, dport=9000) / b"x")
    r = repr(p)
    assert "\n" not in r and "udp 10.77.1.1:5 > 10.77.1.2:9000" in r


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=120))
def test_views_never_crash_on_arbitrary_bytes(data: bytes) -> None:
    p = Packet(None, data)
    for name in ("ip", "ipv6", "udp", "tcp", "icmp", "icmpv6", "payload"):
        try:
            layer = getattr(p, name)
            if layer is not None and hasattr(layer, "as_dict"):
                layer.as_dict()
        except PacketFormatError:
            pass
    summarize(data)
    repr(p)


@settings(max_examples=200, deadline=None)
@given(
    st.integers(0, 65535),
    st.integers(0, 65535),
    st.binary(max_size=64),
    st.binary(max_size=64),
)
def test_payload_rewrite_checksum_matches_scapy(sport: int, dport: int, before: bytes, after: bytes) -> None:
    p = P(IP(src="10.1.1.1", dst="10.2.2.2") / UDP(sport=sport, dport=dport) / Raw(before))
    p.payload = after
    ref = IP(src="10.1.1.1", dst="10.2.2.2") / UDP(sport=sport, dport=dport) / Raw(after)
    assert bytes(p) == bytes(ref)


@settings(max_examples=300, deadline=None)
@given(st.sampled_from(["tcp", "udp", "tcp6", "udp6"]), st.binary(max_size=3000), st.integers(0, 2**32 - 1))
def test_checksums_of_every_length_match_scapy(kind: str, payload: bytes, seq: int) -> None:
    """The checksum sum runs 16 bytes at a time with a tail of 4, 2 and 1: every length and remainder."""
    l3 = IP(src="10.1.1.1", dst="10.2.2.2") if kind in ("tcp", "udp") else IPv6(src="fd77::1", dst="fd77::2")
    l4 = TCP(sport=1, dport=2, seq=seq) if kind.startswith("tcp") else UDP(sport=seq & 0xFFFF, dport=2)
    p = P(l3 / l4 / Raw(b"x"))
    p.payload = payload
    assert bytes(p) == bytes(l3 / l4 / Raw(payload))


def test_checksum_of_a_64k_packet_matches_scapy() -> None:
    body = bytes(range(256)) * 255 + b"odd"  # 65,283 bytes: a GSO packet's size, an odd length
    p = P(IP(src="10.1.1.1", dst="10.2.2.2") / TCP(sport=1, dport=2) / Raw(body[:100]))
    p.payload = body[: 65535 - 40]
    p.ip.dst = "10.3.3.3"
    assert bytes(p) == bytes(IP(src="10.1.1.1", dst="10.3.3.3") / TCP(sport=1, dport=2) / Raw(body[: 65535 - 40]))


WRITES = st.lists(
    st.one_of(
        st.tuples(st.just("payload"), st.binary(max_size=700)),
        st.tuples(st.just("large payload"), st.integers(1, 60000)),  # the one-pass copy's blocks and its rest
        st.tuples(st.just("header field"), st.integers(0, 255)),  # in front of the payload: its sum stays known
        st.tuples(st.just("raw byte"), st.integers(0, 10**6), st.integers(0, 255)),  # in the payload: forgets its sum
        st.tuples(st.just("bytes")),  # fixed up in between, then written again
    ),
    max_size=6,
)


@settings(max_examples=300, deadline=None)
@given(st.sampled_from(["tcp", "udp", "tcp6", "udp6"]), WRITES)
def test_checksums_stay_right_through_any_writes_in_any_order(kind: str, writes: list) -> None:
    """A payload written whole is summed while it is copied in, and the fix-up takes that sum: writes in the
    headers keep it, any other write forgets it.  Whatever the order, scapy computes the same checksums."""
    l3 = IP(src="10.1.1.1", dst="10.2.2.2") if kind in ("tcp", "udp") else IPv6(src="fd77::1", dst="fd77::2")
    l4 = TCP(sport=1, dport=2) if kind.startswith("tcp") else UDP(sport=1, dport=2)
    p = P(l3 / l4 / Raw(b"x"))
    for w in writes:
        if w[0] == "payload":
            p.payload = w[1]
        elif w[0] == "large payload":
            p.payload = bytes(range(251)) * (w[1] // 251) + bytes(w[1] % 251)
        elif w[0] == "header field":
            p.transport.sport = w[1]
            if p.ip is not None:
                p.ip.ttl = w[1]
            else:
                p.ipv6.hlim = w[1]
        elif w[0] == "raw byte":
            if p.payload:
                p.raw[len(p) - len(p.payload) + w[1] % len(p.payload)] = w[2]
        else:
            assert_scapy_agrees(bytes(p))
    assert_scapy_agrees(bytes(p))


def test_a_view_made_without_a_packet_is_refused() -> None:
    from pktlab.packet import views

    for cls in (views.TCP, views.UDP, views.IPv4):
        with pytest.raises(TypeError, match="pkt"):  # (its fields would read no packet's bytes: a crash)
            cls(None, 0)


def test_bytes_written_through_copied_bytes_are_summed_at_the_fix_up() -> None:
    """``copied_bytes`` hands out the written packet's bytearray itself: a write into it, behind the packet's
    back, must not leave the fix-up with the sum of the payload as it was set."""
    p = P(IP(src="10.1.1.1", dst="10.2.2.2") / TCP(sport=1, dport=2) / Raw(b"x"))
    p.payload = bytes(range(256)) * 40
    buf = p.copied_bytes
    buf[-1] ^= 0xFF
    taken = payload_sums_taken()
    assert_scapy_agrees(bytes(p))
    assert payload_sums_taken() == taken


def test_a_first_write_in_the_headers_sums_the_payload_as_it_copies_it() -> None:
    """Writing a header field (a TTL, a port, an address) copies the packet once: its TCP or UDP payload with its
    checksum sum, which the fix-up then takes instead of summing the payload again; a later write into the
    payload makes it sum everything again.  Whatever the layout (options, IPv6, odd lengths), the checksums
    come out as scapy computes them."""
    cases = [
        IP(src="10.1.1.1", dst="10.2.2.2") / TCP(sport=1, dport=2, flags="PA"),
        IP(src="10.1.1.1", dst="10.2.2.2", options=b"\x94\x04\x00\x00")
        / TCP(sport=1, dport=2, options=[("MSS", 1400), ("NOP", None), ("WScale", 7)]),
        IP(src="10.1.1.1", dst="10.2.2.2") / UDP(sport=1, dport=2),
        IPv6(src="fd77::1", dst="fd77::2") / TCP(sport=1, dport=2),
        IPv6(src="fd77::1", dst="fd77::2") / IPv6ExtHdrDestOpt() / UDP(sport=1, dport=2),
    ]
    for base in cases:
        for size in (0, 1, 7, 1000, 4097, 60001):
            body = bytes((i * 13 + 5) & 0xFF for i in range(size))
            for write in ("ttl", "port", "address"):
                p = P(base / Raw(body))
                if write == "ttl":
                    if p.ip is not None:
                        p.ip.ttl = 9
                    else:
                        p.ipv6.hlim = 9
                elif write == "port":
                    p.transport.dport = 4242
                elif p.ip is not None:
                    p.ip.dst = "10.9.9.9"  # (in the pseudo-header: the payload's sum still holds)
                else:
                    p.ipv6.dst = "fd77::9"
                p.transport.sport = 77  # a second write in front keeps it
                taken = payload_sums_taken()
                out = bytes(p)
                assert payload_sums_taken() == taken + 1, (base.summary(), size, write)
                assert out.endswith(body)
                assert_scapy_agrees(out)
            p = P(base / Raw(body))
            p.transport.sport = 77
            if size:
                p.raw[len(p) - 1] = 0x55  # into the payload: summed again
                taken = payload_sums_taken()
                out = bytes(p)
                assert payload_sums_taken() == taken and out[-1] == 0x55
                assert_scapy_agrees(out)


def test_a_payload_after_an_odd_header_gets_the_right_checksum() -> None:
    """A user protocol's 11-byte header puts its payload at an odd offset into the UDP header: the payload's
    sum, made as if it started at an even one, is taken byte-swapped."""
    import pktlab

    @pktlab.protocol(over="udp", port=9999)
    class Odd:
        kind: pktlab.uint(8)
        seq: pktlab.uint(16)
        name: pktlab.text(8)

    try:
        for size in (0, 1, 31, 32, 33, 999, 1000, 4097):
            p = P(IP(src="10.1.1.1", dst="10.2.2.2") / UDP(sport=1, dport=9999) / Raw(bytes(11) + b"old"))
            body = bytes((i * 7 + 3) & 0xFF for i in range(size))
            p.odd.payload = body
            p.odd.seq = 7  # a write in front of the payload: its sum is taken
            taken = payload_sums_taken()
            out = bytes(p)
            assert payload_sums_taken() == taken + 1
            assert out[28 + 11 :] == body and out[29:31] == b"\x00\x07"
            assert_scapy_agrees(out)
            p = P(IP(src="10.1.1.1", dst="10.2.2.2") / UDP(sport=1, dport=9999) / Raw(bytes(11) + b"old"))
            p.udp.payload = bytes(11) + body  # the sum of all the UDP payload is known...
            p.odd.seq = 9  # ...until a field inside it is written: then it is summed again
            out = bytes(p)
            assert payload_sums_taken() == taken + 1
            assert_scapy_agrees(out)
    finally:
        pktlab.protocols.clear()


REAL = [
    bytes(IP(src="10.77.1.1", dst="10.77.1.2") / UDP(sport=5, dport=9000) / b"payload"),
    bytes(IP(src="10.77.1.1", dst="10.77.1.2", options=b"\x94\x04\x00\x00") / TCP(flags="S", options=[("MSS", 1460)])),
    bytes(IP(src="10.77.1.1", dst="10.77.1.2") / ICMP() / b"ping"),
    bytes(IPv6(src="fd77::1", dst="fd77::2") / IPv6ExtHdrHopByHop() / IPv6ExtHdrDestOpt() / UDP(dport=53) / b"q"),
    bytes(IPv6(src="fd77::1", dst="fd77::2") / TCP(flags="PA") / b"GET / HTTP/1.1\r\n\r\n"),
]


@settings(max_examples=400, deadline=None)
@given(
    st.sampled_from(REAL),
    st.lists(st.tuples(st.integers(0, 200), st.integers(0, 255)), max_size=6),
    st.integers(0, 120),
)
def test_mutated_real_packets_only_raise_packet_format_error(base, flips, cut) -> None:
    data = bytearray(base)
    for at, value in flips:
        if at < len(data):
            data[at] = value
    data = bytes(data[: max(1, len(data) - cut)])
    p = Packet(None, data)
    bugs = [o for o in read_every_view(p) if o[0] not in ("ok", "PacketFormatError")]
    assert not bugs, bugs
    assert bytes(p) == data  # reading never changes the bytes


def test_html_view_shows_layers_fields_and_marked_bytes() -> None:
    p = P(IP(src="10.77.1.1", dst="10.77.1.2", ttl=33) / UDP(sport=5, dport=9000) / b"hi")
    html = p._repr_html_()
    for text in (">ip<", ">udp<", ">ttl<", ">33<", "title='ip.ttl = 33'", "title='udp.dport = 9000'"):
        assert text in html, text
    assert html.count("<span") >= len(p)  # one span per byte of the dump
    broken = Packet(None, bytes(IP(dst="10.0.0.1") / TCP())[:30])
    assert "(past the end)" in broken._repr_html_()  # a truncated packet still renders


def test_views_follow_a_replaced_packet() -> None:
    # views are made once per packet; replacing the bytes (or the IP header through raw) must not leave stale ones
    p = P(IP(src="10.77.1.1", dst="10.77.1.2") / UDP(sport=1, dport=9000) / b"x")
    assert p.ip.dst == "10.77.1.2" and p.udp.dport == 9000
    p.set_payload(bytes(IPv6(src="fd77::1", dst="fd77::2") / TCP(sport=5, dport=80)))
    assert p.ip is None and p.udp is None
    assert p.ipv6.dst == "fd77::2" and p.tcp.dport == 80
    q = P(IP(src="10.77.1.1", dst="10.77.1.2") / UDP(sport=1, dport=9000) / b"x")
    assert q.udp.dport == 9000
    q.raw[9:10] = b"\x06"  # the protocol byte now says TCP
    assert q.udp is None and q.tcp is not None


def test_address_strings_are_right_for_many_addresses() -> None:
    # formatted IPv4 addresses are remembered; every one must still be the packet's own
    for i in range(0, 1 << 16, 257):
        a = f"10.{i >> 8}.{i & 255}.{(i * 7) & 255}"
        assert P(IP(src=a, dst="10.77.1.2") / UDP()).ip.src == a


def test_summary_walks_ipv6_extension_headers() -> None:
    from scapy.layers.inet6 import IPv6ExtHdrRouting

    for ext in (IPv6ExtHdrHopByHop(), IPv6ExtHdrDestOpt(), IPv6ExtHdrHopByHop() / IPv6ExtHdrRouting()):
        head = bytes(IPv6(src="fd77:1::1", dst="fd77:1::2") / ext / UDP(sport=5353, dport=9000) / b"x")
        s = summarize(head)
        assert (s["proto"], s["sport"], s["dport"]) == ("udp", 5353, 9000), ext.summary()
    # extension headers that run past the recorded bytes: protocol unknown, no ports made up
    head = bytes(IPv6(src="fd77:1::1", dst="fd77:1::2") / IPv6ExtHdrDestOpt(options=[]) / UDP())[:44]
    assert summarize(head)["sport"] is None and summarize(head)["proto"] == "?"


def test_later_fragments_have_no_transport_view() -> None:
    from scapy.layers.inet import fragment
    from scapy.layers.inet6 import IPv6ExtHdrFragment, fragment6

    big6 = IPv6(src="fd77:1::1", dst="fd77:1::2") / IPv6ExtHdrFragment() / UDP(sport=7, dport=9000) / bytes(3000)
    frags6 = [Packet(None, bytes(f)) for f in fragment6(big6, 1280)]
    big4 = IP(src="10.77.1.1", dst="10.77.1.2") / UDP(sport=7, dport=9000) / bytes(3000)
    frags4 = [Packet(None, bytes(f)) for f in fragment(big4, 1280)]
    for frags in (frags6, frags4):
        assert len(frags) >= 3
        assert frags[0].udp is not None and frags[0].udp.dport == 9000  # the first fragment has the header
        assert summarize(bytes(frags[0]))["dport"] == 9000
        for later in frags[1:]:
            assert later.udp is None and later.transport is None and later.proto == 17
            s = summarize(bytes(later))
            assert s["proto"] == "udp" and s["sport"] is None and s["dport"] is None


def test_raw_slice_writes_past_the_end_are_refused() -> None:
    p = P(IP(dst="10.77.1.2") / UDP(dport=9000) / bytes(64))
    before = bytes(p)
    for key in (slice(5000, 5002), slice(90, 95), slice(-200, 3)):
        with pytest.raises(IndexError, match="past the end of the 92-byte packet"):
            p.raw[key] = b"hi"
    assert bytes(p) == before and not p.modified
    p.raw[28:30] = b"hi"  # inside: fine
    assert bytes(p)[28:30] == b"hi" and len(p) == 92
    with pytest.raises(PacketFormatError, match="no bytes"):
        p.set_payload(b"")


def test_replace_in_a_layers_payload_counts_and_rewrites() -> None:
    from pktlab.testing import tcp, udp

    p = tcp(flags="PA", payload=b"the cat and the cat")
    assert p.tcp.replace(b"cat", "kitten") == 2
    assert p.tcp.payload == b"the kitten and the kitten" and p.modified
    assert p.tcp.replace("dog", "cat") == 0
    q = udp(payload=b"aaa")
    assert q.udp.replace(b"a", b"bb", count=2) == 2 and q.udp.payload == b"bbbba"
    with pytest.raises(ValueError, match="old is empty"):
        q.udp.replace(b"", b"x")
    fixed = Packet(None, bytes(p))
    assert fixed.tcp.payload == b"the kitten and the kitten"


def test_a_packet_not_from_a_queue_has_no_kernel_buffer_flags() -> None:
    import pktlab
    from pktlab.testing import udp as make_udp

    assert tuple(Packet(None, make_udp(payload=b"x", raw=True)).skb_info) == (False, False, False)
    r = pktlab.replay("lab-udp")
    seen = []
    r.add_handler(lambda pkt: seen.append(pkt.skb_info), "look")
    r.run()
    assert seen and all(not any(i) for i in seen)


def test_a_gso_packet_grown_past_an_ip_packet_says_how_to_rewrite_segments() -> None:
    from pktlab.packet._core import too_big

    assert "65,535" in str(too_big(70_000)) and "gso" not in str(too_big(70_000))
    assert "attach with gso=False (--no-gso)" in str(too_big(70_000, True))


def test_a_packet_whose_bytes_went_to_the_verdict_writer_copies_them_before_its_next_write() -> None:
    """After a large verdict the writer's thread may still read the packet's bytearray (``_shared``): a handler
    that kept the packet and writes to it later writes to a copy; what went is left as it was."""
    pkt = Packet(None, bytes(IP(src="10.0.0.1", dst="10.0.0.2", ttl=9) / UDP(dport=53) / Raw(b"x" * 5000)))
    pkt.ip.ttl = 10  # written: it has a bytearray
    copies = shared_copies()
    pkt._shared = True  # what the dispatcher sets when it hands that bytearray to the writer's thread
    pkt.ip.ttl = 11
    assert shared_copies() == copies + 1  # copied before the write
    pkt.raw[4] = 0x41
    pkt.udp.payload = b"y" * 10
    assert shared_copies() == copies + 1  # once: later writes go to its own copy
    assert pkt.ip.ttl == 11 and pkt.raw[4] == 0x41 and pkt.udp.payload == b"y" * 10


def test_a_packet_pickles_and_copies_with_its_bytes_and_flags() -> None:
    import copy
    import pickle

    p = P(IP(src="10.77.1.1", dst="10.77.1.2") / UDP(sport=1, dport=9000) / b"hello")
    p.ip.ttl = 9  # written: a bytearray, modified, checksums to fix
    p.set_mark(7)
    for q in (pickle.loads(pickle.dumps(p)), copy.copy(p)):
        assert type(q) is Packet and q.modified and q.mark == 7
        assert q.ip.ttl == 9 and q.udp.payload == b"hello" and bytes(q) == bytes(p)
