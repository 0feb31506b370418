"""pktlab.drops on the real kernel: each dropped packet, its host, the kernel's reason, a queue verdict's handler."""

from __future__ import annotations

import sys

import pytest

import pktlab
from pktlab import Lab
from pktlab.kernel.bpftrace import drop_reasons, unescape
from tests.conftest import needs_root

SEND = "import socket, sys; s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); " \
       "[s.sendto(b'x', (sys.argv[1], int(sys.argv[2]))) for _ in range(int(sys.argv[3]))]"  # fmt: skip


def _send(lab: Lab, port: int, n: int) -> None:
    lab.client.run([sys.executable, "-c", SEND, lab.server.addr, str(port), str(n)])


def test_bpftraces_buffers_are_read_back_to_bytes() -> None:
    assert unescape(r"E\x00\x00\x1dabc\x7f") == b"E\x00\x00\x1dabc\x7f"
    assert unescape("plain") == b"plain" and unescape(r"\x4") == b"\\x4"


@needs_root
def test_a_datagram_to_a_closed_port_is_dropped_for_no_socket_on_its_host(lab: Lab) -> None:
    assert drop_reasons()[3] == "NO_SOCKET"
    seen: list = []
    w = pktlab.drops(lab, "udp and dst port 9997", seconds=30, count=3, on_drop=seen.append)
    try:
        _send(lab, 9997, 3)  # nobody listens on 9997
        _send(lab, 9996, 2)  # outside the filter
        got = w.wait()  # returns at the third drop
    finally:
        w.stop()
    assert len(got) == 3 and seen == got.drops
    assert {(d.host, d.reason, d.where) for d in got} == {("server", "NO_SOCKET", "__udp4_lib_rcv")}
    df = got.df
    assert list(df.dport) == [9997] * 3 and list(df.src) == [lab.client.addr] * 3
    assert list(df.kernel_ns) == sorted(df.kernel_ns)  # the kernel's own clock, in order
    assert "NO_SOCKET" in str(got) and "udp 10.77.1.1:" in str(got)


@needs_root
def test_a_handlers_drop_names_the_session_and_the_handler(lab: Lab, queue_num: int) -> None:
    s = pktlab.attach(queue_num, rule="-p udp --dport 9995", netns=lab.server)
    s.add_handler(lambda pkt: pkt.drop(), "dropper")
    w = pktlab.drops(lab.server, "udp and dst port 9995", seconds=30, count=2)
    try:
        _send(lab, 9995, 2)
        got = w.wait()
    finally:
        w.stop()
        s.detach()
    assert len(got) == 2
    assert {(d.host, d.session, d.handler) for d in got} == {("server", s.name, "dropper")}
    assert "by session" in str(got) and "handler 'dropper'" in str(got)


@needs_root
def test_what_cannot_be_watched_says_why(lab: Lab) -> None:
    with pytest.raises(ValueError, match="seconds"):
        pktlab.drops(lab, seconds=0)
    with pytest.raises(pktlab.FilterError):
        pktlab.drops(lab, "udp and")


@needs_root
def test_a_netfilter_drop_names_the_rule_whose_counter_rose(lab: Lab) -> None:
    rule = ["INPUT", "-p", "udp", "--dport", "9993", "-j", "DROP"]
    lab.server.run(["iptables", "-I", *rule])
    w = pktlab.drops(lab, "udp and dst port 9993", seconds=30, count=2)
    try:
        _send(lab, 9993, 2)
        got = w.wait()
    finally:
        w.stop()
        lab.server.run(["iptables", "-D", *rule])
    assert len(got) == 2 and {d.reason for d in got} == {"NETFILTER_DROP"}
    assert all(d.rule is not None and "udp dport 9993" in d.rule and d.rule.endswith("drop") for d in got)
    assert "by rule ip filter INPUT: " in str(got) and list(got.df["rule"]) == [got.drops[0].rule] * 2
