"""Labs on the real kernel: namespaces, links, routes, commands, teardown."""

from __future__ import annotations

import asyncio

import pytest

from pktlab import Lab, LabError
from pktlab.kernel import netns
from tests.conftest import needs_live

pytestmark = needs_live


def test_pair_lab_reaches_both_ways_and_goes_away() -> None:
    with Lab() as lab:
        names = [h.netns for h in lab.hosts.values()]
        assert all(n.startswith("pktlab-") for n in names)
        assert lab.client.addr == "10.77.1.1" and lab.server.addr == "10.77.1.2"
        assert lab.ping(2).received == 2
        assert lab.ping(2, src="server", dst="client").received == 2
        assert "10.77.1.2/24" in lab.server.run("ip -o addr show dev eth0").stdout
    assert not [n for n in names if n in netns.list_names()]
    with pytest.raises(LabError, match="lab is down"):
        lab.udp(1)


def test_router_lab_routes_through_the_router() -> None:
    with Lab("router") as lab:
        assert lab.router is not None
        assert lab.router.addrs == {"eth0": "10.77.1.2", "eth1": "10.77.2.1"}
        assert lab.ping(2).received == 2  # client 10.77.1.1 -> server 10.77.2.2 via the router
        assert lab.udp(50).unique == 50
        assert "1" in lab.router.run("sysctl -n net.ipv4.ip_forward").stdout


def test_two_labs_coexist_with_the_same_addresses() -> None:
    with Lab() as a, Lab() as b:
        assert a.server.netns != b.server.netns
        assert a.udp(20, port=9100).unique == 20
        assert b.udp(20, port=9100).unique == 20


def test_popen_processes_are_killed_on_down() -> None:
    lab = Lab()
    proc = lab.server.popen(["sleep", "60"])
    lab.down()
    assert proc.poll() is not None


def test_failed_command_is_one_clear_sentence() -> None:
    with Lab() as lab:
        with pytest.raises(LabError, match="failed in server with exit code"):
            lab.server.run("ls /nonexistent-pktlab-path")
        with pytest.raises(LabError, match="no host 'router'"):
            lab["router"]
    with pytest.raises(LabError, match="unknown topology"):
        Lab("mesh")


def test_lab_works_inside_a_running_event_loop() -> None:
    # a Jupyter kernel runs an asyncio loop in its main thread; pyroute2 must not trip over it
    async def main() -> str:
        with Lab() as lab:
            assert lab.ping(1).received == 1
            return lab.server.netns

    name = asyncio.run(main())
    assert name not in netns.list_names()


def test_tcp_helper_counts_bytes() -> None:
    with Lab() as lab:
        r = lab.tcp(1 << 20)
        assert r["received"] == 1 << 20 and not r["timeout"]


def test_gso_sends_reach_a_queue_whole_and_the_receiver_as_datagrams(lab: Lab) -> None:
    import pktlab

    seen: list[int] = []
    with pktlab.attach(1, rule="-p udp --dport 9000", netns=lab.server) as s:
        s.add_handler(lambda pkt: seen.append(len(pkt)), "sizes")
        r = lab.udp(5, size=4000, rate=100, segment=1472, keep=15)
    # each 4000-byte send: one GSO packet through the queue, three datagrams (1472, 1472, 1056) at the socket
    assert seen == [4028] * 5
    assert r.unique == 15 and r.missing_count == 0
    assert sorted(len(p) for p in r.payloads) == [1056] * 5 + [1472] * 10
    with pytest.raises(LabError, match="does not cut 4000-byte sends into datagrams that fit"):
        lab.udp(1, size=4000, segment=1600)


def test_traffic_values_are_data_never_options_and_bad_ones_are_refused_at_once(lab: Lab) -> None:
    for bad, match in (
        (dict(answer="1.2.3.4; x"), "answer '1.2.3.4; x' is not an IPv4 address"),
        (dict(name="a\0b."), "is not a DNS name"),
        (dict(name="x" * 64 + ".example."), "does not fit DNS"),
        (dict(name="bücher.example."), "is not ASCII"),
    ):
        with pytest.raises(LabError, match=match):
            lab.dns(**bad)
    for bad_name, match in (("a\0b", "without NUL"), ("", "non-empty"), ("x" * 600, "does not fit a TFTP request")):
        with pytest.raises(LabError, match=match):
            lab.tftp(filename=bad_name)
    # a name that starts like an option is sent as a name
    got = lab.tftp(filename="--help")
    assert got["complete"] and got["ok"]
    assert lab.dns("-h.example.", answer="10.77.2.54")["addresses"] == ["10.77.2.54"]


def test_the_helpers_say_where_an_exchange_stopped(router_lab: Lab) -> None:
    """From the lab's own counters (what each end's program saw): sent, reached the server, answered, received."""
    lab = router_lab
    assert lab.dns(timeout=3)["stopped"] == "answer received"
    drop_answers = ["FORWARD", "-p", "udp", "--sport", "53", "-j", "DROP"]
    lab.router.run(["iptables", "-I", *drop_answers])
    r = lab.dns(timeout=1)
    assert not r["answered"] and r["server"] == {"answered": 1, "queries": 1, "peers": [lab.client.addr]}
    assert r["stopped"] == "the server answered; its answer did not reach the querying side"
    lab.router.run(["iptables", "-D", *drop_answers])
    lab.router.run(["iptables", "-I", "FORWARD", "-p", "udp", "--dport", "53", "-j", "DROP"])
    assert lab.dns(timeout=1)["stopped"] == "the query was sent and did not reach the server's socket"
    assert lab.tftp(700, timeout=1)["stopped"] == "file received"  # TFTP is port 69: not dropped
    lab.router.run(["iptables", "-I", "FORWARD", "-p", "udp", "--dport", "69", "-j", "DROP"])
    assert lab.tftp(700, timeout=1)["stopped"] == "the read request was sent and did not reach the server's socket"
    r = lab.tcp(10_000, timeout=5)
    assert r["stopped"] == "all bytes received" and r["sent"] == 10_000
