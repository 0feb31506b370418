"""A packet's HTML view: every layer's fields, coloured over the bytes they cover."""

from __future__ import annotations

import re
from html import unescape

from pktlab import Packet
from pktlab import testing as t
from pktlab.packet.display import packet_html


def titles(html: str) -> set[str]:
    return {unescape(x) for x in re.findall(r"title='([^']*)'", html)}


def test_fields_of_every_layer_are_shown_over_their_bytes() -> None:
    pkt = t.udp(seq=1, dport=9000)
    html = packet_html(pkt)
    shown = titles(html)
    assert {"udp.sport = 40000", "udp.dport = 9000", "udp.len = 12", f"ip.src = '{t.CLIENT}'"} <= shown
    assert f"udp.chksum = {pkt.udp.chksum}" in shown
    assert html == pkt._repr_html_()


def test_a_truncated_packet_shows_the_fields_that_are_there_and_says_which_are_not() -> None:
    html = packet_html(Packet(None, t.tcp(raw=True)[:30]))  # the TCP header cut after 10 bytes
    shown = titles(html)
    assert "tcp.sport = 40000" in shown and "tcp.seq = 1000" in shown
    assert "tcp.ack = (past the end)" in shown
