"""Looking must not change what you look at: an observing session's accepts leave the firewall's rules working."""

from __future__ import annotations

import pytest

import pktlab
from pktlab import Lab
from pktlab.kernel.rules import saved_rules
from tests.conftest import needs_live, pktlab_rules

pytestmark = needs_live
DROP = ["-p", "udp", "--dport", "9000", "-j", "DROP"]


def _drops(lab: Lab) -> int:
    """Packets the router's own DROP rule (filter/FORWARD) has dropped so far."""
    (rule,) = [r for r in saved_rules(lab.router.netns) if r.table == "filter" and r.tokens[-2:] == ["-j", "DROP"]]
    return rule.packets


@pytest.fixture
def dropping_router(router_lab: Lab) -> Lab:
    """A router lab whose router drops UDP to port 9000 in its FORWARD chain (a firewall fault to find)."""
    router_lab.router.run(["iptables", "-A", "FORWARD", *DROP])
    return router_lab


def test_an_observing_session_sees_the_packets_a_drop_below_it_still_drops(
    dropping_router: Lab, queue_num: int, capsys: pytest.CaptureFixture[str]
) -> None:
    lab = dropping_router
    assert lab.udp(20, idle=0.3).unique == 0 and _drops(lab) == 20  # the fault, without pktlab
    s = pktlab.attach(queue_num, rule="-p udp", hook="FORWARD", netns=lab.router)
    try:
        assert s.rule.table == "mangle"
        assert "skips" not in capsys.readouterr().err  # nothing of the firewall's is skipped: nothing said
        assert lab.udp(20, idle=0.3).unique == 0  # the fault is still there with a session attached
        assert _drops(lab) == 40
        assert s.record.n == 20 and set(s.df["verdict"]) == {"accept"}  # seen, accepted by pktlab, dropped after
    finally:
        s.detach()
    assert not pktlab_rules(lab.router.netns)


def test_a_deciding_session_says_which_drop_its_accepts_skip(
    dropping_router: Lab, queue_num: int, capsys: pytest.CaptureFixture[str]
) -> None:
    lab = dropping_router
    s = pktlab.attach(queue_num, rule="-p udp", hook="FORWARD", netns=lab.router, decide=True)
    try:
        said = capsys.readouterr().err
        assert s.rule.table == "filter"
        assert said.count("skips") == 1, said
        assert "filter/FORWARD skips 1 rule below it, among them `-p udp -m udp --dport 9000 -j DROP`" in said
        assert "--decide" in said
        assert lab.udp(20, idle=0.3).unique == 20  # what decide means: an accept is final, the DROP never runs
        assert _drops(lab) == 0
    finally:
        s.detach()


def test_a_deciding_session_names_a_drop_policy(router_lab: Lab, queue_num: int,
                                                capsys: pytest.CaptureFixture[str]) -> None:  # fmt: skip
    router_lab.router.run(["iptables", "-P", "FORWARD", "DROP"])
    s = pktlab.attach(queue_num, rule="-p udp", hook="FORWARD", netns=router_lab.router, decide=True)
    try:
        assert "skips the chain's DROP policy" in capsys.readouterr().err
    finally:
        s.detach()


def test_the_dns_fault_of_the_debugging_session_stays_visible(router_lab: Lab, queue_num: int) -> None:
    """The issue's case: DNS replies dropped in the router's FORWARD chain; attaching to watch must not fix DNS."""
    lab = router_lab
    lab.router.run(["iptables", "-A", "FORWARD", "-p", "udp", "--sport", "53", "-j", "DROP"])
    without = lab.dns(timeout=1)
    s = pktlab.attach(queue_num, rule="-p udp", hook="FORWARD", netns=lab.router)
    try:
        observed = lab.dns(timeout=1)
        assert s.record.n == 2  # the query and the answer, both seen (and accepted: the DROP below still ran)
    finally:
        s.detach()
    lost = "the server answered; its answer did not reach the querying side"
    assert without["stopped"] == observed["stopped"] == lost
    assert _drops(lab) == 2  # one answer dropped each time, attached or not
