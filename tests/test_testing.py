"""pktlab.testing: the factories make what they say (and a capture of them replays)."""

from __future__ import annotations

from pathlib import Path

import pytest
from scapy.layers.l2 import Ether

import pktlab
from pktlab import testing as t


def test_packets_parse_with_pktlab_views() -> None:
    u = t.udp(seq=7, dport=53, size=100)
    assert len(u) == 100 and u.udp.dport == 53 and int.from_bytes(u.udp.payload[:4], "big") == 7
    assert u.ip.src == t.CLIENT and u.ip.dst == t.SERVER
    s = t.tcp(flags="SA", dport=80)
    assert s.tcp.flags.syn and s.tcp.flags.ack and s.tcp.dport == 80
    assert t.udp(ipv6=True).ipv6.dst == t.SERVER6
    assert t.icmp_echo(seq=3).icmp.seq == 3
    with pytest.raises(ValueError, match="smaller than the headers"):
        t.udp(seq=1, size=20)


def test_a_capture_of_factory_packets_replays(tmp_path: Path) -> None:
    path = t.capture(tmp_path / "c.pcap", [t.udp(seq=i) for i in range(5)])
    s = pktlab.replay(path)
    s.add_handler(lambda pkt: pkt.drop() if int.from_bytes(pkt.udp.payload[:4], "big") % 2 else None, "odd")
    st = s.run()
    assert st.packets == 5 and st.counters["drop"] == 2
    assert [e.id for e in s.record] == [1, 2, 3, 4, 5]
    eth = t.capture(tmp_path / "e.pcap", [Ether() / t.udp(seq=1, raw=True)])
    assert pktlab.replay(eth).run().packets == 1
    with pytest.raises(ValueError, match="one link type"):
        t.capture(tmp_path / "m.pcap", [Ether() / t.udp(raw=True), t.udp()])


def test_entries_go_into_a_record() -> None:
    rec = pktlab.Record(10)
    rec.append(t.entry(id=3, verdict="drop", handler="h", error="ValueError: x"))
    (e,) = list(rec)
    assert (e.id, e.verdict, e.handler, e.error, e.hook) == (3, "drop", "h", "ValueError: x", "INPUT")
