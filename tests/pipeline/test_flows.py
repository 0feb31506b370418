"""Flows: pkt.flow and s.flows, on packets made by hand and through the one dispatcher (a replay)."""

from __future__ import annotations

from pathlib import Path

import pytest

import pktlab
from pktlab import PktlabError
from pktlab.pipeline.flows import FlowTable
from pktlab.testing import capture, icmp_echo, tcp, udp

C, S = "10.77.1.1", "10.77.2.2"


def handshake_and_close(t0: float = 0.0) -> list:
    """A TCP connection client -> server:9001 from SYN to the last ACK, as packets."""
    c = {"src": C, "dst": S, "sport": 40000, "dport": 9001}
    s = {"src": S, "dst": C, "sport": 9001, "dport": 40000}
    return [
        tcp(flags="S", seq=100, time=t0, **c),
        tcp(flags="SA", seq=500, ack=101, time=t0 + 0.001, **s),
        tcp(flags="A", seq=101, ack=501, time=t0 + 0.002, **c),
        tcp(flags="PA", seq=101, ack=501, payload=b"hello", time=t0 + 0.003, **c),
        tcp(flags="PA", seq=501, ack=106, payload=b"hi!", time=t0 + 0.004, **s),
        tcp(flags="FA", seq=106, ack=504, time=t0 + 0.005, **c),
        tcp(flags="FA", seq=504, ack=107, time=t0 + 0.006, **s),
        tcp(flags="A", seq=107, ack=505, time=t0 + 0.007, **c),
    ]


def test_one_flow_for_both_directions_with_counts_and_tcp_states() -> None:
    table = FlowTable()
    states, flows = [], []
    for p in handshake_and_close():
        f = table.observe(p)
        flows.append(f)
        states.append((f.direction, f.tcp_state))
    assert all(f is flows[0] for f in flows) and len(table) == 1
    assert states == [
        ("original", "syn-sent"),
        ("reply", "syn-received"),
        ("original", "established"),
        ("original", "established"),
        ("reply", "established"),
        ("original", "fin-wait"),
        ("reply", "closing"),
        ("original", "closed"),
    ]
    f = flows[0]
    assert f.a == (C, 40000) and f.b == (S, 9001) and f.protocol == "tcp"
    assert f.packets == [5, 3] and f.bytes[0] == 5 * 40 + 5 and f.bytes[1] == 3 * 40 + 3


def test_udp_icmp_and_a_new_connection_on_the_ports_of_a_closed_one() -> None:
    table = FlowTable()
    a = table.observe(udp(src=C, dst=S, sport=5000, dport=53))
    b = table.observe(udp(src=S, dst=C, sport=53, dport=5000))
    assert a is b and a.packets == [1, 1] and a.tcp_state is None
    e1 = table.observe(icmp_echo(src=C, dst=S, seq=1))
    assert e1 is not a and e1.protocol == "icmp"
    first = [table.observe(p) for p in handshake_and_close()][0]
    assert first.closed
    again = table.observe(tcp(flags="S", src=C, dst=S, sport=40000, dport=9001, seq=9000, time=1.0))
    assert again is not first and again.tcp_state == "syn-sent" and again.packets == [1, 0]


def test_state_dict_is_bounded_and_the_table_expires_and_evicts() -> None:
    table = FlowTable(max_flows=3, idle=5.0, state_limit=2)
    f = table.observe(udp(src=C, dst=S, sport=1, time=0.0))
    f.state["a"] = 1
    f.state["b"] = 2
    f.state["a"] = 3  # an existing key: fine
    with pytest.raises(PktlabError, match="already holds 2 keys"):
        f.state["c"] = 4
    for port in (2, 3, 4):
        table.observe(udp(src=C, dst=S, sport=port, time=1.0))
    assert len(table) == 3 and table.evicted == 1  # the flow seen longest ago went
    table.observe(udp(src=C, dst=S, sport=9, time=10.0))
    assert len(table) == 1 and table.expired == 3


def test_pkt_flow_through_a_replay_a_stateful_firewall_in_a_few_lines(tmp_path: Path) -> None:
    pkts = handshake_and_close()
    stray = tcp(flags="A", src=C, dst=S, sport=41000, dport=9001, seq=7, ack=7, time=0.01)
    other = [tcp(flags="S", src=C, dst=S, sport=42000, dport=22, time=0.02)]
    path = capture(tmp_path / "c.pcap", [*pkts, stray, *other])
    r = pktlab.replay(path)

    @r.handler
    def firewall(pkt):
        t = pkt.tcp
        if t is None:
            return None
        if t.flags.syn and not t.flags.ack:
            pkt.flow.state["open"] = t.dport == 9001
        return pkt.accept() if pkt.flow.state.get("open") else pkt.drop()

    r.run()
    assert r.df["verdict"].tolist() == ["accept"] * 8 + ["drop", "drop"]
    flows = r.flows
    assert len(flows) == 3
    row = flows[flows["aport"] == 40000].iloc[0]
    assert row["tcp_state"] == "closed" and row["packets_ab"] == 5 and row["packets_ba"] == 3
    assert row["state"] == {"open": True}


def test_tracking_starts_when_asked_and_counts_every_packet_from_then_on(tmp_path: Path) -> None:
    pkts = [udp(src=C, dst=S, sport=5000, seq=i, time=i * 0.001) for i in range(10)]
    r = pktlab.replay(capture(tmp_path / "u.pcap", pkts))
    seen = []

    @r.handler
    def count(pkt):
        if int.from_bytes(pkt.udp.payload[:4], "big") >= 4:
            seen.append(pkt.flow.packets[0])  # the first read (packet 4) starts the tracking
        return None

    r.run()
    assert seen == [1, 2, 3, 4, 5, 6]  # pkt.flow counts from the first read on
    assert r.flows["packets_ab"].tolist() == [10]  # s.flows reads the record: every packet, from the first


def test_status_says_what_flows_and_tcp_adjustment_hold(tmp_path: Path) -> None:
    r = pktlab.replay(capture(tmp_path / "c.pcap", handshake_and_close()))
    text = "\n".join(r.status().lines())
    assert "flows tracked" not in text and "TCP:" not in text

    @r.handler
    def grow(pkt):
        pkt.flow  # noqa: B018 (starts the tracking)
        if pkt.tcp.payload == b"hello":
            pkt.tcp.payload = b"hello, world"
        return None

    r.run()
    text = "\n".join(r.status().lines())
    assert "flows tracked: 1" in text
    assert "TCP: 1 connection(s) with rewritten lengths" in text
    client = [t for t in (pktlab.Packet(None, d).tcp for _, d, _ in r.outputs) if t.sport == 40000]
    assert [t.seq for t in client] == [100, 101, 101, 113, 114]  # after the 7 bytes more: shifted by 7


def test_a_flow_verdict_decides_the_rest_of_a_replayed_connection_without_the_handlers() -> None:
    r = pktlab.replay("lab-tcp")
    calls = []

    @r.handler
    def first(pkt):
        calls.append(pkt.tcp.flags)
        return pkt.accept(flow=True)

    r.run()
    n = pktlab.datasets.load("lab-tcp").packets_expected
    assert len(calls) == 1 and r.record.n == n
    assert [e.handler for e in r.record][1:] == ["flow (first)"] * (n - 1)
    (flow,) = r.flows_offloaded  # a replay: pktlab decided them, and counted them
    assert (flow.verdict, flow.proto, flow.packets) == ("accept", 6, n)
    assert "flow verdicts: 1 flows decided by pktlab (replay)" in str(r.status())
    r.run()  # a run starts afresh: the handler decides again
    assert len(calls) == 2


def test_a_dropped_flow_drops_every_later_packet_and_revoking_or_replacing_the_handler_takes_it_back() -> None:
    r = pktlab.replay("lab-udp")
    r.add_handler(lambda pkt: pkt.drop(flow=True), "no")
    r.configure(limit=5)
    r.attach()
    r.wait()
    assert r.record.counts[pktlab.DROP] == 5 and [e.handler for e in r.record] == ["no"] + ["flow (no)"] * 4
    assert r.outputs == [] and len(r.flows_offloaded) == 1
    assert r.revoke_flows() == 1 and r.flows_offloaded == []
    r.detach()
    with pytest.raises(pktlab.SessionError, match="flow=True needs a packet of a session's connection"):
        pktlab.Packet(None, udp(payload=b"x", raw=True)).accept(flow=True)


def test_a_refused_flow_verdict_decides_nothing() -> None:
    table = FlowTable()
    f = table.observe(handshake_and_close()[0])

    def refuse(flow, verdict):
        raise pktlab.SessionError("flow verdicts need conntrack")

    table.on_decide = refuse
    with pytest.raises(pktlab.SessionError):
        table.decide(f, "accept")
    assert f.verdict is None and table.decided == 0 and table.decided_flows() == []
    table.on_decide = lambda flow, verdict: 0x10000
    table.decide(f, "accept")
    assert (f.verdict, f.kernel_bit, table.decided) == ("accept", 0x10000, 1)
    assert table.revoke() == [f] and (f.verdict, f.kernel_bit, table.decided) == (None, 0, 0)
