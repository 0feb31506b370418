"""A packet of which only the first part was copied (a queue's copy range, a capture's snap length).

Whatever reads or writes past the copied bytes raises CopyRangeError, naming the
copy range and the fix; what lies within them reads as usual. The kernel-side
behaviour (the verdict never cuts a packet, copy="auto") is in
tests/integration/test_copy_modes.py.
"""

from __future__ import annotations

import re

import pytest

import pktlab
from pktlab import CopyRangeError, Packet, PacketFormatError, testing


def partial(pkt_bytes: bytes, copied: int) -> Packet:
    return Packet.copied_part(None, pkt_bytes[:copied], len(pkt_bytes))


def test_headers_read_and_the_rest_refused() -> None:
    whole = testing.udp(size=1000, raw=True)
    p = partial(whole, 128)
    assert (len(p), p.copied, p.complete) == (len(whole), 128, False)
    assert p.udp.dport == 9000 and p.udp.len == len(whole) - 20 and p.ip.src == pktlab.Packet(None, whole).ip.src
    assert p.raw[0:20] == whole[:20] and p.raw[127] == whole[127]
    for read, what in (
        (lambda: p.udp.payload, "udp.payload"),
        (lambda: p.payload, "udp.payload"),
        (lambda: bytes(p), "bytes(pkt)"),
        (lambda: p.raw[100:200], "pkt.raw[100:200]"),
        (lambda: p.raw[-1], "pkt.raw[-1]"),
        (lambda: p.raw[128], "pkt.raw[128]"),
        (lambda: p.raw.hex(), "pkt.raw.hex()"),
        (lambda: p.scapy, "bytes(pkt)"),
    ):
        with pytest.raises(CopyRangeError, match=f"^{re.escape(what)} ") as info:
            read()
        assert "the kernel copied only the first 128" in str(info.value) and "copy='auto'" in str(info.value)
        assert isinstance(info.value, PacketFormatError)  # a handler catching PacketFormatError catches it too
    err = info.value
    assert (err.copied, err.length) == (128, len(whole))


def test_a_write_is_refused_before_anything_changes() -> None:
    whole = testing.udp(size=1000, raw=True)
    p = partial(whole, 128)
    for write in (
        lambda: setattr(p.ip, "ttl", 1),
        lambda: setattr(p.udp, "payload", b"x"),
        lambda: p.raw.__setitem__(slice(0, 1), b"E"),
    ):
        with pytest.raises(CopyRangeError, match="a verdict with the copied part would cut it; the packet was not"):
            write()
    assert not p.modified and p.ip.ttl == whole[8]
    # a new packet replaces it whole: nothing of the old one is needed
    p.set_payload(whole[:60], fix_checksums=True)
    assert p.complete and len(p) == 60 and bytes(p)[:20] != b""


def test_too_little_copied_for_the_ip_header_says_so() -> None:
    whole = testing.tcp(flags="S", raw=True)
    p = partial(whole, 10)
    with pytest.raises(CopyRangeError, match="the IP header needs bytes up to 20"):
        p.tcp  # noqa: B018
    v6 = partial(testing.udp(ipv6=True, raw=True), 30)
    with pytest.raises(CopyRangeError, match="the IP header needs bytes up to 40"):
        v6.udp  # noqa: B018


def test_fields_past_the_copy_name_the_copy_range_and_past_the_packet_its_format() -> None:
    whole = testing.tcp(flags="S", raw=True)  # 40 bytes of headers
    p = partial(whole + bytes(100), 30)  # the TCP header starts at 20: its flags at byte 33
    with pytest.raises(CopyRangeError, match=r"^tcp\.flagbits needs bytes up to 34"):
        p.tcp.flagbits  # noqa: B018
    short = Packet(None, whole[:30])  # a packet that really ends there: its format is wrong
    with pytest.raises(PacketFormatError, match="lies past the end of the 30-byte packet") as info:
        short.tcp.flagbits  # noqa: B018
    assert not isinstance(info.value, CopyRangeError)


def test_the_display_shows_what_was_copied_and_says_the_rest_was_not() -> None:
    p = partial(testing.udp(size=1000, raw=True), 128)
    html = p._repr_html_()
    assert "872 more bytes not copied (copy range)" in html and "udp" in html


def test_dns_and_user_protocols_past_the_copy() -> None:
    q = partial(testing.udp(dport=53, size=300, raw=True), 40)
    with pytest.raises(CopyRangeError, match="^pkt.dns needs"):
        q.dns  # noqa: B018

    @pktlab.protocol(over="udp", port=9000)
    class Copytest:
        tag: pktlab.varbytes(lambda v: 500)

    try:
        p = partial(testing.udp(size=1000, raw=True), 128)
        with pytest.raises(CopyRangeError, match=r"^copytest\.tag needs bytes up to 528"):
            p.copytest.tag  # noqa: B018
    finally:
        pktlab.protocols.remove("copytest")


def test_a_capture_cut_by_its_snap_length_reads_the_same_way_through_a_replay(tmp_path) -> None:  # type: ignore[no-untyped-def]
    import struct

    whole = [testing.udp(seq=i, size=600, raw=True) for i in range(3)]
    path = tmp_path / "cut.pcap"
    with open(path, "wb") as f:  # a raw-IP capture (linktype 101) that kept 100 bytes of each packet
        f.write(struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 100, 101))
        for i, data in enumerate(whole):
            f.write(struct.pack("<IIII", 1_700_000_000 + i, 0, 100, len(data)) + data[:100])
    s = pktlab.replay(str(path))
    ports, errors = [], []

    @s.handler
    def look(pkt):
        ports.append((pkt.udp.dport, len(pkt), pkt.copied))
        try:
            pkt.udp.payload  # noqa: B018
        except CopyRangeError as exc:
            errors.append(str(exc))

    s.run()
    assert ports == [(9000, 600, 100)] * 3 and len(errors) == 3
    assert "the capture holds only the first 100 of this 600-byte packet (its snap length)" in errors[0]
    assert list(s.df["size"]) == [600] * 3


def test_a_bpf_filter_in_user_space_sees_the_copy_as_libpcap_sees_a_snap_length() -> None:
    whole = testing.udp(size=1000, raw=True)
    p = partial(whole, 128)
    assert pktlab.bpf.compile("udp and greater 900").matches(p)  # the packet's whole length is known
    beyond = pktlab.bpf.compile("udp[600:1] = 0")  # a byte that was not copied: the test fails, as in a capture
    assert beyond.matches(whole) and beyond.matches(Packet(None, whole)) and not beyond.matches(p)
