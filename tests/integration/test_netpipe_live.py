"""pktlab.netpipe against Debian's NPtcp on the same lab path, and with a queue in and out of the path."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

import pktlab
from pktlab import Lab
from pktlab.measure.netpipe import compare_runs, netpipe, nptcp, schedule
from tests.conftest import needs_live, pktlab_rules

pytestmark = [needs_live, pytest.mark.skipif(shutil.which("NPtcp") is None, reason="netpipe-tcp is not installed")]
MAX = 1 << 20
RUNS = 7


def test_agrees_with_nptcp_at_every_block_size(lab: Lab, tmp_path: Path) -> None:
    """pktlab.netpipe and NPtcp, alternating on the same path: the same sizes, and no collapse at any of them.

    This VM's host steals CPU time from it (a third of 262 KB trials, which then run at a third of
    the speed: issue 21), so single runs of either tool drop to a slow mode at random sizes.
    pktlab sets such trials aside (``Point.stolen``); NPtcp, the reference, does not.  A size
    counts as collapsed only when pktlab is below half of NPtcp both in the fastest of the RUNS
    interleaved runs and in the median of the per-run ratios (``compare_runs``): steal moves one
    of the two, a measurement slow by itself (issue 21: 0.25-0.42 of NPtcp from 256 KiB on, in
    every run; loop run m22-1 on an AMD EPYC: 0.24-0.48 at the sizes whose buffer glibc mapped
    16 bytes into a page, fixed by a page-aligned buffer) moves both.  The per-size table, with
    its spread, is in BENCHMARKS.md (bench/bench_netpipe.py agree).
    """
    sizes = schedule(MAX)
    ours, ref = [], []
    for _ in range(RUNS):
        ref.append(nptcp(lab, max_bytes=MAX, repeats=30))
        ours.append(netpipe(lab, [None], max_bytes=MAX, repeats=30))
        assert [p.bytes for p in ref[-1].points] == sizes, f"NPtcp's sizes: {[p.bytes for p in ref[-1].points]}"
        assert [p.bytes for p in ours[-1].points] == sizes, f"pktlab's sizes: {[p.bytes for p in ours[-1].points]}"
    table = compare_runs(ours, ref)
    assert list(table["bytes"]) == [b for b in sizes if b > 64 * 1024]
    shown = table.round(2).to_string(index=False)
    print("\n" + shown)
    collapsed = list(table.loc[table["collapsed"], "bytes"])
    # 3 of 24: issue 21's collapse covered 7 or more sizes; noise collapsed none in 15 rounds of 7 runs
    # (2026-12-02, 10 idle, 5 with a CPU-bound process on one core; /tmp data in the note of that day)
    assert len(collapsed) <= len(table) // 8, f"pktlab.netpipe collapsed at {collapsed}:\n{shown}"
    middle = float(table["median run ratio"].median())
    # 0.7-2.5: seen 0.85-1.49 in those 15 rounds. Above 1.4 when NPtcp sits in its slow mode at a band of
    # sizes in every run while pktlab sets stolen trials aside. A timing error of a factor two (one-way
    # against round-trip time) shows at every size, small blocks included: the latency check catches it.
    assert 0.7 <= middle <= 2.5, f"pktlab.netpipe / NPtcp above 64 KiB: median over the sizes {middle:.2f}\n{shown}"
    lat_ref = min(p.seconds for r in ref for p in r.points if p.bytes <= 64)
    lat = min(p.seconds for r in ours for p in r.points if p.bytes <= 64)
    print(f"median run ratio above 64 KiB {middle:.2f}; small-block latency pktlab/NPtcp {lat / lat_ref:.2f}")
    assert 0.6 <= lat / lat_ref <= 1.6, f"small-block latency {lat / lat_ref:.2f} x NPtcp's"
    ours[-1].to_netpipe(tmp_path / "pktlab.out")
    assert len((tmp_path / "pktlab.out").read_text().splitlines()) == len(sizes)


def test_configurations_put_the_queue_in_and_out_of_the_path(lab: Lab, queue_num: int) -> None:
    s = pktlab.attach(queue_num, rule="-p tcp", netns=lab.server)
    try:
        seen = []

        @s.handler
        def count(pkt):
            seen.append(1)

        before = pktlab_rules(lab.server.netns)
        r = netpipe(lab, [None, s], max_bytes=4096, point_seconds=0.005, trials=2)
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
        netpipe(lab, [None], max_bytes=1024, point_seconds=0.005, trials=2)
        assert s.record.n == 0
    finally:
        s.detach()


def test_udp_ping_pong(lab: Lab) -> None:
    r = netpipe(lab, [None], max_bytes=1 << 17, proto="udp", point_seconds=0.005, trials=2)
    assert [p.bytes for p in r.points] == schedule(65507)  # one datagram per message: capped at 65,507 bytes
    assert all(p.mbps > 0 for p in r.points)
    with pytest.raises(pktlab.SessionError, match="proto must be"):
        netpipe(lab, [None], proto="sctp")
