"""The capture source: reading, refusing what it cannot read, the spools (no root)."""

from __future__ import annotations

import struct
from pathlib import Path

import pytest
from pktlab.pipeline._capture import Spool
from scapy.layers.l2 import Ether

from pktlab import PktlabError
from pktlab import testing as t
from pktlab.pipeline.capture import CapturePackets, frames, open_capture


def test_frames_are_read_in_order_with_their_times(tmp_path: Path) -> None:
    path = t.capture(tmp_path / "c.pcap", [t.udp(seq=i) for i in range(4)], start=100.0, gap=0.25)
    got = list(frames(path))
    assert [int.from_bytes(f.data[28:32], "big") for f in got] == [0, 1, 2, 3]
    assert [round(f.time, 3) for f in got] == [100.0, 100.25, 100.5, 100.75] and {f.link for f in got} == {"ip"}
    eth = t.capture(tmp_path / "e.pcap", [Ether() / t.udp(seq=9, raw=True)])
    (frame,) = frames(eth)
    assert frame.link == "ethernet" and len(frame.data) == 14 + 32


def test_capture_packets_read_again_when_asked(tmp_path: Path) -> None:
    path = t.capture(tmp_path / "c.pcap", [t.udp(seq=i) for i in range(6)])
    p = CapturePackets(str(path))
    assert len(p) == 6 and p[-1].data[28:32] == (5).to_bytes(4, "big")
    assert [f.data[31] for f in p[1:5:2]] == [1, 3]
    with pytest.raises(IndexError, match="past the capture's 6 packets"):
        p[6]


def test_what_cannot_be_read_is_refused_in_one_sentence(tmp_path: Path) -> None:
    with pytest.raises(PktlabError, match="no capture file"):
        open_capture(tmp_path / "none.pcap")
    bad = tmp_path / "bad.pcap"
    bad.write_bytes(b"this is not a capture at all, not even close")
    with pytest.raises(PktlabError, match="is not a pcap or pcapng file"):
        open_capture(bad)
    odd = tmp_path / "odd.pcap"  # link type 147 (a user DLT): not IP
    odd.write_bytes(struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 65535, 147))
    with pytest.raises(PktlabError, match="link type 147, which pktlab cannot replay"):
        open_capture(odd)
    good = t.capture(tmp_path / "g.pcap", [t.udp()])
    with pytest.raises(PktlabError, match="is not valid for g.pcap"):
        open_capture(good, filter="udp and port")


def test_a_spool_gives_back_what_went_in_and_keeps_appending(tmp_path: Path) -> None:
    s = Spool()
    s.append(1.5, b"one")
    s.append(2.5, b"")
    assert list(s) == [(1.5, b"one"), (2.5, b"")]
    s.append(3.0, b"three")
    assert len(s) == 3 and list(s)[-1] == (3.0, b"three")


def test_reading_a_spool_does_not_move_where_the_next_packet_goes() -> None:
    s = Spool()
    s.append(1.0, b"a")
    s.append(2.0, b"bb")
    reading = iter(s)
    assert next(reading) == (1.0, b"a")
    s.append(3.0, b"ccc")  # a replay still running appends while the notebook reads
    assert list(reading) == [(2.0, b"bb")]  # what was there when the reading began
    assert list(s) == [(1.0, b"a"), (2.0, b"bb"), (3.0, b"ccc")]
