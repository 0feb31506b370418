"""A NAT written as a handler on the router: a TCP connection and a DNS exchange through it, both ways."""

from __future__ import annotations

import pytest

import pktlab
from pktlab import Lab
from tests.conftest import needs_live

pytestmark = needs_live

VIP = "10.77.2.100"  # the address the client talks to; the router maps it to the server


@pytest.mark.parametrize("gso", [False, True], ids=["segments", "gso"])
def test_handler_nat_carries_tcp_and_dns_both_ways(router_lab: Lab, queue_num: int, gso: bool) -> None:
    real, client = router_lab.server.addr, router_lab.client.addr
    s = pktlab.attach(queue_num, rule="-s 10.77.0.0/16", hook="PREROUTING", netns=router_lab.router, gso=gso)
    try:

        @s.handler
        def nat(pkt):
            ip = pkt.ip
            if ip is None:
                return None
            if ip.dst == VIP:  # client -> server: destination rewritten
                ip.dst = real
            elif ip.src == real and ip.dst == client:  # server -> client: source rewritten back
                ip.src = VIP
            return None

        tcp = router_lab.tcp(4 << 20 if gso else 256 * 1024, to=VIP)
        assert tcp["received"] == (4 << 20 if gso else 256 * 1024) and not tcp["timeout"]

        answer = router_lab.dns("nat.example.", answer="10.77.2.53", to=VIP)
        assert answer["answered"] and answer["id_ok"] and answer["addresses"] == ["10.77.2.53"]
        assert answer["from"] == VIP  # the reply came back through the NAT, source rewritten

        df = s.df
        forward = df[(df["dst"] == VIP) & df["modified"]]
        back = df[(df["src"] == real) & (df["dst"] == client) & df["modified"]]
        assert set(forward["proto"]) == {"tcp", "udp"} and set(back["proto"]) == {"tcp", "udp"}
        if gso:  # the addresses of whole GSO packets rewritten: the kernel cut them into segments after
            assert forward["size"].max() > 1500
        assert not s.errors
    finally:
        s.detach()
