"""Sending in a replay: answers and sent packets go to the output capture, in order, and into the record."""

from __future__ import annotations

import pytest

import pktlab
from pktlab import SessionError
from pktlab.testing import capture, icmp_echo, udp


def test_answers_go_to_the_output_before_their_question_and_into_the_record(tmp_path) -> None:  # type: ignore[no-untyped-def]
    from scapy.layers.inet import IP, UDP

    r = pktlab.replay(capture(tmp_path / "q.pcap", [udp(payload=b"q1"), icmp_echo(seq=4), udp(payload=b"q2")]))

    @r.handler
    def answer(pkt):  # type: ignore[no-untyped-def]
        if pkt.udp is not None:
            pkt.reply(b"a" + pkt.udp.payload[1:])
            return pkt.drop()
        if pkt.udp is None and pkt.payload == b"":
            r.send(IP(src=pkt.ip.dst, dst=pkt.ip.src) / UDP(sport=5007, dport=5008) / b"note")
        return None

    st = r.run()
    out = [IP(d) for _, d, _ in r.outputs]
    assert [(p.summary().split(" / ")[1], bytes(p[UDP].payload) if UDP in p else None) for p in out] == [
        ("UDP 10.77.1.2:9000 > 10.77.1.1:40000", b"a1"),
        ("UDP 10.77.1.2:5007 > 10.77.1.1:5008", b"note"),
        ("ICMP 10.77.1.1 > 10.77.1.2 echo-request 0", None),
        ("UDP 10.77.1.2:9000 > 10.77.1.1:40000", b"a2"),
    ]
    times = [t for t, _, _ in r.outputs]
    assert times == sorted(times)  # each at its question's capture time
    assert r.record.sent == 3 and st.counters["sent"] == 3 and st.counters["drop"] == 2
    df = r.df
    assert list(df.direction) == ["sent", "in", "sent", "in", "sent", "in"]
    assert list(df.verdict) == ["sent", "drop", "sent", "accept", "sent", "drop"]
    r2 = pktlab.replay(capture(tmp_path / "again.pcap", [udp(payload=b"q1")]))
    r2.add_handler(lambda pkt: (pkt.reply(b"x"), pkt.drop())[1], "again")
    r2.write_pcap(tmp_path / "empty.pcap")
    r2.run()
    assert r2.write_pcap(tmp_path / "out.pcap") == 1


def test_an_ethernet_capture_gets_ethernet_answers(tmp_path) -> None:  # type: ignore[no-untyped-def]
    from scapy.layers.inet import IP, UDP
    from scapy.layers.l2 import Ether

    frame = Ether(src="02:00:00:00:00:01", dst="02:00:00:00:00:02") / IP(src="10.77.1.1", dst="10.77.1.2") / UDP(
        sport=1000, dport=2000) / b"q"  # fmt: skip
    r = pktlab.replay(capture(tmp_path / "e.pcap", [frame]))
    r.add_handler(lambda pkt: (pkt.reply(b"a"), pkt.drop())[1], "answer")
    r.run()
    [(_, data, link)] = r.outputs
    e = Ether(data)
    assert link == "ethernet" and (e.src, e.dst) == ("02:00:00:00:00:02", "02:00:00:00:00:01")
    assert (e[IP].dst, e[UDP].dport, bytes(e[UDP].payload)) == ("10.77.1.1", 1000, b"a")


def test_sending_outside_a_run_says_when_it_can(tmp_path) -> None:  # type: ignore[no-untyped-def]
    r = pktlab.replay(capture(tmp_path / "one.pcap", [udp()]))
    with pytest.raises(SessionError, match="not reading its capture"):
        r.send(udp(raw=True))
