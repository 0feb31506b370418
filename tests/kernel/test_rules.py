"""Rule construction and checks (no kernel), plus install/remove in a real namespace."""

from __future__ import annotations

import pytest

from pktlab import Lab, RuleError
from pktlab.kernel.rules import QueueRule, RuleSet, SavedRule, Skipped, make_tag, parse_match, rule_text, sweep_stale
from tests.conftest import pktlab_rules


def test_parse_match_splits_and_refuses_targets() -> None:
    assert parse_match('-p udp --dport 9000 -m comment --comment "a b"') == [
        "-p",
        "udp",
        "--dport",
        "9000",
        "-m",
        "comment",
        "--comment",
        "a b",
    ]
    assert parse_match(None) == []
    for bad in ("-p udp -j DROP", "-A INPUT -p udp", "-t nat -p udp"):
        with pytest.raises(RuleError, match="only hold match options"):
            parse_match(bad)


def test_queue_rule_defaults_and_spec() -> None:
    r = QueueRule(3, "prerouting", ("-p", "udp"))
    assert r.hook == "PREROUTING" and r.table == "mangle"
    assert r.spec("pktlab:1:s") == [
        "-p",
        "udp",
        "-m",
        "mark",
        "!",
        "--mark",
        "0x20000000/0x20000000",
        "-m",
        "comment",
        "--comment",
        "pktlab:1:s",
        "-j",
        "NFQUEUE",
        "--queue-num",
        "3",
        "--queue-bypass",
    ]
    assert "--queue-bypass" not in QueueRule(3, bypass=False).spec("t")
    with pytest.raises(RuleError, match="unknown hook"):
        QueueRule(1, "SIDEWAYS")
    with pytest.raises(RuleError, match="has no PREROUTING chain"):
        QueueRule(1, "PREROUTING", table="filter")
    with pytest.raises(RuleError, match="out of range"):
        QueueRule(70000)


def test_observing_and_deciding_tables() -> None:
    """Observing (the default) queues in mangle at every hook; deciding in filter where the hook has it."""
    for hook in ("PREROUTING", "INPUT", "FORWARD", "OUTPUT", "POSTROUTING"):
        assert QueueRule(1, hook).table == "mangle"
    decided = {h: QueueRule(1, h, decide=True).table for h in ("PREROUTING", "INPUT", "FORWARD", "OUTPUT")}
    assert decided == {"PREROUTING": "mangle", "INPUT": "filter", "FORWARD": "filter", "OUTPUT": "filter"}
    assert QueueRule(1, "OUTPUT", table="raw", decide=True).table == "raw"  # table= wins


def _saved(*line: str) -> SavedRule:
    return SavedRule("filter", list(line), 0)


def test_what_an_accept_skips_reads_as_one_sentence() -> None:
    drop = _saved("-A", "FORWARD", "-p", "udp", "-m", "udp", "--sport", "53", "-j", "DROP")
    log = _saved("-A", "FORWARD", "-m", "comment", "--comment", "my note", "-j", "LOG")
    other = _saved("-A", "FORWARD", "-m", "comment", "--comment", "pktlab:12:delay-eth1", "-j", "NFQUEUE")
    assert rule_text(log.tokens) == "-j LOG" and rule_text(drop.tokens) == "-p udp -m udp --sport 53 -j DROP"
    text = Skipped("filter", "FORWARD", (log, drop, drop), "ACCEPT").text()
    assert text == ("a packet it accepts in filter/FORWARD skips 3 rules below it, among them "
                    "`-p udp -m udp --sport 53 -j DROP` and 1 more dropping")  # fmt: skip
    policy = Skipped("filter", "INPUT", (), "DROP").text()
    assert policy == "a packet it accepts in filter/INPUT skips the chain's DROP policy"
    assert Skipped("mangle", "POSTROUTING", (other,), "ACCEPT").text().endswith("skips 1 rule below it")


def test_install_remove_and_sweep_in_a_namespace(lab: Lab) -> None:
    ns = lab.server.netns
    mine = RuleSet(make_tag("t1"), ns)
    dead = RuleSet(make_tag("t2", pid=4194999), ns)
    mine.install([QueueRule(5, "INPUT", ("-p", "udp")), QueueRule(5, "OUTPUT", ("-p", "udp"), family="both")])
    dead.install([QueueRule(6, "INPUT", ("-p", "tcp"))])
    assert len(mine.installed()) == 3 and len(pktlab_rules(ns)) == 4
    assert sweep_stale(ns) == [make_tag("t2", pid=4194999)]
    assert len(pktlab_rules(ns)) == 3
    assert mine.remove() == 3
    assert pktlab_rules(ns) == []


def test_bad_match_reports_iptables_message(lab: Lab) -> None:
    rs = RuleSet(make_tag("t3"), lab.server.netns)
    with pytest.raises(RuleError, match="unknown option"):
        rs.install([QueueRule(5, "INPUT", ("-p", "udp", "--dprt", "1"))])
    assert pktlab_rules(lab.server.netns) == []


def test_missing_iptables_is_one_clear_sentence(monkeypatch, tmp_path) -> None:
    from pktlab import MissingToolError

    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(MissingToolError, match=r"iptables(-save|-restore)? is not installed; run `make setup`"):
        RuleSet(make_tag("t4"), None).install([QueueRule(5, "INPUT", ("-p", "udp"))])


def test_restore_join_quotes_the_way_iptables_restore_reads() -> None:
    from pktlab.kernel.rules import restore_join

    assert restore_join(["-A", "INPUT", "-m", "mark", "!", "--mark", "5"]) == "-A INPUT -m mark ! --mark 5"
    assert restore_join(["--comment", "a b", 'say "hi"']) == '--comment "a b" "say \\"hi\\""'


def test_negated_and_quoted_matches_install_and_remove(lab: Lab) -> None:
    rs = RuleSet(make_tag("t5"), lab.server.netns)
    rs.install(
        [QueueRule(5, "INPUT", tuple(parse_match('-p udp -m mark ! --mark 5 -m comment --comment "two words"')))]
    )
    assert len(rs.installed()) == 1 and "! --mark 0x5" in rs.installed()[0]
    assert rs.remove() == 1 and pktlab_rules(lab.server.netns) == []
