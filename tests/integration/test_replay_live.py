"""Replay and live give the same verdicts for the same handler on the same traffic."""

from __future__ import annotations

from pathlib import Path

import pktlab
from pktlab import Lab
from tests.conftest import needs_live

pytestmark = needs_live


def mixed(pkt):
    if pkt.udp is not None:
        seq = int.from_bytes(pkt.udp.payload[:4], "big")
        if seq % 3 == 0:
            return pkt.drop()
        if seq % 3 == 1:
            pkt.udp.payload = pkt.udp.payload[:4] + b"seen"
            return pkt.accept()
        raise ValueError("the third kind raises")
    if pkt.icmp is not None and pkt.icmp.seq % 2:
        return pkt.drop()
    if pkt.tcp is not None and pkt.tcp.flags.syn:
        return "accept"
    return None


def test_same_handler_same_verdicts_live_and_replayed(lab: Lab, queue_num: int, tmp_path: Path) -> None:
    # no deadline: a starved reader's rescued packet (the error verdict) would differ from the replay's, and the
    # deadline is not what this test compares (test_one_pipeline's hang case does, with a deadline)
    s = pktlab.attach(queue_num, netns=lab.server, snaplen=65535, record_size=1000, deadline=None)
    try:
        s.add_handler(mixed, "mixed")
        lab.udp(30, idle=0.3)
        lab.ping(4)
        lab.tcp(4096)
    finally:
        s.detach()
    live = s.df
    # 30 datagrams, 4 echo requests, the TCP connection's packets (its 4 KB may come as one GSO packet)
    assert s.to_pcap(tmp_path / "live.pcap") == len(live) >= 30 + 4 + 3

    r = pktlab.replay(tmp_path / "live.pcap", deadline=None)
    r.add_handler(mixed, "mixed")
    r.run()
    replayed = r.df
    cols = ["proto", "src", "dst", "sport", "dport", "verdict", "handler", "modified"]
    assert live[cols].astype(str).values.tolist() == replayed[cols].astype(str).values.tolist()
    assert (live["error"].notna() == replayed["error"].notna()).all()
    assert set(live["verdict"]) == {"accept", "drop"}
