"""Flow verdicts in the kernel: pkt.accept(flow=True) / pkt.drop(flow=True) decide the rest of a connection."""

from __future__ import annotations

import socket
import time

import pytest

import pktlab
from pktlab import Lab
from pktlab.kernel import netns
from tests.conftest import needs_live, pktlab_rules

pytestmark = needs_live


def _nft_tables(ns: str) -> list[str]:
    return [t for t in netns.run(ns, ["nft", "list", "tables"]).stdout.splitlines() if "pktlab_flows" in t]


def test_an_accepted_flow_never_reaches_the_queue_again(lab: Lab, queue_num: int) -> None:
    s = pktlab.attach(queue_num, rule="-p tcp --dport 9001", netns=lab.server, flow_verdicts=True)
    calls = []
    try:

        @s.handler
        def first_decides(pkt):
            calls.append(str(pkt.tcp.flags))
            return pkt.accept(flow=True)

        r = lab.tcp(10 << 20, port=9001)
        assert r["received"] == 10 << 20  # the whole transfer, intact
        assert calls == ["S"] and s.record.n == 1  # only the SYN met the queue; the kernel took the rest
        assert s.kernel_counters().id_sequence == 1  # the kernel queued exactly one packet
        (flow,) = s.flows_offloaded
        assert (flow.verdict, flow.proto, flow.dport, flow.dst) == ("accept", 6, 9001, lab.server.addr)
        assert flow.bytes is not None and flow.bytes > 10 << 20  # the kernel's count: both directions, headers
        assert "flow verdicts: 1 flows decided in the kernel" in str(s.status())
    finally:
        s.detach()
    assert _nft_tables(lab.server.netns) == [] and pktlab_rules(lab.server.netns) == []


def _wait_for(cond, what: str, seconds: float = 10.0) -> None:
    deadline = time.monotonic() + seconds
    while not cond():
        assert time.monotonic() < deadline, f"{what} did not happen within {seconds} s"
        time.sleep(0.01)


def test_a_dropped_flow_is_dropped_in_the_kernel_and_revoking_brings_it_back(lab: Lab, queue_num: int) -> None:
    s = pktlab.attach(queue_num, rule="-p udp --dport 9000", netns=lab.server, flow_verdicts=True)
    rx = netns.call_in(lab.server.netns, socket.socket, socket.AF_INET, socket.SOCK_DGRAM)
    tx = netns.call_in(lab.client.netns, socket.socket, socket.AF_INET, socket.SOCK_DGRAM)
    try:
        rx.bind((lab.server.addr, 9000))
        rx.settimeout(0.5)

        @s.handler
        def no_thanks(pkt):
            return pkt.drop(flow=True)

        tx.sendto(b"first", (lab.server.addr, 9000))
        _wait_for(lambda: s.flows_offloaded, "the flow's drop in the kernel")  # the first datagram decided it
        for _ in range(49):  # the same flow (one socket): dropped by the kernel, none reaches the queue
            tx.sendto(b"more", (lab.server.addr, 9000))
        with pytest.raises(TimeoutError):
            rx.recv(100)
        (flow,) = s.flows_offloaded
        assert flow.verdict == "drop" and flow.packets == 49  # dropped by the kernel (the first by the handler)
        assert s.record.n == 1 and s.record.counts[pktlab.DROP] == 1
        # re-running the handler's cell replaces it: its flow verdicts are taken back, packets meet it again
        s.add_handler(lambda pkt: pkt.accept(), "no_thanks")
        assert s.flows_offloaded == [] and s.status().decided_flows == 0
        tx.sendto(b"again", (lab.server.addr, 9000))
        assert rx.recv(100) == b"again" and s.record.n == 2
    finally:
        rx.close()
        tx.close()
        s.detach()
    assert _nft_tables(lab.server.netns) == [] and pktlab_rules(lab.server.netns) == []


def test_without_flow_verdicts_at_attach_the_kernel_takes_over_from_the_next_packet(lab: Lab, queue_num: int) -> None:
    # the first decision installs the rules and starts conntrack, which meets this connection after its SYN
    s = pktlab.attach(queue_num, rule="-p tcp --dport 9001", netns=lab.server)
    try:
        s.add_handler(lambda pkt: pkt.accept(flow=True), "decide")
        assert lab.tcp(1 << 20, port=9001)["received"] == 1 << 20
        # the SYN (decided), then what the client sent before the next packet's verdict marked the connection:
        # at most its initial window (10 segments) after the handshake's ACK (none when the verdict comes first);
        # each carried the mark again
        handlers = [e.handler for e in s.record.tail(100)]
        assert 1 <= len(handlers) <= 16 and handlers[0] == "decide"
        assert set(handlers[1:]) <= {"flow (decide)"}
        assert len(s.flows_offloaded) == 1
        s.revoke_flows()
        assert s.flows_offloaded == []
    finally:
        s.detach()


def test_a_queue_before_conntrack_refuses_flow_verdicts(lab: Lab, queue_num: int) -> None:
    with pytest.raises(pktlab.SessionError, match="flow verdicts need conntrack"):
        pktlab.attach(queue_num, rule="-p udp", hook="PREROUTING", table="raw", netns=lab.server, flow_verdicts=True)
    assert pktlab_rules(lab.server.netns) == [] and _nft_tables(lab.server.netns) == []
