"""Held packets on a replay: the notebook gives verdicts, one each, and detach releases the rest (no root)."""

from __future__ import annotations

from pathlib import Path

import pytest

import pktlab
from pktlab import SessionError
from pktlab import testing as t


def seq(pkt) -> int:
    return int.from_bytes(pkt.udp.payload[:4], "big")


def test_hold_give_release(tmp_path: Path) -> None:
    s = pktlab.replay(t.capture(tmp_path / "c.pcap", [t.udp(seq=i) for i in range(10)]))
    held = s.hold(lambda pkt: seq(pkt) % 3 == 0)  # 0, 3, 6, 9
    s.attach()
    try:
        assert s.wait(10) and len(held) == 4 and s.record.n == 6
        assert [seq(h.packet) for h in held] == [0, 3, 6, 9] and "4 held packet(s)" in repr(held)
        first = held[0]
        first.drop()
        with pytest.raises(SessionError, match="already got its verdict"):
            first.accept()
        held[0].udp.payload = held[0].udp.payload[:4] + b"rewritten"
        held[0].accept()
        assert len(held) == 2 and s.record.n == 8
        with pytest.raises(SessionError, match="the hold predicate is a str, not a function; pass a function of one"):
            s.hold("not a function")  # type: ignore[arg-type]

        async def picks(pkt):  # its call makes a coroutine, which is true: it would have held every packet
            return True

        with pytest.raises(SessionError, match="the hold predicate is an async function"):
            s.hold(picks)
    finally:
        s.detach()  # the two still held get the default verdict
    assert len(held) == 0 and held.released == 4 and s.record.n == 10
    out = {int.from_bytes(pktlab.Packet(None, d).udp.payload[:4], "big"): d for _, d, _ in s.outputs}
    assert 0 not in out and set(out) == set(range(1, 10))
    assert pktlab.Packet(None, out[3]).udp.payload[4:] == b"rewritten"
    assert s.status().counters["drop"] == 1


def test_a_predicate_that_writes_the_packet_holds_it_written(tmp_path: Path) -> None:
    """The held packet is the one the predicate wrote, and goes on so; the record keeps it as it arrived."""
    s = pktlab.replay(t.capture(tmp_path / "c.pcap", [t.udp(seq=i) for i in range(3)]))

    def lower_ttl_and_hold(pkt) -> bool:  # type: ignore[no-untyped-def]
        pkt.ip.ttl = 9
        return True

    held = s.hold(lower_ttl_and_hold)
    s.attach()
    try:
        assert s.wait(10) and len(held) == 3
        held[0].accept()
        held[0].drop()
    finally:
        s.detach()  # the last one gets the default verdict
    assert len(held) == 0 and held.released == 3 and s.status().counters["drop"] == 1
    assert [pktlab.Packet(None, d).ip.ttl for _, d, _ in s.outputs] == [9, 9]
    assert {pktlab.Packet(None, e.head).ip.ttl for e in s.record.entries()} == {64}


def test_a_predicate_that_raises_is_the_users_failure_and_holds_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Packets the predicate fails on go on through the chain; status() counts them as the predicate's
    failures (not pktlab's internal errors) and the cell is told of the first one."""
    s = pktlab.replay(t.capture(tmp_path / "c.pcap", [t.udp(seq=i) for i in range(6)]))
    held = s.hold(lambda pkt: 1 / (seq(pkt) % 2))  # raises on even numbers, holds the odd ones
    s.attach()
    try:
        assert s.wait(10) and [seq(h.packet) for h in held] == [1, 3, 5] and s.record.n == 3
        status = s.status()
        assert status.hold_failures == 3 and status.internal_errors == 0
        assert "hold predicate failed 3 time(s), the last with ZeroDivisionError" in str(status)
    finally:
        s.detach()
    said = capsys.readouterr().err
    assert said.count("the hold predicate failed (ZeroDivisionError: division by zero)") == 1
