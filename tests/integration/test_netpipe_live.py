"""pktlab.netpipe against Debian's NPtcp on the same lab path, and with a queue in and out of the path."""

from __future__ import annotations

import shutil
import statistics
from pathlib import Path

import pytest

import pktlab
from pktlab import Lab
from pktlab.throughput import netpipe, schedule
from tests.conftest import needs_root, pktlab_rules

pytestmark = [needs_root, pytest.mark.skipif(shutil.which("NPtcp") is None, reason="netpipe-tcp is not installed")]
MAX = 1 << 19


def nptcp(lab: Lab, out: Path) -> list[tuple[int, float, float]]:
    """NPtcp between the lab's hosts, pinned as pktlab.netpipe pins its ends; (bytes, Mbps, seconds) per point."""
    import subprocess
    import time

    server = lab.server.popen(["taskset", "-c", "1", "NPtcp"], stdout=subprocess.DEVNULL)
    time.sleep(0.3)
    lab.client.run(
        ["taskset", "-c", "0", "NPtcp", "-h", lab.server.addr, "-o", str(out), "-u", str(MAX), "-n", "30"], timeout=120
    )
    server.wait(10)
    return [(int(a), float(b), float(c)) for a, b, c, *_ in (line.split() for line in out.read_text().splitlines())]


def test_agrees_with_nptcp_on_the_same_path(lab: Lab, tmp_path: Path) -> None:
    # the same method on both sides (3 trials of 30 round trips, as Debian's NPtcp does with -n 30; the
    # ends pinned alike),
    # four runs of each in alternation: a single run of either spreads by +-20 % on this machine
    ref: list[tuple[int, float, float]] = []
    ours: list[pktlab.throughput.Point] = []
    for i in range(4):
        ref += nptcp(lab, tmp_path / f"np{i}.out")
        r = netpipe(lab, [None], max_bytes=MAX, repeats=30)
        assert [p.bytes for p in r.points] == schedule(MAX)
        ours += r.points
    assert sorted({b for b, _, _ in ref if b <= MAX}) == schedule(MAX)  # NPtcp used the same block sizes
    big = 64 * 1024
    ratio = statistics.median(p.mbps for p in ours if p.bytes >= big) / statistics.median(
        m for b, m, _ in ref if big <= b <= MAX
    )
    assert 0.85 <= ratio <= 1.15, f"throughput for blocks >= 64 KiB: pktlab/NPtcp {ratio:.2f}"
    lat_ref = statistics.median(t for b, _, t in ref if b <= 64)
    lat = statistics.median(p.seconds for p in ours if p.bytes <= 64)
    print(f"\npktlab/NPtcp: throughput >= 64 KiB {ratio:.3f}, latency {lat * 1e6:.1f} vs {lat_ref * 1e6:.1f} µs")
    assert 0.75 <= lat / lat_ref <= 1.25, f"small-block latency {lat * 1e6:.1f} µs vs NPtcp {lat_ref * 1e6:.1f} µs"
    r.to_netpipe(tmp_path / "pktlab.out")
    assert len((tmp_path / "pktlab.out").read_text().splitlines()) == len(schedule(MAX))


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
