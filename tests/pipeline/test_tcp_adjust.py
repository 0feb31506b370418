"""Sequence adjustment applied to packets (pktlab.pipeline.seqadj.TcpAdjust) through the one dispatcher, on captures.

The real-kernel side is tests/integration/test_tcp_rewrite.py.
"""

from __future__ import annotations

from pathlib import Path

import pytest

import pktlab
from pktlab.testing import capture, tcp

C = {"src": "10.77.1.1", "dst": "10.77.2.2", "sport": 40000, "dport": 8080}
S = {"src": "10.77.2.2", "dst": "10.77.1.1", "sport": 8080, "dport": 40000}


def _outputs(path: Path, handler) -> list:  # type: ignore[no-untyped-def]
    r = pktlab.replay(path)
    r.add_handler(handler, "h")
    r.run()
    assert not r.errors, r.errors[:1]
    return [pktlab.Packet(None, d).tcp for _, d, _ in r.outputs]


def _options(t) -> dict:  # type: ignore[no-untyped-def]
    from scapy.layers.inet import TCP

    return dict(TCP(bytes(t.packet)[t.offset :]).options)


def test_syns_lose_64_bytes_of_mss_so_grown_segments_fit(tmp_path: Path) -> None:
    path = capture(tmp_path / "syn.pcap", [
        tcp(flags="S", seq=100, options=[("MSS", 1460), ("SAckOK", b"")], **C),
        tcp(flags="SA", seq=500, ack=101, options=[("MSS", 1460)], **S),
        tcp(flags="S", seq=900, options=[("MSS", 560)], **{**C, "sport": 40001}),
    ])  # fmt: skip
    out = _outputs(path, lambda pkt: None)
    assert [_options(t)["MSS"] for t in out] == [1396, 1396, 536]  # never below the minimum of 536
    assert "SAckOK" in _options(out[0])


def test_acks_and_sack_blocks_coming_back_are_mapped_to_what_the_sender_sent(tmp_path: Path) -> None:
    """hello (5 bytes) grows by 7; the receiver acknowledges and SACKs in its own numbering."""
    path = capture(tmp_path / "sack.pcap", [
        tcp(flags="PA", seq=101, ack=501, payload=b"hello", **C),
        tcp(flags="PA", seq=106, ack=501, payload=b"0123456789", **C),  # lost after the router, say
        tcp(flags="PA", seq=116, ack=501, payload=b"abcdefghij", **C),
        tcp(flags="A", seq=501, ack=113, options=[("NOP", None), ("NOP", None), ("SAck", (123, 133))], **S),
    ])  # fmt: skip

    def grow(pkt):
        if pkt.tcp.payload == b"hello":
            pkt.tcp.payload = b"hello, world"

    out = _outputs(path, grow)
    assert [(t.seq, t.payload) for t in out[:3]] == [(101, b"hello, world"), (113, b"0123456789"),
                                                      (123, b"abcdefghij")]  # fmt: skip
    back = out[3]
    assert back.ack == 106
    assert _options(back)["SAck"] == (116, 126)
    assert all(_checksum_ok(t) for t in out)


def test_a_write_after_a_payload_was_set_is_what_the_connection_remembers(tmp_path: Path) -> None:
    """Sequence adjustment takes the bytes object a handler set as the payload only while no later write
    changed the packet: here a byte of the payload is written after it (pkt.raw), and the retransmission of
    the segment carries the bytes that went, the later write included."""
    path = capture(tmp_path / "write.pcap", [
        tcp(flags="PA", seq=101, ack=501, payload=b"hello", **C),
        tcp(flags="PA", seq=101, ack=501, payload=b"hello", **C),  # sent again
    ])  # fmt: skip
    seen = []

    def grow(pkt):
        seen.append(1)
        if len(seen) == 1:
            pkt.tcp.payload = b"hello, world"
            pkt.raw[pkt.tcp.payload_offset] = ord("H")

    out = _outputs(path, grow)
    assert [(t.seq, t.payload) for t in out] == [(101, b"Hello, world"), (101, b"Hello, world")]
    assert all(_checksum_ok(t) for t in out)


def _checksum_ok(t) -> bool:  # type: ignore[no-untyped-def]
    from scapy.layers.inet import IP, TCP

    ip = IP(bytes(t.packet))
    sent = ip[TCP].chksum
    del ip[TCP].chksum
    return IP(bytes(ip))[TCP].chksum == sent


def _stream_of(out: list) -> bytes:  # type: ignore[type-arg]
    got: dict[int, int] = {}
    for t in out:
        for i, b in enumerate(t.payload):
            got.setdefault(t.seq + i, b)
    first, data = min(got), bytearray()
    while first + len(data) in got:
        data.append(got[first + len(data)])
    return bytes(data)


def test_reordered_segments_wait_for_their_gap_and_are_all_rewritten(tmp_path: Path) -> None:
    """Segments 2 and 3 arrive before 1: they wait (the record too) until 1 passes, so every one is grown."""
    words = [b"one~", b"two~", b"three~", b"four~"]
    seqs, at = [], 101
    for w in words:
        seqs.append(at)
        at += len(w)
    order = [0, 2, 3, 1]  # the third and fourth come before the second
    path = capture(
        tmp_path / "reorder.pcap", [tcp(flags="PA", seq=seqs[i], ack=501, payload=words[i], **C) for i in order]
    )

    def grow(pkt):
        pkt.tcp.payload = pkt.tcp.payload.replace(b"~", b"<~>")

    r = pktlab.replay(path)
    r.add_handler(grow, "grow")
    r.run()
    assert not r.errors and r.status().kept_back == 2
    out = [pktlab.Packet(None, d).tcp for _, d, _ in r.outputs]
    assert _stream_of(out) == b"".join(words).replace(b"~", b"<~>")
    assert r.record.n == 4 and list(r.df["verdict"]) == ["accept"] * 4


def test_a_gap_that_never_fills_lets_the_waiting_segment_go_at_the_end(tmp_path: Path) -> None:
    path = capture(tmp_path / "gap.pcap", [
        tcp(flags="PA", seq=101, ack=501, payload=b"one~", **C),
        tcp(flags="PA", seq=110, ack=501, payload=b"three~", **C),  # bytes 105..110 never come
    ])  # fmt: skip

    def grow(pkt):
        pkt.tcp.payload = pkt.tcp.payload.replace(b"~", b"<~>")

    r = pktlab.replay(path)
    r.add_handler(grow, "grow")
    r.run()
    out = [pktlab.Packet(None, d).tcp for _, d, _ in r.outputs]
    assert [(t.seq, t.payload) for t in out] == [(101, b"one<~>"), (112, b"three<~>")]
    assert r.record.n == 2 and not r.errors


def test_after_a_drop_the_waiting_segments_go_in_stream_order_not_arrival_order(tmp_path: Path) -> None:
    """The handler drops "two"; "four" arrives before "three" and both wait for the gap.  When the first
    to arrive ("four") has waited the window, the one earliest in the stream ("three") goes first, so
    that both can be grown (found by a clean-clone loop run: "four" went first and "three"'s growth
    was refused, its later bytes having passed)."""
    path = capture(tmp_path / "drop-reorder.pcap", [
        tcp(flags="PA", seq=101, ack=501, payload=b"one~", **C),
        tcp(flags="PA", seq=105, ack=501, payload=b"two~", **C),  # dropped by the handler
        tcp(flags="PA", seq=115, ack=501, payload=b"four~", **C),
        tcp(flags="PA", seq=109, ack=501, payload=b"three~", **C),
        tcp(flags="A", seq=501, ack=107, **S),  # 60 ms after "four" came: its wait is over
    ], gap=0.03)  # fmt: skip

    def grow(pkt):
        if pkt.tcp.payload == b"two~":
            return pkt.drop()
        pkt.tcp.payload = pkt.tcp.payload.replace(b"~", b"<~>")
        return None

    r = pktlab.replay(path)
    r.add_handler(grow, "grow")
    r.run()
    assert not r.errors, r.errors[:1]
    out = [pktlab.Packet(None, d).tcp for _, d, _ in r.outputs]
    assert [(t.seq, t.payload) for t in out if t.payload] == [(101, b"one<~>"), (111, b"three<~>"),
                                                                (119, b"four<~>")]  # fmt: skip


def test_a_refused_rewrite_sends_the_segment_as_it_went_not_as_the_handler_left_it(tmp_path: Path) -> None:
    """A retransmission the handler changes where it did not the first time is refused (the error
    verdict, accept): what goes is what went the first time, not the handler's new bytes (they would
    reach the receiver at places where it has other bytes)."""
    path = capture(tmp_path / "again.pcap", [
        tcp(flags="PA", seq=101, ack=501, payload=b"one~", **C),
        tcp(flags="PA", seq=105, ack=501, payload=b"two~", **C),
        tcp(flags="PA", seq=101, ack=501, payload=b"one~", **C),  # sent again
    ])  # fmt: skip
    seen = []

    def grow_one(pkt):
        if pkt.tcp.payload == b"one~":
            pkt.tcp.payload = b"ONE<~>" if seen else b"one<~>"
            seen.append(1)

    r = pktlab.replay(path)
    r.add_handler(grow_one, "grow")
    r.run()
    out = [(t.seq, t.payload) for t in (pktlab.Packet(None, d).tcp for _, d, _ in r.outputs)]
    assert out == [(101, b"one<~>"), (107, b"two~"), (101, b"one<~>")]
    assert list(r.df["verdict"]) == ["accept"] * 3 and list(r.df["error"].notna()) == [False, False, True]
    assert "already went on" in str(r.errors[0])


@pytest.mark.parametrize("ipv6", [False, True])
def test_a_first_rewrite_behind_bytes_that_already_went_is_refused(tmp_path: Path, ipv6: bool) -> None:
    """The connection's first rewrite comes on a retransmission, after later bytes went unchanged: the
    dispatcher's note of how far the stream went (keyed as sequence adjustment keys it, IPv4 and IPv6)
    makes it a refusal, and what goes is the segment as it arrived."""
    ends = {"sport": 40000, "dport": 8080, "ipv6": ipv6}
    path = capture(tmp_path / "first.pcap", [
        tcp(flags="PA", seq=101, ack=501, payload=b"one~", **ends),
        tcp(flags="PA", seq=105, ack=501, payload=b"two~", **ends),
        tcp(flags="PA", seq=101, ack=501, payload=b"one~", **ends),  # sent again: now the handler grows it
    ])  # fmt: skip
    seen = []

    def grow_again(pkt):
        seen.append(1)
        if len(seen) == 3:
            pkt.tcp.payload = b"one<~>"

    r = pktlab.replay(path)
    r.add_handler(grow_again, "grow")
    r.run()
    out = [(t.seq, t.payload) for t in (pktlab.Packet(None, d).tcp for _, d, _ in r.outputs)]
    assert out == [(101, b"one~"), (105, b"two~"), (101, b"one~")]
    assert list(r.df["error"].notna()) == [False, False, True]
    assert "already went on" in str(r.errors[0])


def test_an_acknowledgement_of_bytes_that_never_passed_is_said(tmp_path: Path) -> None:
    """The receiver acknowledges bytes after the rewritten segment that pktlab never saw (a full
    fail-open queue passed them): the stream it has is not the rewritten one, and that is an error
    on that acknowledgement (once), not silence.  Acknowledging what passed is no error."""
    path = capture(tmp_path / "unseen.pcap", [
        tcp(flags="PA", seq=101, ack=501, payload=b"one~", **C),
        tcp(flags="A", seq=501, ack=107, **S),  # one<~> (6 bytes): all that passed
        tcp(flags="A", seq=501, ack=117, **S),  # 10 bytes more that never came through
        tcp(flags="A", seq=501, ack=117, **S),
    ])  # fmt: skip

    def grow(pkt):
        if pkt.tcp.payload:
            pkt.tcp.payload = pkt.tcp.payload.replace(b"~", b"<~>")

    r = pktlab.replay(path)
    r.add_handler(grow, "grow")
    r.run()
    assert list(r.df["verdict"]) == ["accept"] * 4
    errors = list(r.df["error"])
    assert [e is not None for e in errors] == [False, False, True, False]
    assert "never passed pktlab" in errors[2] and "fail_open=False" in errors[2]
    assert [t.ack for t in (pktlab.Packet(None, d).tcp for _, d, _ in r.outputs)][1] == 105


def _held_replay(tmp_path: Path, hold):  # type: ignore[no-untyped-def]
    path = capture(tmp_path / "held.pcap", [
        tcp(flags="PA", seq=101, ack=501, payload=b"hello", **C),
        tcp(flags="PA", seq=106, ack=501, payload=b"world", **C),
    ])  # fmt: skip
    r = pktlab.replay(path)
    r.hold(hold)
    r.attach()
    return r


def test_held_segments_rewritten_in_the_notebook_shift_the_rest(tmp_path: Path) -> None:
    """Held packets get their verdict through the same adjustment: grow the first, the second moves."""
    from pktlab.lab.network import wait_until

    r = _held_replay(tmp_path, lambda pkt: True)
    try:
        assert wait_until(lambda: len(r.held) == 2, timeout=10)
        first, second = list(r.held)
        first.packet.tcp.payload = b"hello, "
        first.accept()
        second.accept()
        assert r.wait(10)
    finally:
        r.detach()
    out = [pktlab.Packet(None, d).tcp for _, d, _ in r.outputs]
    assert [(t.seq, t.payload) for t in out] == [(101, b"hello, "), (108, b"world")]


def test_growing_a_held_segment_after_later_bytes_went_is_refused_and_it_stays_held(tmp_path: Path) -> None:
    from pktlab.lab.network import wait_until

    r = _held_replay(tmp_path, lambda pkt: pkt.tcp.payload == b"hello")
    try:
        assert wait_until(lambda: len(r.held) == 1 and r.record.n == 1, timeout=10)  # "world" went on
        held = r.held[0]
        held.packet.tcp.payload = b"hello, "
        with pytest.raises(pktlab.SeqAdjError, match="behind bytes of its stream that already went on"):
            held.accept()
        assert len(r.held) == 1  # nothing lost: still waiting for a verdict
        held.packet.tcp.payload = b"hello"
        held.accept()
        assert r.wait(10)
    finally:
        r.detach()
    out = sorted((t.seq, t.payload) for t in (pktlab.Packet(None, d).tcp for _, d, _ in r.outputs))
    assert out == [(101, b"hello"), (106, b"world")]
