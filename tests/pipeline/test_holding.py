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
        with pytest.raises(SessionError, match="a function of the packet"):
            s.hold("not a function")  # type: ignore[arg-type]
    finally:
        s.detach()  # the two still held get the default verdict
    assert len(held) == 0 and held.released == 4 and s.record.n == 10
    out = {int.from_bytes(pktlab.Packet(None, d).udp.payload[:4], "big"): d for _, d, _ in s.outputs}
    assert 0 not in out and set(out) == set(range(1, 10))
    assert pktlab.Packet(None, out[3]).udp.payload[4:] == b"rewritten"
    assert s.status().counters["drop"] == 1
