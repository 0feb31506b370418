"""pktlab.netpipe against Debian's NPtcp on the same lab path, and with a queue in and out of the path."""

from __future__ import annotations

import shutil
import statistics
from pathlib import Path

import pytest

import pktlab
from pktlab import Lab
from pktlab.measure.netpipe import netpipe, nptcp, schedule
from tests.conftest import needs_root, pktlab_rules

pytestmark = [needs_root, pytest.mark.skipif(shutil.which("NPtcp") is None, reason="netpipe-tcp is not installed")]
MAX = 1 << 20
RUNS = 5


def test_agrees_with_nptcp_at_every_block_size(lab: Lab, tmp_path: Path) -> None:
    """pktlab.netpipe and NPtcp, alternating on the same path: the same sizes, and no collapse at any of them.

    A busy machine only ever slows a run down, so, as NetPIPE keeps the fastest of its
    trials, each block size compares the fastest of RUNS interleaved runs of each tool.
    Even so, single sizes of either tool fall between two modes here (~10 or ~35 Gbps with
    another process on a core; NPtcp as much as pktlab), so one size can be off by 2x: the
    check is on the whole curve above 64 KiB.  It fails on a collapse like issue 21's
    (pktlab at 0.25-0.42 of NPtcp from 256 KiB on) or a factor of two from confusing one-way
    and round-trip times; the per-size agreement is measured, with its spread, in
    bench/bench_netpipe.py (BENCHMARKS.md).
    """
    ref: dict[int, list[float]] = {}
    ours: dict[int, list[float]] = {}
    lat_ref: list[float] = []
    lat: list[float] = []
    sizes = schedule(MAX)
    for _ in range(RUNS):
        n = nptcp(lab, max_bytes=MAX, repeats=30)
        r = netpipe(lab, [None], max_bytes=MAX, repeats=30)
        assert [p.bytes for p in n.points] == sizes, f"NPtcp's sizes: {[p.bytes for p in n.points]}"
        assert [p.bytes for p in r.points] == sizes, f"pktlab's sizes: {[p.bytes for p in r.points]}"
        for p in n.points:
            ref.setdefault(p.bytes, []).append(p.mbps)
        for p in r.points:
            ours.setdefault(p.bytes, []).append(p.mbps)
        lat_ref += [p.seconds for p in n.points if p.bytes <= 64]
        lat += [p.seconds for p in r.points if p.bytes <= 64]
    ratios = {b: max(ours[b]) / max(ref[b]) for b in sizes if b > 64 * 1024}
    print("\npktlab/NPtcp per block size: " + ", ".join(f"{b}: {x:.2f}" for b, x in ratios.items()))
    low = {b: round(x, 2) for b, x in ratios.items() if x < 0.5}
    assert len(low) <= len(ratios) // 5, f"pktlab.netpipe below half of NPtcp at {low}"
    middle = statistics.median(ratios.values())
    # The lower bound is the collapse check (issue 21: pktlab at 0.25-0.42 of NPtcp from 256 KiB on).
    # Above, 2.5 and not 1.4: a tool can stay in the slow mode at a band of sizes in all of its runs
    # (2026-12-01, clean-clone loop: NPtcp slow at 131-393 KB in five of five runs while pktlab reached
    # the fast mode, 1.5-2.6x per size, median 1.59). A timing error of a factor two (one-way against
    # round-trip time) shows at every size, small blocks included, which the latency check below catches.
    assert 0.7 <= middle <= 2.5, f"pktlab.netpipe / NPtcp above 64 KiB: median over the sizes {middle:.2f}"
    latency = min(lat) / min(lat_ref)
    print(f"median ratio above 64 KiB {middle:.2f}; small-block latency pktlab/NPtcp {latency:.2f}")
    assert 0.6 <= latency <= 1.6, f"small-block latency {latency:.2f} x NPtcp's"
    r.to_netpipe(tmp_path / "pktlab.out")
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
