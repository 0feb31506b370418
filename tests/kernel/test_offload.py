"""Offloaded verdicts: what is accepted and the rules they make (no kernel; the real path is in integration)."""

from __future__ import annotations

import pytest

from pktlab import SessionError
from pktlab.kernel import bpf
from pktlab.kernel.offload import Offload, parse_verdict
from pktlab.kernel.rules import QueueRule


@pytest.mark.parametrize(
    ("verdict", "mark", "message"),
    [
        ("reject", None, "accept, drop or mark"),
        ("mark", None, "needs the mark"),
        ("drop", 3, "keeps no mark"),
        ("accept", -1, "not valid"),
        ("accept", True, "not valid"),
        ("accept", 1 << 32, "not valid"),
    ],
)
def test_bad_verdicts_and_marks_are_refused_with_the_reason(verdict: str, mark: object, message: str) -> None:
    with pytest.raises(SessionError, match=message):
        parse_verdict(verdict, mark)  # type: ignore[arg-type]


def test_good_ones_are_normalised() -> None:
    assert parse_verdict("DROP", None) == ("drop", None)
    assert parse_verdict("mark", 7) == ("mark", 7)
    assert parse_verdict("accept", 0xFFFFFFFF) == ("accept", 0xFFFFFFFF)


def test_lines_carry_the_sessions_match_then_the_target() -> None:
    rule = QueueRule(3, "INPUT", ("-p", "udp"), None, True, "ipv4", ())
    prog = bpf.compile("udp and dst port 53")
    drop = Offload("udp and dst port 53", "drop", None, prog, 1).lines(rule)
    assert len(drop) == 1 and drop[0][:2] == ["-p", "udp"] and drop[0][-2:] == ["-j", "DROP"]
    assert "bpf" in drop[0]
    marked = Offload("udp and dst port 53", "accept", 5, prog, 2).lines(rule)
    assert [line[-4:] for line in marked][0] == ["-j", "MARK", "--set-mark", "5"] and marked[1][-1] == "ACCEPT"
    only_mark = Offload("udp and dst port 53", "mark", 5, prog, 3)
    assert len(only_mark.lines(rule)) == 1 and "then on to the queue" in only_mark.describe()
