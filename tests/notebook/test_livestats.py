"""Stats aggregation on synthetic records: rates, windows, histogram, latest (no kernel needed)."""

from __future__ import annotations

from types import SimpleNamespace

from pktlab import ACCEPT, DROP
from pktlab import testing as t
from pktlab.notebook.livestats import HIST_EDGES_US, LiveStats, _bin
from pktlab.pipeline.record import Record


def fill(rec: Record, n: int, t0: float, size: int = 100, ns: int = 2000, verdict=ACCEPT) -> None:
    head = t.udp(size=size, raw=True)
    for i in range(n):
        rec.append(t.entry(id=i, time=t0 + i * 1e-4, packet=head, verdict=verdict, handler="h" if ns else None,
                           handler_us=ns / 1000))  # fmt: skip


def test_rates_over_one_period() -> None:
    rec = Record(1000, 64)
    st = LiveStats(window=10, period=0.5)
    first = st.sample(rec, None, now=100.0)
    assert first.pps == 0 and first.packets == 0
    fill(rec, 200, 100.0)
    fill(rec, 50, 100.1, verdict=DROP)
    s = st.sample(rec, SimpleNamespace(queue_total=7, queue_dropped=2, user_dropped=1), now=100.5)
    assert s.packets == 250 and s.pps == 500.0
    assert s.verdicts_ps == {"accept": 400.0, "drop": 100.0, "repeat": 0.0, "sent": 0.0}
    assert abs(s.mbps - 250 * 100 * 8 / 0.5 / 1e6) < 1e-9
    assert (s.queue_depth, s.kernel_drops) == (7, 3)
    assert sum(s.hist_counts) == 250 and s.hist_counts[_bin(2.0)] == 250  # every packet took 2 µs
    assert len(s.latest) == 20 and s.latest[0].id == 49  # newest first


def test_windows_are_bounded_and_bins_cover_the_range() -> None:
    rec = Record(100, 64)
    st = LiveStats(window=2.0, period=0.5)
    for k in range(50):
        fill(rec, 10, 200.0 + k)
        st.sample(rec, None, now=200.0 + k)
    assert len(st.history) == 4  # window / period, however long it runs
    assert st.history[-1].pps == 10.0
    assert _bin(0.01) == 0 and _bin(1e9) == len(HIST_EDGES_US)
    assert all(_bin(a) <= _bin(b) for a, b in zip(HIST_EDGES_US, HIST_EDGES_US[1:], strict=False))


def test_more_packets_than_the_tail_are_extrapolated() -> None:
    rec = Record(10_000, 64)
    st = LiveStats(window=10, period=1.0)
    st.sample(rec, None, now=0.0)
    fill(rec, 5000, 0.0, size=200, ns=0)
    s = st.sample(rec, None, now=1.0)
    assert s.pps == 5000 and abs(s.mbps - 5000 * 200 * 8 / 1e6) < 1e-6
    assert sum(s.hist_counts) == 0  # no handler ran: no handler time


def test_an_idle_session_shows_no_traffic() -> None:
    """No new packets: 0 packets/s, 0 Mbps and an empty histogram, not the last packets counted again."""
    rec = Record(100, 64)
    st = LiveStats(window=10, period=0.5)
    st.sample(rec, None, now=10.0)
    fill(rec, 30, 10.1)
    busy = st.sample(rec, None, now=10.5)
    idle = st.sample(rec, None, now=11.0)
    assert busy.pps == 60.0 and busy.mbps > 0 and sum(busy.hist_counts) == 30
    assert idle.pps == 0 and idle.mbps == 0 and sum(idle.hist_counts) == 0
    assert len(idle.latest) == 20  # the table still lists the newest packets


def test_a_record_that_starts_afresh_counts_from_zero() -> None:
    rec = Record(100, 64)
    st = LiveStats(window=10, period=0.5)
    st.sample(rec, None, now=10.0)
    fill(rec, 40, 10.1)
    st.sample(rec, None, now=10.5)
    rec.clear()  # a replay run again
    fill(rec, 10, 11.0)
    s = st.sample(rec, None, now=11.0)
    assert s.pps == 20.0 and s.packets == 10 and all(v >= 0 for v in s.verdicts_ps.values())


def test_packets_pktlab_sent_have_their_own_rate(tmp_path) -> None:  # type: ignore[no-untyped-def]
    import pktlab

    r = pktlab.replay(t.capture(tmp_path / "q.pcap", [t.udp(payload=b"q")] * 4))
    r.add_handler(lambda pkt: (pkt.reply(b"a"), pkt.drop())[1], "answer")
    st = LiveStats(window=10, period=0.5)
    st.sample(r.record, None, now=100.0)
    r.run()
    s = st.sample(r.record, None, now=100.5)
    assert s.verdicts_ps == {"accept": 0.0, "drop": 8.0, "repeat": 0.0, "sent": 8.0}
    assert [e.verdict for e in s.latest[:2]] == ["drop", "sent"]  # newest first: each answer before its question


def test_a_sample_carries_the_number_of_flows_decided() -> None:
    rec = Record(1000, 64)
    fill(rec, 10, 100.0)
    assert LiveStats().sample(rec, None, now=101.0, flows_decided=3).flows_decided == 3
