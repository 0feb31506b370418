"""Packets followed step by step through a client-router-server lab, with the kernel's own times and drop reasons."""

from __future__ import annotations

import socket
import sys
import time

import pytest

import pktlab
from pktlab import Lab
from pktlab.kernel import netns
from pktlab.measure.timeline import HOOKS
from tests.conftest import needs_root, pktlab_rules

pytestmark = needs_root

SEND = ("import socket, sys; s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); "
        "[s.sendto(b'x' * int(sys.argv[4]), (sys.argv[1], int(sys.argv[2]))) "
        "for _ in range(int(sys.argv[3]))]")


def _send(lab: Lab, port: int, n: int, size: int = 1) -> None:
    lab.client.run([sys.executable, "-c", SEND, lab.server.addr, str(port), str(n), str(size)])


def _tables(lab: Lab) -> list[str]:
    out = []
    for h in lab.hosts.values():
        out += [t for t in netns.run(h.netns, ["nft", "list", "tables"]).stdout.split("\n") if t]
    return out


def _assert_gone(lab: Lab) -> None:
    assert not any("pktlab_trace" in t for t in _tables(lab))
    assert all(pktlab_rules(h.netns) == [] for h in lab.hosts.values())


# where a packet can be on a host, in the order it gets there (OUTPUT and PREROUTING start a pass)
_ORDER = {"device in": 0, "PREROUTING": 1, "OUTPUT": 1, "INPUT": 2, "FORWARD": 2, "POSTROUTING": 3, "device out": 4,
          "local": 3}  # fmt: skip


def test_a_ping_through_the_router_has_kernel_times_that_rise_along_its_path(router_lab: Lab, queue_num: int) -> None:
    s = pktlab.attach(queue_num, rule="-p icmp", hook="FORWARD", netns=router_lab.router)
    try:

        @s.handler
        def count_pings(pkt):
            return None

        before = time.monotonic_ns()
        with pktlab.trace(router_lab, "icmp", count=2, timeout=10) as tr:
            assert router_lab.ping(1).received == 1
        after = time.monotonic_ns()
        t = tr.result
        assert len(t) == 2 and t.lost == 0
        request, reply = t.packets
        assert "echo-request" in request.summary() and "echo-reply" in reply.summary()
        assert request.hosts == ["client", "router", "server"], t.text()
        assert reply.hosts == ["server", "router", "client"], t.text()
        assert request.hooks("client") == ["OUTPUT", "POSTROUTING"]
        assert request.hooks("router") == ["PREROUTING", "FORWARD", "POSTROUTING"]
        assert request.hooks("server") == ["PREROUTING", "INPUT"]
        assert reply.hooks("server") == ["OUTPUT", "POSTROUTING"]
        assert reply.hooks("client") == ["PREROUTING", "INPUT"]
        for p in (request, reply):
            times = [st.t_ns for st in p.steps]
            assert all(st.exact for st in p.steps)
            assert all(a < b for a, b in zip(times, times[1:], strict=False)), "kernel times strictly increase"
            assert before < times[0] and times[-1] < after  # the kernel's CLOCK_MONOTONIC, within the trace
            for host, steps in p.passes:  # in time order, the steps follow the path through the host
                where = [_ORDER[st.lane] for st in steps if st.kind not in ("consumed", "drop")]
                assert where == sorted(where), (host, [(st.lane, st.text) for st in steps])
            # each host the packet left: a device transmit, then the next host's device receive
            for (h1, s1), (_h2, s2) in zip(p.passes, p.passes[1:], strict=False):
                assert s1[-1].kind == "transmit" and s2[0].kind == "receive", (h1, s1[-1].text, s2[0].text)
        assert [st.kind for st in request.steps if st.host == "server"][-1] == "consumed"  # answered: used, not lost
        assert any(st.kind == "socket" for st in reply.steps if st.host == "client")  # ping's socket got it
        # the queue step on the router, joined with pktlab's own record of the packet, between queueing and reinjection
        kinds = [(st.kind, st.verdict) for st in request.steps if st.host == "router"]
        assert kinds.index(("rule", "queue")) + 1 == kinds.index(("pktlab", "accept"))
        assert kinds.index(("pktlab", "accept")) < [k for k, _ in kinds].index("transmit")
        df = t.df
        assert set(df["host"]) == {"client", "router", "server"} and (df["kind"] == "pktlab").sum() == 2
        assert list(df.columns[:4]) == ["packet", "host", "lane", "kind"]
        assert all(g.is_monotonic_increasing for _, g in df.groupby("packet")["kernel_ns"])
        text = t.text()
        assert f"pktlab queue {queue_num}" in text and "received by eth0" in text and "µs here" in text
        fig = t.plot()
        assert "kernel" in fig.xaxis[0].axis_label and "router FORWARD" in fig.y_range.factors
    finally:
        s.detach()
    _assert_gone(router_lab)


def test_each_drop_says_why_and_who(router_lab: Lab, queue_num: int) -> None:
    lab = router_lab
    lab.router.run(["iptables", "-I", "FORWARD", "-p", "udp", "--dport", "9301", "-j", "DROP"])
    s = pktlab.attach(queue_num, rule="-p udp --dport 9302", hook="FORWARD", netns=lab.router)
    s.add_handler(lambda pkt: pkt.drop(), "no_9302")
    # a socket that never reads, with the smallest receive buffer: it holds one or two datagrams
    full = netns.call_in(lab.server.netns, socket.socket, socket.AF_INET, socket.SOCK_DGRAM)
    full.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1)
    full.bind((lab.server.addr, 9303))
    try:
        with pktlab.trace(lab, "udp and dst portrange 9300-9303", count=13, timeout=20) as tr:
            _send(lab, 9300, 1)  # nobody listens: NO_SOCKET on the server
            _send(lab, 9301, 1)  # the router's iptables rule drops it
            _send(lab, 9302, 1)  # the router's pktlab handler drops it
            _send(lab, 9303, 10, 1000)  # beyond the full buffer: SOCKET_RCVBUFF
        t = tr.result
    finally:
        full.close()
        s.detach()
        lab.router.run(["iptables", "-D", "FORWARD", "-p", "udp", "--dport", "9301", "-j", "DROP"])
    by_port = {int(p.summary().split(":")[2].split()[0]): p for p in t.packets}
    assert set(by_port) == {9300, 9301, 9302, 9303}
    no_socket = by_port[9300].dropped
    assert no_socket is not None and (no_socket.host, no_socket.reason) == ("server", "NO_SOCKET")
    rule = by_port[9301].dropped
    assert rule is not None and (rule.host, rule.reason, rule.lane) == ("router", "NETFILTER_DROP", "FORWARD")
    assert rule.by is not None and "udp dport 9301" in rule.by and "drop" in rule.by
    handler = by_port[9302].dropped
    assert handler is not None and handler.host == "router" and "handler no_9302" in (handler.by or "")
    full_drops = [p.dropped for p in t.packets if p.dropped is not None and p.dropped.reason == "SOCKET_RCVBUFF"]
    delivered = [p for p in t.packets if any(st.kind == "socket" for st in p.steps)]
    assert len(full_drops) >= 5 and {d.host for d in full_drops} == {"server"}
    assert 1 <= len(delivered) <= 5 and len(full_drops) + len(delivered) == 10
    df = t.drops
    assert set(df["reason"]) == {"NO_SOCKET", "NETFILTER_DROP", "NOT_SPECIFIED", "SOCKET_RCVBUFF"}
    assert df.loc[df["reason"] == "NETFILTER_DROP", "by"].str.contains("9301").all()
    assert "dropped: NETFILTER_DROP by ip filter FORWARD" in t.text()
    _assert_gone(lab)


def test_filter_selects_what_is_traced_and_count_bounds_it(router_lab: Lab) -> None:
    with pktlab.trace(router_lab, "udp and dst port 9000", count=3, timeout=10) as tr:
        router_lab.ping(2)
        router_lab.udp(5)
    t = tr.result
    assert len(t) == 3
    for p in t.packets:
        assert p.summary().startswith("udp ") and ":9000 " in p.summary(), p.summary()
        assert all(st.lane in HOOKS or st.kind in ("receive", "device queue", "transmit", "socket", "consumed")
                   for st in p.steps)  # fmt: skip
    _assert_gone(router_lab)


def test_timeout_ends_a_trace_with_no_matching_packet(lab: Lab) -> None:
    tr = pktlab.trace(lab, "tcp port 1", count=1, timeout=0.5)
    lab.ping(1)
    t = tr.wait()
    assert len(t) == 0 and "no packet matching tcp port 1" in t.text()
    _assert_gone(lab)


def test_a_flood_is_traced_only_as_far_as_the_count_asks(lab: Lab) -> None:
    # 2,000 datagrams as fast as the sender goes, a trace of 5: the kernel flags 5 per host and direction
    with pktlab.trace(lab, "udp and dst port 9400", count=5, timeout=10) as tr:
        lab.udp(2000, port=9400, idle=0.3)
    t = tr.result
    assert len(t) == 5 and t.lost == 0
    assert all(p.hosts == ["client", "server"] for p in t.packets)
    assert tr.messages_kept <= 5 * 2 * 8  # no message kept for a packet beyond the 5
    with pytest.raises(ValueError, match="from 1 to 10,000"):
        pktlab.trace(lab, "udp", count=10_001)
    _assert_gone(lab)


def test_link_conditions_are_named_in_traces_and_drops(router_lab: Lab) -> None:
    """The delay line and the loss rule read as the link condition that made them, verdicts with queue numbers."""
    lab = router_lab
    lab.link("router", "server").set(delay="5ms", loss=0.9)
    w = pktlab.drops(lab, "udp and dst port 9300", seconds=20)
    with pktlab.trace(lab, "udp and dst port 9300", count=6, timeout=20) as tr:
        _send(lab, 9300, 6)
    seen = w.stop()
    text = tr.result.text()
    assert "link condition: the delay line of eth1 (queue 65101)" in text, text
    assert "queue num 65101 bypass -> queue" not in text and " -> -" not in text  # no raw verdict numbers
    lost = [p.dropped for p in tr.result.packets if p.dropped is not None and p.dropped.host == "server"
            and p.dropped.reason == "NETFILTER_DROP"]  # fmt: skip
    assert lost, text  # 90 % of six: at least one, but for one run in a million
    assert all("link condition: 90.0% loss arriving on eth0" in (d.by or "") for d in lost), [d.by for d in lost]
    rules = [d.rule for d in seen.drops if d.reason == "NETFILTER_DROP"]
    assert rules and all("link condition: 90.0% loss arriving on eth0" in (r or "") for r in rules), rules
    assert not any("pktlab_trace" in t for t in _tables(lab))  # the trace's own parts gone; the link's stay
