"""Packets followed hook by hook with nftables tracing, on a client-router-server lab."""

from __future__ import annotations

import pktlab
from pktlab import Lab
from pktlab.kernel import netns
from tests.conftest import needs_root, pktlab_rules

pytestmark = needs_root


def _tables(lab: Lab) -> list[str]:
    out = []
    for h in lab.hosts.values():
        out += [t for t in netns.run(h.netns, ["nft", "list", "tables"]).stdout.split("\n") if t]
    return out


def test_ping_through_a_router_shows_each_hosts_hooks_in_order(router_lab: Lab, queue_num: int) -> None:
    s = pktlab.attach(queue_num, rule="-p icmp", hook="FORWARD", netns=router_lab.router)
    try:

        @s.handler
        def count_pings(pkt):
            return None

        with pktlab.trace(router_lab, "icmp", count=2, timeout=10) as tr:
            assert router_lab.ping(1).received == 1
        t = tr.result
        assert len(t) == 2
        request, reply = t.packets
        assert "echo-request" in request.summary() and "echo-reply" in reply.summary()
        assert [h for h, _ in request.passes] == ["client", "router", "server"]
        assert [h for h, _ in reply.passes] == ["server", "router", "client"]
        assert request.hooks("client") == ["OUTPUT", "POSTROUTING"]
        assert request.hooks("router") == ["PREROUTING", "FORWARD", "POSTROUTING"]
        assert request.hooks("server") == ["PREROUTING", "INPUT"]
        assert reply.hooks("server") == ["OUTPUT", "POSTROUTING"]
        assert reply.hooks("client") == ["PREROUTING", "INPUT"]
        # the queue step on the router, joined with pktlab's own record of the packet
        router_events = dict(request.passes)["router"]
        kinds = [(e.kind, e.verdict) for e in router_events if e.kind in ("rule", "pktlab")]
        assert ("rule", "queue") in kinds and ("pktlab", "accept") in kinds
        assert kinds.index(("rule", "queue")) < kinds.index(("pktlab", "accept"))
        df = t.df
        assert set(df["host"]) == {"client", "router", "server"} and (df["kind"] == "pktlab").sum() == 2
        text = t.text()
        assert "queue" in text and f"pktlab queue {queue_num}" in text
        assert t.plot() is not None
    finally:
        s.detach()
    assert not any("pktlab_trace" in t for t in _tables(router_lab))
    assert all(pktlab_rules(h.netns) == [] for h in router_lab.hosts.values())


def test_filter_selects_what_is_traced_and_count_bounds_it(router_lab: Lab) -> None:
    with pktlab.trace(router_lab, "udp and dst port 9000", count=3, timeout=10) as tr:
        router_lab.ping(2)
        router_lab.udp(5)
    t = tr.result
    assert len(t) == 3
    for p in t.packets:
        assert "udp dport 9000" in p.summary(), p.summary()
    assert not any("pktlab_trace" in x for x in _tables(router_lab))


def test_timeout_ends_a_trace_with_no_matching_packet(lab: Lab) -> None:
    tr = pktlab.trace(lab, "tcp port 1", count=1, timeout=0.5)
    lab.ping(1)
    t = tr.wait()
    assert len(t) == 0 and "no packet matching tcp port 1" in t.text()
    assert pktlab_rules(lab.server.netns) == []
