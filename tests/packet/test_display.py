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
    assert f"udp.chksum = 0x{pkt.udp.chksum:04x}" in shown
    assert html == pkt._repr_html_()


def test_a_truncated_packet_shows_the_fields_that_are_there_and_says_which_are_not() -> None:
    html = packet_html(Packet(None, t.tcp(raw=True)[:30]))  # the TCP header cut after 10 bytes
    shown = titles(html)
    assert "tcp.sport = 40000" in shown and "tcp.seq = 1000" in shown
    assert "tcp.ack = (past the end)" in shown


def test_a_byte_shared_by_fields_names_them_all() -> None:
    shown = titles(packet_html(t.udp()))
    assert "ip.version = 4; ip.ihl = 5" in shown
    assert "tcp.dataofs = 5; tcp.reserved = 0" in titles(packet_html(t.tcp()))


def test_checksums_in_hex_and_tcp_flags_as_letters() -> None:
    pkt = t.tcp(flags="SA")
    shown = titles(packet_html(pkt))
    assert f"tcp.chksum = 0x{pkt.tcp.chksum:04x}" in shown and f"ip.chksum = 0x{pkt.ip.chksum:04x}" in shown
    assert "tcp.flagbits = 18 (SA)" in shown


def test_readable_in_dark_themes_and_without_a_hook_for_a_packet_made_here() -> None:
    html = packet_html(t.udp())
    assert "#dbeafe" not in html and "rgba(" in html and "color:#" not in html  # tints over the theme's colours
    assert "<th style='text-align:left'>bytes</th>" in html
    assert repr(t.udp()).startswith("<Packet udp 10.77.1.1:40000 > 10.77.1.2:9000")
