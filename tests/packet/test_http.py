"""The HTTP/1.x view against scapy's dissection, and its rewrites (no kernel needed)."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scapy.layers.http import HTTPRequest, HTTPResponse
from scapy.layers.inet import IP, TCP

from pktlab import Packet, PacketFormatError

REQ = b"GET /index.html HTTP/1.1\r\nHost: lab.example\r\nUser-Agent: curl/8\r\nAccept: */*\r\n\r\n"
RESP = b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 5\r\n\r\nhello"


def seg(payload: bytes, sport: int = 40000, dport: int = 80) -> bytes:
    return bytes(IP(src="10.77.1.1", dst="10.77.1.2") / TCP(sport=sport, dport=dport, flags="PA") / payload)


def consistent(data: bytes) -> bool:
    """scapy recomputes lengths and checksums to the same bytes."""
    ref = IP(data)
    del ref[IP].len, ref[IP].chksum, ref[TCP].chksum
    return bytes(IP(bytes(ref))) == data


def test_request_matches_scapy() -> None:
    p = Packet(None, seg(REQ))
    ref = IP(seg(REQ))[HTTPRequest]
    h = p.http
    assert h.is_request and h.complete
    assert (h.method, h.target, h.version) == (ref.Method.decode(), ref.Path.decode(), ref.Http_Version.decode())
    assert h.headers["host"] == ref.Host.decode() and h.headers.get("User-Agent") == ref.User_Agent.decode()
    assert list(h.headers) == ["Host", "User-Agent", "Accept"] and "accept" in h.headers


def test_response_matches_scapy() -> None:
    p = Packet(None, seg(RESP, sport=80, dport=40000))
    ref = IP(seg(RESP, sport=80, dport=40000))[HTTPResponse]
    h = p.http
    assert not h.is_request and h.status == int(ref.Status_Code) and h.reason == ref.Reason_Phrase.decode()
    assert h.headers["Content-Length"] == "5" and h.body == b"hello" and h.method is None


def test_rewrites_resize_and_fix_lengths_and_checksums() -> None:
    p = Packet(None, seg(REQ))
    p.http.headers["User-Agent"] = "pktlab/0.1 (rewritten in flight)"
    p.http.headers["X-Lab"] = "yes"
    del p.http.headers["Accept"]
    p.http.target = "/other.html"
    out = bytes(p)
    payload = bytes(IP(out)[TCP].payload)
    assert payload == (
        b"GET /other.html HTTP/1.1\r\nHost: lab.example\r\nUser-Agent: pktlab/0.1 (rewritten in flight)\r\n"
        b"X-Lab: yes\r\n\r\n"
    )
    assert IP(out).len == len(out) and consistent(out)


def test_not_http_and_malformed() -> None:
    assert Packet(None, seg(b"\x16\x03\x01 tls")).http is None
    assert Packet(None, seg(REQ, dport=22)).http is None
    bad = Packet(None, seg(b"GET / HTTP/1.1\r\nno colon here\r\n\r\n"))
    with pytest.raises(PacketFormatError, match="has no name"):
        bad.http.headers.items()
    partial = Packet(None, seg(b"GET / HTTP/1.1\r\nHost: a"))
    assert not partial.http.complete
    with pytest.raises(PacketFormatError, match="continues in a later segment"):
        partial.http.headers["Host"] = "b"
    with pytest.raises(ValueError, match="cannot be an HTTP header"):
        Packet(None, seg(REQ)).http.headers["Evil"] = "a\r\nInjected: 1"


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=60), st.sampled_from([REQ, RESP]))
def test_random_heads_only_raise_packet_format_error(noise: bytes, base: bytes) -> None:
    cut = base[: len(base) // 2] + noise
    p = Packet(None, seg(cut))
    h = p.http
    if h is not None:
        h.as_dict()
        repr(h)
        h.body  # noqa: B018
    assert bytes(p) == seg(cut)
