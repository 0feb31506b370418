"""Link conditions on the real kernel: delay (the queue's delay line), random loss, rate (tbf); removed with the lab.

Each is measured with bounds this machine's noise cannot break: a delay is a floor no packet can
beat (and a generous ceiling), a loss rate is checked within five standard deviations of its
binomial count, a rate against what tbf lets through at most and a wide floor.
"""

from __future__ import annotations

import statistics

import pytest

from pktlab import Lab, LabError
from pktlab.kernel import netns
from pktlab.lab.conditions import Conditions
from tests.conftest import needs_live, pktlab_rules

pytestmark = needs_live


def test_a_delay_on_both_directions_adds_twice_it_to_the_round_trip(router_lab: Lab) -> None:
    base = router_lab.ping(10, interval=0.02)
    link = router_lab.link("router", "server").set(delay="20ms")
    delayed = router_lab.ping(10, interval=0.02)
    link.set(delay="5ms", jitter="2ms", direction="b>a")  # while it runs: one direction changed
    mixed = router_lab.ping(10, interval=0.02)
    link.set(delay=0, jitter=0)
    after = router_lab.ping(10, interval=0.02)
    assert base.received == delayed.received == mixed.received == after.received == 10
    # no packet can leave before its time; the ceiling only catches a delay line that lost its clock
    assert delayed.min >= 40.0 and statistics.median(delayed.rtts) < 40.0 + 15
    assert mixed.min >= 20.0 + 3.0 and statistics.median(mixed.rtts) < 27.0 + 15
    assert after.max < 10.0  # gone: no queue in the path any more


def test_loss_drops_its_share_in_one_direction_only(lab: Lab) -> None:
    link = lab.link("client", "server").set(loss="20%", direction="a>b")
    assert link.conditions == {"client -> server": Conditions(loss=0.2), "server -> client": Conditions()}
    up = lab.udp(2000, rate=20000, idle=0.5)
    down = lab.udp(2000, rate=20000, idle=0.5, src="server", dst="client", port=9002)
    assert up.sent == down.sent == 2000
    # binomial(2000, 0.8): mean 1600, sd 17.9; five sd either way
    assert 1600 - 90 <= up.received <= 1600 + 90, up.received
    assert down.received == 2000
    link.clear()
    assert lab.udp(500, rate=20000, idle=0.5).received == 500


def test_a_rate_limits_a_transfer_to_it(lab: Lab) -> None:
    lab.link("client", "server").set(rate="20mbit")
    got = lab.tcp(2_500_000, timeout=20)
    mbps = got["received"] * 8 / got["seconds"] / 1e6
    assert got["received"] == 2_500_000
    assert 10 < mbps <= 20 * 1.05, mbps  # tbf passes no more than its rate (and one burst of 10 kB)


def test_conditions_go_with_the_lab_and_leave_nothing() -> None:
    lab = Lab("router")
    names = [h.netns for h in lab.hosts.values()]
    try:
        lab.link("client", "router").set(delay="10ms", loss=0.01, rate="100mbit")
        lab.link("router", "server").set(delay="1ms")
        assert any("NFQUEUE" in r for r in pktlab_rules(lab.router.netns))
        text = "\n".join(lab.describe())
        assert "link client -> router: delay 10 ms, loss 1 %, rate 100 Mbit/s" in text
        assert "link server -> router: delay 1 ms" in text
    finally:
        lab.down()
    assert not [n for n in names if n in netns.list_names()]


def test_bad_conditions_are_refused_before_anything_changes(lab: Lab) -> None:
    link = lab.link("client", "server")
    with pytest.raises(LabError, match="jitter 5 ms is larger than the delay"):
        link.set(jitter="5ms")
    with pytest.raises(LabError, match="not a rate"):
        link.set(delay="10ms", rate="fast")
    assert all(c.describe() == "no conditions" for c in link.conditions.values())
    assert not pktlab_rules(lab.client.netns) and not pktlab_rules(lab.server.netns)
    with pytest.raises(LabError, match="no link between 'client' and 'router'"):
        lab.link("client", "router")


def test_conditions_change_while_traffic_flows_and_lose_nothing(lab: Lab) -> None:
    """A delay line started, changed and stopped under a running flow: every datagram arrives, once."""
    flow = lab.start_udp(3000, rate=3000, idle=1.0, keep=0)  # one second of traffic
    link = lab.link("client", "server")
    link.set(delay="10ms")
    link.set(delay="3ms", jitter="2ms")
    link.set(delay=0, jitter=0)  # the held packets leave at once
    got = flow.wait()
    assert got.sent == 3000 and got.unique == 3000 and got.duplicates == 0


def test_a_delay_and_a_looking_session_leave_tcp_as_it_is(lab: Lab, queue_num: int) -> None:
    """No MSS clamp where no handler may grow a payload: the delay line, a session without handlers."""
    from scapy.layers.inet import TCP

    import pktlab

    def mss(pkt) -> int:
        return int(dict(pkt.scapy[TCP].options)["MSS"])

    lab.link("client", "server").set(delay="2ms")  # the client's delay line holds its SYN
    seen: list[int] = []
    server = pktlab.attach(queue_num, rule="-p tcp --dport 9001 --tcp-flags SYN SYN", netns=lab.server)
    looker = pktlab.attach(queue_num + 1, rule="-p tcp --sport 9001 --tcp-flags SYN SYN", hook="OUTPUT",
                           netns=lab.server)  # fmt: skip
    try:
        server.add_handler(lambda pkt: seen.append(mss(pkt)), "syn_mss")  # reads, before its own clamp
        assert lab.tcp(4096)["received"] == 4096
        assert seen == [1460]  # as the client sent it, through the delay line
        answer = looker.record.tail(1)[0]
        assert mss(pktlab.Packet(None, answer.head)) == 1460  # the server's SYN-ACK, seen by a session that looks
    finally:
        server.detach()
        looker.detach()
