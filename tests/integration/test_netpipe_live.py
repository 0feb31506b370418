"""pktlab.netpipe against Debian's NPtcp on the same lab path, and with a queue in and out of the path."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

import pktlab
from pktlab import Lab
from pktlab.measure.netpipe import RUNTM, compare_runs, netpipe, nptcp, schedule, steps, trial_round_trips
from tests.conftest import needs_live, pktlab_rules

pytestmark = [needs_live, pytest.mark.skipif(shutil.which("NPtcp") is None, reason="netpipe-tcp is not installed")]
MAX = 1 << 20


def _follows_the_rule(result: pktlab.NetpipeResult, start: int = 1) -> list[tuple[int, int, int]]:
    """Points whose round trips per trial are not NPtcp's rule applied to the previous point: (size, had, rule)."""
    wrong = []
    incs = dict(steps(MAX, start))
    for prev, p in zip(result.points, result.points[1:], strict=False):
        rule = trial_round_trips(RUNTM, prev.bytes, incs[p.bytes], prev.seconds)
        if abs(p.repeats - rule) > max(1, rule // 200):  # np.out's times have 8 decimals: ~0.2 % off at 5 us
            wrong.append((p.bytes, p.repeats, rule))
    return wrong


def test_agrees_with_nptcp_run_with_its_defaults(lab: Lab, tmp_path: Path) -> None:
    """pktlab.netpipe and NPtcp, each with its defaults, on one path: the same trials, the same figures.

    Before issue 37 pktlab's trials were ten times shorter than NPtcp's, and it read 0.37-0.57 of
    NPtcp from 128 to 512 KiB: this machine's congestion control (BBR) paces a ping-pong connection
    by the bandwidth its trials so far let it estimate, so the trials' length sets the figures.
    Checked exactly: both tools' round trips per trial follow NetPIPE's RUNTM rule from the previous
    point's time (NPtcp's own counts, from its progress output, against ``trial_round_trips``).
    The figures themselves: from 128 to 512 KiB BBR puts either tool into a slower mode in some runs
    (NPtcp too: one run of each parted by 0.36-3.45 there, both ways), so the best-against-best table
    over alternated runs is a benchmark (BENCHMARKS.md, bench/bench_netpipe.py agree: 0.96-1.23 at
    every size). Here one run of each must not part at most of the schedule's sizes (median over all
    of them within 0.6-1.6: a timing error, one-way against round trip, shows at every size; the
    BBR-sensitive sizes are a fifth of the schedule), and the small-block latency agrees within 0.6-1.6.
    """
    sizes = schedule(MAX)
    ref = nptcp(lab, max_bytes=MAX)
    ours = netpipe(lab, [None], max_bytes=MAX)
    assert [p.bytes for p in ref.points] == sizes, f"NPtcp's sizes: {[p.bytes for p in ref.points]}"
    assert [p.bytes for p in ours.points] == sizes, f"pktlab's sizes: {[p.bytes for p in ours.points]}"
    assert _follows_the_rule(ref) == [], "NPtcp's round trips are not the rule pktlab follows"
    assert _follows_the_rule(ours) == [], "pktlab's round trips do not follow NPtcp's rule"
    table = compare_runs([ours], [ref], above=0)
    shown = table.round(2).to_string(index=False)
    print("\n" + shown)
    middle = float(table["ratio of fastest"].median())
    assert 0.6 <= middle <= 1.6, f"pktlab.netpipe / NPtcp: median over the sizes {middle:.2f}\n{shown}"
    lat_ref = min(p.seconds for p in ref.points if p.bytes <= 64)
    lat = min(p.seconds for p in ours.points if p.bytes <= 64)
    assert 0.6 <= lat / lat_ref <= 1.6, f"small-block latency {lat / lat_ref:.2f} x NPtcp's"
    ours.to_netpipe(tmp_path / "pktlab.out")
    assert len((tmp_path / "pktlab.out").read_text().splitlines()) == len(sizes)


def test_a_run_from_a_larger_first_block_follows_nptcp_from_there(lab: Lab) -> None:
    ref = nptcp(lab, max_bytes=1 << 17, start=1 << 15)
    ours = netpipe(lab, [None], max_bytes=1 << 17, start=1 << 15, quick=True)
    assert [p.bytes for p in ours.points] == [p.bytes for p in ref.points] == schedule(1 << 17, start=1 << 15)
    assert _follows_the_rule(ref, start=1 << 15) == []
    assert all(p.repeats >= 3 for p in ours.points)


def test_configurations_put_the_queue_in_and_out_of_the_path(lab: Lab, queue_num: int) -> None:
    s = pktlab.attach(queue_num, rule="-p tcp", netns=lab.server)
    try:
        seen = []

        @s.handler
        def count(pkt):
            seen.append(1)

        before = pktlab_rules(lab.server.netns)
        r = netpipe(lab, [None, s], max_bytes=4096, runtm=0.001, trials=2)
        assert r.configs == ["no queue", f"queue {queue_num} (count)"]
        assert len(r.of("no queue")) == len(r.of(r.configs[1])) == len(schedule(4096))
        assert len(seen) > 100 and s.record.n == len(seen)
        assert pktlab_rules(lab.server.netns) == before  # the rule is back where it was
        summary = r.summary()
        assert list(summary["config"]) == r.configs and (summary["max Mbps"] > 0).all()
    finally:
        s.detach()


def test_the_no_queue_configuration_really_has_no_queue(lab: Lab, queue_num: int) -> None:
    s = pktlab.attach(queue_num, rule="-p tcp", netns=lab.server)
    try:
        netpipe(lab, [None], max_bytes=1024, runtm=0.001, trials=2)
        assert s.record.n == 0
    finally:
        s.detach()


def test_udp_ping_pong(lab: Lab) -> None:
    r = netpipe(lab, [None], max_bytes=1 << 17, proto="udp", runtm=0.001, trials=2)
    assert [p.bytes for p in r.points] == schedule(65507)  # one datagram per message: capped at 65,507 bytes
    assert all(p.mbps > 0 for p in r.points)
    with pytest.raises(pktlab.SessionError, match="proto must be"):
        netpipe(lab, [None], proto="sctp")
