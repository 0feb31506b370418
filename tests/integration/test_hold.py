"""Holding packets for the notebook to decide, and stepping a paused queue one packet at a time."""

from __future__ import annotations

from pktlab.packet._core import message_copies

import pktlab
from pktlab import Lab, SessionError
from pktlab.lab.network import wait_until
from tests.conftest import needs_live

pytestmark = needs_live


def seq(p) -> int:  # type: ignore[no-untyped-def]
    return int.from_bytes(p.udp.payload[:4], "big")


def test_held_packets_wait_until_the_notebook_decides(lab: Lab, queue_num: int) -> None:
    s = pktlab.attach(queue_num, rule="-p udp --dport 9000", netns=lab.server)
    try:
        held = s.hold(lambda p: seq(p) % 10 == 0)  # every tenth datagram
        copies = message_copies()
        flow = lab.start_udp(100, rate=2000, idle=3.0, keep=100)
        assert wait_until(lambda: len(held) == 10)
        assert wait_until(lambda: s.record.n == 90)  # the others went through, batching or not
        # the predicate read every packet over its queue message; only the held ones were copied out of it
        assert message_copies() - copies == 10
        k = s.kernel_counters()
        assert k is not None and k.queue_total == 10  # the kernel still holds exactly those
        assert sorted(seq(h) for h in held) == list(range(0, 100, 10)) and held[0].age >= 0
        first = held[0]
        first.packet.udp.payload = first.packet.udp.payload[:4] + b"decided in the notebook"
        first.accept()
        held[0].drop()  # seq 10: the list shrank
        try:
            first.accept()
            raise AssertionError("a second verdict must be refused")
        except SessionError as exc:  # each packet gets exactly one verdict
            assert "already got its verdict" in str(exc)
        s.hold(None)
        assert s.held.release("drop") == 8
        r = flow.wait()
        got = {int.from_bytes(p[:4], "big"): p for p in r.payloads}
        assert 0 in got and got[0][4:] == b"decided in the notebook"  # rewritten, checksums fixed
        assert 10 not in got and all(x not in got for x in range(30, 100, 10))
        assert len(got) == 91 and s.record.n == 100
        assert s.kernel_counters().queue_total == 0
    finally:
        s.detach()


def test_detach_gives_held_packets_the_default_verdict(lab: Lab, queue_num: int) -> None:
    s = pktlab.attach(queue_num, rule="-p udp --dport 9000", netns=lab.server)
    held = s.hold(lambda p: True)
    flow = lab.start_udp(5, rate=100, idle=2.0)
    assert wait_until(lambda: len(held) == 5)
    s.detach()  # default accept: all five arrive, nothing stays in the kernel
    assert flow.wait().unique == 5 and len(held) == 0


def test_step_lets_exactly_one_packet_through(lab: Lab, queue_num: int) -> None:
    s = pktlab.attach(queue_num, rule="-p udp --dport 9000", netns=lab.server)
    try:
        s.pause()
        flow = lab.start_udp(5, rate=100, idle=3.0, keep=5)
        assert wait_until(lambda: s.kernel_counters().queue_total == 5)
        assert s.step() and s.record.n == 1
        assert wait_until(lambda: s.kernel_counters().queue_total == 4)
        assert s.step() and s.record.n == 2
        s.resume()
        r = flow.wait()
        assert r.unique == 5 and [int.from_bytes(p[:4], "big") for p in r.payloads] == list(range(5))
        try:
            s.step()
            raise AssertionError("step() on a running session must refuse")
        except SessionError as exc:
            assert "pause() it first" in str(exc)
    finally:
        s.detach()


def test_a_handler_that_steps_its_own_session_fails_at_once(lab: Lab, queue_num: int) -> None:
    """step() in a handler would wait for the handler itself (the reading thread runs it): refused at once, the
    packet gets the error verdict and the session goes on (it once waited the step's timeout, then said False)."""
    s = pktlab.attach(queue_num, rule="-p udp --dport 9000", netns=lab.server, on_error="drop")
    try:

        @s.handler
        def steps(pkt):
            if seq(pkt) == 1:
                s.step(timeout=60)

        r = lab.udp(3, rate=100, idle=1.0)
        assert r.unique == 2 and r.missing == [1]
        assert len(s.errors) == 1 and "step() in a handler of" in str(s.errors[0])
        assert s.status().internal_errors == 0
    finally:
        s.detach()


def test_with_a_hold_predicate_handlers_still_read_packets_in_place(lab: Lab, queue_num: int) -> None:
    """A predicate that sees every packet and holds none: the packets it and the handler read are not copied and
    are reused; one the handler keeps gets bytes of its own."""
    s = pktlab.attach(queue_num, rule="-p udp --dport 9000", netns=lab.server)
    kept: list = []
    try:
        s.hold(lambda p: seq(p) < 0)  # reads every packet, holds none

        @s.handler
        def keep_some(pkt):
            if seq(pkt) % 10 == 0:
                kept.append(pkt)

        copies, reused = message_copies(), s.dispatcher.reused
        r = lab.udp(100, rate=0, timeout=20, idle=0.5)
        assert r.unique == 100 and r.received == 100
        assert sorted(seq(p) for p in kept) == list(range(0, 100, 10))
        assert message_copies() - copies == 10  # the kept ones only
        assert s.dispatcher.reused - reused == 89  # each packet nobody kept is the next one's (the last has none)
    finally:
        s.detach()


def test_a_predicate_that_writes_the_packet_holds_it_written(lab: Lab, queue_num: int) -> None:
    """The packet held is the one the predicate wrote; its verdict carries the write, and the record keeps the
    packet as it arrived (a written packet once made every verdict of its held packet fail)."""
    s = pktlab.attach(queue_num, rule="-p udp --dport 9000", netns=lab.server)
    try:

        def stamp_and_hold(p) -> bool:  # type: ignore[no-untyped-def]
            p.udp.payload = p.udp.payload[:4] + b"stamped while held"
            return True

        held = s.hold(stamp_and_hold)
        flow = lab.start_udp(3, rate=100, idle=3.0, keep=3)
        assert wait_until(lambda: len(held) == 3)
        held[0].accept()
        assert s.held.release() == 2
        r = flow.wait()
        assert r.unique == 3 and all(p[4:] == b"stamped while held" for p in r.payloads)
        df = s.df
        assert len(df) == 3 and df["modified"].all() and not s.errors
        assert [b"stamped" in e.head for e in s.record.entries()] == [False] * 3  # as they arrived
    finally:
        s.detach()
