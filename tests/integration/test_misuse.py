"""Misuse on the real kernel: names that could reach iptables, rewrites that cannot be sent, rewrite-then-raise."""

from __future__ import annotations

import pytest

import pktlab
from pktlab import Lab, SessionError
from pktlab.kernel import netns
from tests.conftest import needs_live, pktlab_rules

pytestmark = needs_live


def all_rules(ns: str) -> list[str]:
    import subprocess

    out = subprocess.run(netns.argv_in(ns, ["iptables-save"]), capture_output=True, text=True, check=True)
    return [line for line in out.stdout.splitlines() if line.startswith("-A")]


def test_names_and_rules_cannot_inject_a_rule(lab: Lab, queue_num: int) -> None:
    ns = lab.server.netns
    with pytest.raises(SessionError, match="session name .* is not allowed"):
        pktlab.attach(queue_num, rule="-p udp --dport 9000", netns=lab.server,
                      name="x\n-I INPUT -p udp --dport 9100 -j DROP\n#")  # fmt: skip
    with pytest.raises(pktlab.RuleError, match="control character"):
        pktlab.attach(queue_num, rule="-p udp -m comment --comment 'a\n-I INPUT -p udp --dport 9100 -j DROP'",
                      netns=lab.server)  # fmt: skip
    with pytest.raises(SessionError, match="is not allowed"):
        pktlab.attach(queue_num, rule="-p udp", netns=lab.server, name="n" * 250)  # iptables would cut it
    assert all_rules(ns) == [] and lab.udp(10, port=9100).unique == 10  # nothing installed, traffic flows


def test_two_sessions_with_one_name_are_refused(lab: Lab, queue_num: int) -> None:
    s = pktlab.attach(queue_num, rule="-p udp --dport 9000", netns=lab.server, name="fw", default="drop")
    try:
        with pytest.raises(pktlab.RuleError, match="another session of this process has the same name"):
            pktlab.attach(queue_num + 1, rule="-p udp --dport 9001", netns=lab.server, name="fw")
        assert len(pktlab_rules(lab.server.netns)) == 1
        assert lab.udp(10, idle=0.3).received == 0 and s.record.n == 10  # the first one still works
    finally:
        s.detach()
    assert pktlab_rules(lab.server.netns) == []


def test_rewrite_then_raise_sends_the_packet_as_it_arrived(lab: Lab, queue_num: int, tmp_path) -> None:
    s = pktlab.attach(queue_num, rule="-p udp --dport 9000", netns=lab.server)
    try:

        @s.handler
        def scribble_then_fail(pkt):
            pkt.udp.payload = pkt.udp.payload[:4] + b"REWRITTEN"
            pkt.set_mark(5)
            raise RuntimeError("changed my mind")

        r = lab.udp(5, size=16, keep=5)
        assert r.unique == 5 and all(p[4:] == bytes(12) for p in r.payloads), r.payloads  # the originals
        assert s.record.errors == 5 and not s.df["modified"].any()
        s.to_pcap(tmp_path / "live.pcap")
    finally:
        s.detach()
    rp = pktlab.replay(tmp_path / "live.pcap")
    rp.add_handler(scribble_then_fail)
    rp.run()
    assert [data for _, data, _ in rp.outputs] == [cp.data for cp in rp.packets]  # output = input


def test_a_rewrite_too_big_to_send_is_an_error_with_its_reason(lab: Lab, queue_num: int, tmp_path) -> None:
    s = pktlab.attach(queue_num, rule="-p udp --dport 9000", netns=lab.server)
    try:

        @s.handler
        def grow(pkt):
            pkt.udp.payload = bytes(70_000)
            return pkt.accept()

        r = lab.udp(3, size=16, keep=3)
        assert r.unique == 3 and all(len(p) == 16 for p in r.payloads)  # sent as they arrived
        assert len(s.errors) == 3 and "65,535" in str(s.errors[0]) and s.record.errors == 3
        assert s.status().internal_errors == 0
        s.to_pcap(tmp_path / "live.pcap")
    finally:
        s.detach()
    rp = pktlab.replay(tmp_path / "live.pcap")
    rp.add_handler(grow)
    rp.run()
    assert len(rp.errors) == 3 and "65,535" in str(rp.errors[0])
    assert all(len(data) == 44 for _, data, _ in rp.outputs)
