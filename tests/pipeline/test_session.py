"""A session over a capture: the same class as a live one, and what only a queue can do refused clearly."""

from __future__ import annotations

from pathlib import Path

import pytest

import pktlab
from pktlab import Session, SessionError
from pktlab import testing as t


@pytest.fixture
def replay(tmp_path: Path) -> Session:
    return pktlab.replay(t.capture(tmp_path / "c.pcap", [t.udp(seq=i) for i in range(5)]))


def test_a_replay_is_a_session(replay: Session) -> None:
    assert type(replay) is pktlab.Session and pktlab.ReplaySession is pktlab.Session and replay.is_replay
    assert "replaying c.pcap" in repr(replay)


@pytest.mark.parametrize(
    ("call", "what"),
    [
        (lambda s: s.offload("udp", "drop"), "offload()"),
        (lambda s: s.out_of_path().__enter__(), "out_of_path()"),
    ],
)
def test_queue_only_operations_are_refused_on_a_replay(replay: Session, call, what: str) -> None:
    with pytest.raises(SessionError, match=rf"replays a capture; {what.replace('(', '[(]').replace(')', '[)]')}"):
        call(replay)


def test_replay_only_operations_are_refused_on_a_live_session() -> None:
    s = Session(9, netns="pktlab-nonexistent-ns")  # made, never attached: no root needed
    for call in (lambda: s.run(), lambda: s.write_pcap("x.pcap"), lambda: s.packets, lambda: s.wait(0)):
        with pytest.raises(SessionError, match="reads a live queue"):
            call()


def test_run_twice_starts_afresh_and_status_says_what_happened(replay: Session) -> None:
    replay.add_handler(lambda pkt: pkt.drop(), "all")
    first = replay.run()
    second = replay.run(limit=2)
    assert first.packets == 5 and first.counters["drop"] == 5
    assert second.packets == 2 and second.counters["drop"] == 2 and replay.record.n == 2
    text = str(second)
    assert text.startswith("replay of c.pcap: 2 packets") and "drop 2" in text and "handlers: all" in text


@pytest.mark.parametrize(
    ("options", "message"),
    [({"limit": -1}, "limit -1 must be"), ({"limit": 1.5}, "limit 1.5 must be"), ({"pace": 0}, "pace 0 must be")],
)
def test_bad_run_options_are_refused(replay: Session, options: dict, message: str) -> None:
    with pytest.raises(SessionError, match=message):
        replay.run(**options)
    assert not replay.attached


def test_replay_options_are_checked(tmp_path: Path) -> None:
    path = t.capture(tmp_path / "c.pcap", [t.udp()])
    with pytest.raises(SessionError, match="has no option queue"):
        pktlab.replay(path, queue=3)
    with pytest.raises(SessionError, match="unknown hook"):
        pktlab.replay(path, hook="SIDEWAYS")
    with pytest.raises(SessionError, match="deadline 0 s is out of range"):
        pktlab.replay(path, deadline=0)
    assert pktlab.replay(path, hook="forward").run().packets == 1


def test_a_rate_over_no_time_is_refused(tmp_path: Path) -> None:
    s = pktlab.replay(t.capture(tmp_path / "c.pcap", [t.udp(seq=i) for i in range(3)]))
    s.run()
    for window in (0, -1, "1"):
        with pytest.raises(SessionError, match="rate\\(\\) takes a window of seconds above 0"):
            s.rate(window)  # type: ignore[arg-type]  (0 divided by zero; -1 gave -0.0)
    assert s.rate(1e9) > 0  # the capture's packets lie within the last 1e9 s


def test_status_shows_a_bpf_programs_length_not_its_bytecode() -> None:
    from pktlab.pipeline.session import Status

    rule = '-A INPUT -m bpf --bytecode "4,48 0 0 0,84 0 0 240,21 0 1 64,6 0 0 65535" -j NFQUEUE --queue-num 1'
    counters = {"packets": 0, "accept": 0, "drop": 0, "repeat": 0, "errors": 0}
    st = Status("x", 1, "n", True, False, [rule], [], counters, None, 0.0)
    (line,) = [x for x in st.lines() if x.startswith("  rule:")]
    assert line == "  rule: -A INPUT -m bpf --bytecode <4 BPF instructions> -j NFQUEUE --queue-num 1"


def test_a_handlers_first_failure_is_said_once_in_the_cell(replay: Session, capsys) -> None:
    def broken(pkt):
        raise ValueError("no such field")

    replay.add_handler(broken, "broken")
    replay.run()
    said = capsys.readouterr().err
    assert said.count("handler 'broken' failed (ValueError: no such field)") == 1
    assert "error verdict (accept)" in said and "s.errors" in said
    replay.say_failures = False
    replay.add_handler(lambda pkt: 1 / 0, "other")
    replay.run()
    assert capsys.readouterr().err == ""


def test_run_reads_to_the_end_even_after_a_pause(replay: Session) -> None:
    replay.pause()
    st = replay.run()
    assert st.packets == 5 and not replay.paused
