"""How much of each packet the queue copies (copy="full" / "headers" / "auto"), on the real kernel.

What each mode promises, checked by what the receiving socket gets: a handler
reads the bytes that were copied; reading past them raises CopyRangeError naming
the copy range and the fix (headers) or gets the whole packet (auto); a verdict
never cuts a packet in the kernel.
"""

from __future__ import annotations

import struct

import pytest

import pktlab
from pktlab import CopyRangeError, Lab, SessionError
from tests.conftest import needs_live

pytestmark = needs_live

SIZE = 1000  # datagram payload: far beyond the 128 bytes of a headers-only copy


def numbered(payloads: list[bytes]) -> list[int]:
    return sorted(struct.unpack("!I", p[:4])[0] for p in payloads)


def test_headers_copy_reads_headers_refuses_the_rest_and_delivers_every_packet_whole(lab: Lab) -> None:
    seen: list[tuple[int, int, int]] = []
    refused: list[str] = []
    with pktlab.attach(1, rule="-p udp --dport 9000", netns=lab.server, copy="headers") as s:

        @s.handler
        def look(pkt):
            seen.append((len(pkt), pkt.copied, pkt.udp.dport))
            for what in (lambda: pkt.udp.payload, lambda: bytes(pkt), lambda: pkt.raw[-4:]):
                try:
                    what()
                except CopyRangeError as exc:
                    refused.append(str(exc))
            try:
                pkt.ip.ttl = 1  # a verdict with 128 bytes would cut the packet: refused before anything changes
            except CopyRangeError as exc:
                refused.append(str(exc))
            assert not pkt.modified
            return None

        r = lab.udp(20, size=SIZE, rate=500, keep=20)
        assert s.kernel_counters().copy_range == 128
        assert "the first 128 bytes (headers)" in "\n".join(s.status().lines())
        assert not s.errors
        sizes = set(s.df["size"])
    assert r.unique == 20 and {len(p) for p in r.payloads} == {SIZE} and numbered(r.payloads) == list(range(20))
    assert all(p[4:] == bytes(SIZE - 4) for p in r.payloads)  # the bytes as sent: nothing cut, nothing changed
    assert seen == [(SIZE + 28, 128, 9000)] * 20
    assert sizes == {SIZE + 28}  # the record says how long each packet was, not how much was copied
    assert len(refused) == 80
    head = "udp.payload needs bytes up to 1,028, but the kernel copied only the first 128 of this 1,028-byte packet"
    assert refused[0].startswith(head)
    assert "copy='auto'" in refused[0] and "copy='full'" in refused[0]
    assert "a verdict with the copied part would cut it; the packet was not changed" in refused[3]


def test_headers_copy_a_handler_that_reads_on_fails_with_the_reason_and_its_packet_goes_whole(lab: Lab) -> None:
    with pktlab.attach(1, rule="-p udp --dport 9000", netns=lab.server, copy="headers", on_error="accept") as s:
        s.add_handler(lambda pkt: pkt.drop() if pkt.udp.payload[:4] == b"\0\0\0\1" else None, "by_payload")
        r = lab.udp(5, size=SIZE, rate=500, keep=5)
        errors = list(s.errors)
    assert r.unique == 5 and {len(p) for p in r.payloads} == {SIZE}  # the error verdict (accept), packets whole
    assert len(errors) == 5 and all(e.error.startswith("CopyRangeError: udp.payload needs bytes") for e in errors)
    assert "the session's copy range" in str(errors[0])


def test_auto_copy_gives_the_handler_whole_packets_and_copies_whole_from_then_on(lab: Lab) -> None:
    got: list[bytes] = []
    with pktlab.attach(1, rule="-p udp --dport 9000", netns=lab.server, copy="auto") as s:

        @s.handler
        def stamp(pkt):
            got.append(pkt.udp.payload)
            data = pkt.udp.payload
            pkt.udp.payload = data[:4] + b"PKTL" + data[8:]  # after the number, same length: every byte goes back
            return pkt.accept()

        assert s.kernel_counters().copy_range == 128  # headers until a handler reads further
        first = lab.udp(20, size=SIZE, rate=500, keep=20)
        recopied = s.status().recopied
        # the packets queued before the copy range grew came again, whole: at least the first, at most all 20
        assert 1 <= recopied <= 20
        assert s.kernel_counters().copy_range >= 65531  # the kernel's largest copy range
        second = lab.udp(20, size=SIZE, rate=500, keep=20)
        assert s.status().recopied == recopied  # copied whole from the start now: none queued again
        assert s.record.n == 40  # each packet recorded once, with its final verdict
        verdicts = set(s.df["verdict"])
        status = "\n".join(s.status().lines())
        # re-running the handler's cell (the same name): the new code may need less, so headers again
        s.add_handler(lambda pkt: None, "stamp")
        assert s.kernel_counters().copy_range == 128
    assert verdicts == {"accept"}
    assert "auto (the first 128 bytes" in status and "queued again to be copied whole" in status
    assert len(got) == 40 and all(len(p) == SIZE for p in got)
    assert numbered(got) == sorted(list(range(20)) * 2)
    for r in (first, second):
        assert r.unique == 20 and {len(p) for p in r.payloads} == {SIZE}
        assert all(p[4:8] == b"PKTL" and p[8:] == bytes(SIZE - 8) for p in r.payloads)


def test_headers_copy_of_gso_packets_the_stream_arrives_complete(router_lab: Lab) -> None:
    seen: list[tuple[int, int]] = []
    with pktlab.attach(1, rule="-p tcp", hook="FORWARD", netns=router_lab.router, copy="headers") as s:

        @s.handler
        def look(pkt):
            seen.append((len(pkt), pkt.copied))
            return pkt.accept() if pkt.tcp.dport >= 0 else None

        got = router_lab.tcp(4 << 20)
        assert not s.errors
    assert got["received"] == 4 << 20 and not got["timeout"]
    assert max(n for n, _ in seen) > 1500  # GSO packets came whole (longer than the link's MTU)...
    assert max(c for _, c in seen) <= 128  # ...and only their first 128 bytes were copied


def test_copy_options_are_checked() -> None:
    with pytest.raises(SessionError, match="is not a copy mode; use 'full'"):
        pktlab.Session(1, rule="-p udp", netns="pktlab-none", copy="some")
    with pytest.raises(SessionError, match="both say how much of each packet to copy"):
        pktlab.Session(1, rule="-p udp", netns="pktlab-none", copy="full", copy_range=100)
