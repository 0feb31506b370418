"""A user-defined protocol rewritten in flight through a real queue."""

from __future__ import annotations

import pktlab
from pktlab import Lab
from tests.conftest import needs_live
from tests.packet.test_user_protocols import define_ticker

pytestmark = needs_live


def test_user_protocol_rewrite_reaches_the_receiver(lab: Lab, queue_num: int) -> None:
    define_ticker()
    s = pktlab.attach(queue_num, rule="-p udp --dport 9999", netns=lab.server)
    try:

        @s.handler
        def retag(pkt):
            t = pkt.ticker
            if t is not None:
                t.kind = 7
                t.symbol = "PKTLAB"
                t.seq += 1
            return None

        # lab datagrams start with a 4-byte big-endian sequence number: byte 0 is version/kind,
        # bytes 1-2 the ticker's seq; the kernel drops UDP whose checksum was not fixed
        r = lab.udp(20, size=16, port=9999, keep=20)
        assert r.received == 20
        for i, p in enumerate(r.payloads):
            assert p[0] & 0x0F == 7 and int.from_bytes(p[1:3], "big") == ((i >> 8) & 0xFFFF) + 1
            assert p[3:11] == b"PKTLAB\0\0"
        assert s.df["modified"].all() and not s.errors
    finally:
        s.detach()
        pktlab.protocols.clear()
