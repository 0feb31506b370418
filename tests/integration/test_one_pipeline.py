"""One pipeline: the same tricky handlers on live traffic and on the capture of that traffic give the same result.

Each case runs its handlers on 40 numbered UDP datagrams through a real queue,
writes what the session recorded (the packets as they arrived) to a capture,
replays that capture with fresh copies of the same handlers, and compares
verdicts, record fields and outputs (the UDP payloads the receiver got live,
the payloads a replay would have sent on).
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

import pktlab
from pktlab import Lab, Packet
from pktlab.lab.network import wait_until
from tests.conftest import needs_live

pytestmark = needs_live

COUNT = 40
FIELDS = ["proto", "src", "dst", "sport", "dport", "size", "verdict", "handler", "error", "modified"]


def seq(pkt: Packet) -> int:
    return int.from_bytes(pkt.udp.payload[:4], "big")


@dataclass
class Case:
    """Handlers (made fresh for each run), a hold predicate, and what the test does after the traffic."""

    handlers: Callable[[Any], list[tuple[str, Callable[[Packet], Any]]]]
    hold: Callable[[Packet], bool] | None = None
    after: Callable[[Any], None] | None = None  # with the session, once every packet came
    release: threading.Event = field(default_factory=threading.Event)


def _raises(s):
    def h(pkt):
        if seq(pkt) % 3 == 0:
            raise ValueError(f"datagram {seq(pkt)}")
        return pkt.drop() if seq(pkt) % 3 == 1 else None

    return [("raises", h)]


def _keyboard_interrupt(s):
    def h(pkt):
        if seq(pkt) % 4 == 0:
            raise KeyboardInterrupt  # a handler's, not the person's: the error verdict, as any exception
        return None

    return [("interrupts", h)]


def _garbage(s):
    def h(pkt):
        return 42 if seq(pkt) % 5 == 0 else ("drop" if seq(pkt) % 5 == 1 else None)

    return [("garbage", h)]


def _none_then_mark(s):
    def first(pkt):
        return None

    def second(pkt):
        if seq(pkt) % 2:
            pkt.mark = 7
            return pkt.accept()
        return None

    return [("passes", first), ("marks", second)]


def _grow_and_shrink(s):
    def h(pkt):
        n = seq(pkt)
        p = pkt.udp.payload
        if n % 3 == 0:
            pkt.udp.payload = p + b"grown by a handler"
        elif n % 3 == 1:
            pkt.udp.payload = p[:4]
        return None

    return [("resize", h)]


HANG = Case(handlers=lambda s: [])


def _hangs(s):
    def h(pkt):
        if seq(pkt) == 5:
            HANG.release.wait(20)  # past the deadline: the packet gets the error verdict, h is skipped meanwhile
        return pkt.drop() if seq(pkt) % 2 else None

    return [("hangs", h)]


HANG.handlers = _hangs
HANG.after = lambda s: HANG.release.set()


def _hot_swap(s):
    def v2(pkt):
        return pkt.drop() if seq(pkt) % 2 else None

    def v1(pkt):
        if seq(pkt) == 20:
            s.add_handler(v2, "swapped")  # the cell run again: same name, the next packet meets v2
        return None

    return [("swapped", v1)]


def _release_held(s):
    assert wait_until(lambda: len(s.held) == 8, timeout=10), len(s.held)
    for h in list(s.held):
        h.give(pktlab.DROP if seq(h.packet) % 2 else pktlab.ACCEPT)


CASES = {
    "raises": Case(_raises),
    "keyboard-interrupt": Case(_keyboard_interrupt),
    "garbage": Case(_garbage),
    "none-and-marks": Case(_none_then_mark),
    "grow-and-shrink": Case(_grow_and_shrink),
    "hangs-past-the-deadline": HANG,
    "hot-swap": Case(_hot_swap),
    "hold-then-release": Case(
        lambda s: [("odd", lambda pkt: pkt.drop() if seq(pkt) % 7 == 3 else None)],
        hold=lambda pkt: seq(pkt) % 5 == 0,
        after=_release_held,
    ),
}


def _install(s: Any, case: Case) -> None:
    for name, fn in case.handlers(s):
        s.add_handler(fn, name)
    if case.hold is not None:
        s.hold(case.hold)


def _rows(s: Any) -> list[list[str]]:
    return s.df[FIELDS].astype(str).values.tolist()


@pytest.mark.parametrize("name", list(CASES))
def test_same_handlers_same_results_live_and_replayed(name: str, lab: Lab, queue_num: int, tmp_path: Path) -> None:
    case = CASES[name]
    case.release.clear()
    # a deadline only where it is under test: elsewhere a reader starved past it (a busy machine) would get a
    # healthy handler's packet the error verdict live and not in the replay
    deadline = 0.25 if case is HANG else None
    # whole packets in the record (snaplen 65535) for the capture, and only as many entries as the test sends: the
    # default 100,000 entries of 64 KiB each is a 6.5 GB ring (cases kept alive together were OOM-killed)
    s = pktlab.attach(queue_num, rule="-p udp --dport 9000", netns=lab.server, snaplen=65535, record_size=4 * COUNT,
                      deadline=deadline)
    try:
        _install(s, case)
        flow = lab.start_udp(COUNT, rate=400, keep=COUNT, timeout=20, idle=1.0)
        assert wait_until(lambda: s.record.n + len(s.held) == COUNT, timeout=20)
        if case.after is not None:
            case.after(s)
        live_out = sorted(flow.wait().payloads)
        assert wait_until(lambda: not s.source.stuck_threads, timeout=10)
    finally:
        case.release.set()
        s.detach()
    live = _rows(s)
    assert s.to_pcap(tmp_path / "live.pcap") == COUNT

    case.release.clear()
    r = pktlab.replay(tmp_path / "live.pcap", deadline=deadline)
    _install(r, case)
    if case.after is None:
        r.run()
    else:  # the notebook acts while the replay reads (held packets wait for it, as live)
        r.attach()
        assert wait_until(lambda: r.record.n + len(r.held) == COUNT, timeout=20)
        case.after(r)
        assert r.wait(10)
        r.detach()
    assert wait_until(lambda: not r.source.stuck_threads, timeout=10)
    replay_out = sorted(Packet(None, data).udp.payload for _, data, _ in r.outputs)

    assert live == _rows(r)
    assert live_out == replay_out
    assert s.record.counters() == r.record.counters()
    assert [str(f.error) for f in s.errors] == [str(f.error) for f in r.errors]
