"""Filters and offloaded verdicts in the real kernel (xt_bpf in front of NFQUEUE)."""

from __future__ import annotations

import time

import pytest

import pktlab
from pktlab import FilterError, Lab
from pktlab.lab.network import wait_until
from tests.conftest import needs_live, other_process, pktlab_rules

pytestmark = needs_live


def test_filtered_attach_queues_only_matching_packets(lab: Lab, queue_num: int) -> None:
    s = pktlab.attach(queue_num, rule="-p udp", filter="udp and dst port 9000", netns=lab.server)
    try:
        ports = []
        s.add_handler(lambda p: ports.append(p.udp.dport), "see")
        assert lab.udp(30, port=9000).unique == 30
        assert lab.udp(30, port=9001).unique == 30  # not queued, and untouched
        assert ports == [9000] * 30
        k = s.kernel_counters()
        assert k is not None and k.id_sequence == 30  # the other 30 never left the kernel
        assert "filter (in the kernel): udp and dst port 9000" in str(s.status())
    finally:
        s.detach()
    assert pktlab_rules(lab.server.netns) == []


def test_bad_filter_is_refused_before_anything_is_installed(lab: Lab, queue_num: int) -> None:
    with pytest.raises(FilterError, match="libpcap cannot compile"):
        pktlab.attach(queue_num, rule="-p udp", filter="udp and dst prot 53", netns=lab.server)
    assert pktlab_rules(lab.server.netns) == []


def test_offloaded_drop_never_reaches_userspace(lab: Lab, queue_num: int) -> None:
    s = pktlab.attach(queue_num, rule="-p udp --dport 9000", netns=lab.server)
    try:
        off = s.offload("udp and dst port 9000", "drop")
        assert lab.udp(100, idle=0.5).received == 0
        k = s.kernel_counters()
        assert k is not None and k.id_sequence == 0 and s.record.n == 0  # nothing was queued
        assert s.offload_hits(off.expr) == 100
        assert any("offload: udp and dst port 9000 -> drop  (100 packets" in line for line in s.status().lines())
        s.remove_offload(off.expr)
        assert lab.udp(20).unique == 20 and s.record.n == 20  # back through the queue
    finally:
        s.detach()
    assert pktlab_rules(lab.server.netns) == []


def test_offload_swaps_are_atomic_under_traffic(lab: Lab, queue_num: int) -> None:
    s = pktlab.attach(queue_num, rule="-p udp --dport 9000", netns=lab.server)
    try:

        @s.handler
        def drop_all(pkt):
            return pkt.drop()  # any packet that slipped past the offload during a swap would be lost here

        expr = "udp and dst port 9000"
        s.offload(expr, "accept")
        count = 4000
        flow = lab.start_udp(count, rate=2000, timeout=30, idle=1.0)
        swaps = 0
        t_end = time.monotonic() + 1.5
        while time.monotonic() < t_end:
            s.offload(expr, "accept", mark=swaps % 2 or None)  # accept <-> mark-and-accept
            swaps += 1
        r = flow.wait()
        assert swaps >= 10
        assert r.unique == count, f"{r.missing_count} lost during {swaps} swaps: {r.missing[:10]}"
        assert s.record.n == 0

        # drop -> accept under traffic: what arrives is exactly everything from some point on
        s.offload(expr, "drop")
        flow = lab.start_udp(2000, rate=2000, timeout=30, idle=1.0, keep=2000)
        # the swap once the kernel has dropped some (a sleep was not enough: a clean-clone loop run, the machine
        # busy, started the sender late and all 2000 came after the swap)
        assert wait_until(lambda: s.offload_hits(expr) >= 100, 20, 0.005), "the drop offload saw no packets"
        s.offload(expr, "accept")
        r = flow.wait()
        got = sorted(int.from_bytes(p[:4], "big") for p in r.payloads)
        assert 0 < len(got) < 2000
        assert got == list(range(got[0], 2000)), "a packet was lost after the swap to accept"
        assert s.record.n == 0
        assert len(s.offloads) == 1
    finally:
        s.detach()
    assert pktlab_rules(lab.server.netns) == []


def test_offloaded_mark_goes_on_to_the_queue(lab: Lab, queue_num: int) -> None:
    s = pktlab.attach(queue_num, rule="-p udp --dport 9000", netns=lab.server)
    try:
        marks = []
        s.add_handler(lambda p: marks.append(p.mark), "see")
        s.offload("udp[8:4] < 5", "mark", mark=0x42)
        assert lab.udp(10).unique == 10
        assert marks == [0x42] * 5 + [0] * 5
    finally:
        s.detach()


@other_process
def test_offload_rules_of_a_killed_process_are_swept(lab: Lab, queue_num: int) -> None:
    import os
    import signal
    import subprocess
    import sys

    from pktlab.kernel import rules

    code = (
        "import os, sys, pktlab\n"
        f"s = pktlab.attach({queue_num}, rule='-p udp --dport 9000', netns={lab.server.netns!r})\n"
        "s.offload('udp and dst port 9000', 'drop')\n"
        "print('ready', flush=True)\n"
        "sys.stdin.read()\n"
    )
    child = subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout is not None and child.stdout.readline().strip() == "ready"
        os.kill(child.pid, signal.SIGKILL)  # no atexit, no detach
        child.wait(10)
        fronts = [rules.front_id(r.tokens) for r in rules.saved_rules(lab.server.netns)]
        assert [f[0] for f in fronts if f is not None] == [child.pid]
        assert len(pktlab_rules(lab.server.netns)) == 2  # the queue rule and the offload, both left behind
        assert lab.udp(10, idle=0.3).received == 0  # the dead process's offload still drops
        removed = rules.sweep_stale(lab.server.netns)
        assert len(removed) == 2 and any("offload" in r for r in removed)
        assert pktlab_rules(lab.server.netns) == []
        assert lab.udp(10).unique == 10
    finally:
        if child.poll() is None:
            os.kill(child.pid, signal.SIGKILL)
            child.wait(10)


def test_offload_on_a_filtered_session_is_found_swapped_and_removed(lab: Lab, queue_num: int) -> None:
    # the offload rule then holds two BPF programs: the session's filter and its own, tagged
    s = pktlab.attach(queue_num, rule="-p udp", filter="udp and dst port 9000", netns=lab.server)
    try:
        s.offload("udp[8:4] < 10", "drop")
        assert lab.udp(30, idle=0.5).unique == 20 and s.offload_hits("udp[8:4] < 10") == 10
        s.offload("udp[8:4] < 10", "accept")
        assert lab.udp(30).unique == 30 and len(pktlab_rules(lab.server.netns)) == 2
    finally:
        s.detach()
    assert pktlab_rules(lab.server.netns) == []
