"""Cutting a rewritten GSO packet for re-sending (user-namespace mode): as the kernel would, checked with scapy."""

from __future__ import annotations

import pytest
from scapy.layers.inet import IP, TCP
from scapy.layers.inet6 import IPv6

from pktlab import PacketFormatError
from pktlab.kernel import _resend


def _valid(seg: bytes, ip_cls: type) -> bool:
    p = ip_cls(seg)
    fresh = p.copy()
    if ip_cls is IP:
        del fresh[IP].chksum, fresh[IP].len
    else:
        del fresh[IPv6].plen
    del fresh[TCP].chksum
    again = ip_cls(bytes(fresh))
    ok = again[TCP].chksum == p[TCP].chksum
    return ok and (ip_cls is not IP or again[IP].chksum == p[IP].chksum)


@pytest.mark.parametrize("ip_cls", [IP, IPv6])
def test_a_gso_packet_becomes_segments_with_the_kernels_flags_and_numbers(ip_cls: type) -> None:
    payload = bytes(range(256)) * 40  # 10,240 bytes
    ip = ip_cls(src="10.77.1.1", dst="10.77.2.2") if ip_cls is IP else ip_cls(src="fd77:1::1", dst="fd77:2::2")
    if ip_cls is IP:
        ip.id = 65534
    whole = bytes(ip / TCP(sport=4000, dport=80, seq=2**32 - 100, flags="FPAC", window=500) / payload)
    segs = _resend.tcp_segments(whole, 1500)
    head = (20 if ip_cls is IP else 40) + 20
    assert len(segs) == -(-len(payload) // (1500 - head)) and all(len(s) <= 1500 for s in segs)
    parsed = [ip_cls(s) for s in segs]
    assert b"".join(bytes(p[TCP].payload) for p in parsed) == payload
    assert [p[TCP].seq for p in parsed] == [(2**32 - 100 + i * (1500 - head)) % 2**32 for i in range(len(segs))]
    assert [str(p[TCP].flags) for p in parsed] == ["AC"] + ["A"] * (len(segs) - 2) + ["FPA"]
    assert all(_valid(s, ip_cls) for s in segs)
    if ip_cls is IP:
        assert [p[IP].id for p in parsed] == [(65534 + i) & 0xFFFF for i in range(len(segs))]


def test_what_fits_is_left_whole_and_what_is_not_tcp_is_refused() -> None:
    small = bytes(IP(dst="10.0.0.1") / TCP() / (b"x" * 10))
    assert _resend.tcp_segments(small, 1500) == [small]
    with pytest.raises(PacketFormatError, match="only TCP"):
        _resend.tcp_segments(bytes(IP(dst="10.0.0.1", proto=17) / bytes(3000)), 1500)
    with pytest.raises(PacketFormatError, match="leaves no room"):
        _resend.tcp_segments(bytes(IP(dst="10.0.0.1") / TCP() / bytes(100)), 40)
