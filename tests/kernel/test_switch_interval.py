"""While a queue reader runs, a computing thread gives the GIL up after 0.5 ms, not 5 (pktlab.kernel.switch_interval).

The latency this buys is measured in bench/bench_packet_path.py ((l6): a handler's packets while a cell computes).
"""

from __future__ import annotations

import sys
import threading

import pytest

import pktlab
from pktlab import Lab
from pktlab.kernel import switch_interval
from pktlab.kernel.switch_interval import READER_SWITCH_INTERVAL
from tests.conftest import needs_live


@pytest.fixture
def default_interval():
    before = sys.getswitchinterval()
    sys.setswitchinterval(0.005)
    yield 0.005
    sys.setswitchinterval(before)


def test_the_last_reader_to_stop_puts_the_interval_back(default_interval: float) -> None:
    switch_interval.reader_started()
    switch_interval.reader_started()
    try:
        assert sys.getswitchinterval() == pytest.approx(READER_SWITCH_INTERVAL)
        switch_interval.reader_stopped()
        assert sys.getswitchinterval() == pytest.approx(READER_SWITCH_INTERVAL)  # one reader still runs
    finally:
        switch_interval.reader_stopped()
    assert sys.getswitchinterval() == pytest.approx(default_interval)
    switch_interval.reader_stopped()  # one stop too many changes nothing
    assert switch_interval.readers_running() == 0 and sys.getswitchinterval() == pytest.approx(default_interval)


def test_an_interval_someone_set_meanwhile_or_shorter_already_is_left_alone(default_interval: float) -> None:
    switch_interval.reader_started()
    sys.setswitchinterval(0.002)  # the user's own choice while the reader ran
    switch_interval.reader_stopped()
    assert sys.getswitchinterval() == pytest.approx(0.002)
    sys.setswitchinterval(0.0001)  # shorter than pktlab's: kept while a reader runs
    switch_interval.reader_started()
    assert sys.getswitchinterval() == pytest.approx(0.0001)
    switch_interval.reader_stopped()
    assert sys.getswitchinterval() == pytest.approx(0.0001)


@needs_live
def test_a_handlers_packets_go_on_while_a_thread_computes(lab: Lab, queue_num: int, default_interval: float) -> None:
    """Attached, the interval is short; every datagram reaches the handler while a thread of the process computes
    (each waits for the GIL at most the short interval); detached, the interval is back."""
    s = pktlab.attach(queue_num, rule="-p udp --dport 9000", netns=lab.server)
    seen: list[int] = []
    stop = threading.Event()

    def compute() -> None:  # a notebook cell's loop: holds the GIL but for the switch interval
        n = 0
        while not stop.is_set():
            n += 1

    t = threading.Thread(target=compute, daemon=True)
    try:
        assert sys.getswitchinterval() == pytest.approx(READER_SWITCH_INTERVAL)
        s.add_handler(lambda pkt: seen.append(pkt.udp.dport), "h")
        t.start()
        r = lab.udp(200, rate=200, timeout=30, idle=1.0)
        assert r.unique == 200 and r.received == 200 and len(seen) == 200
    finally:
        stop.set()
        if t.is_alive():
            t.join()
        s.detach()
    assert sys.getswitchinterval() == pytest.approx(default_interval)
