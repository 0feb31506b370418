"""The kernel's queue counters, as /proc/net/netfilter/nfnetlink_queue prints them."""

from __future__ import annotations

from pktlab.kernel.proc import QueueCounters, parse_queue_proc, pid_alive

# queue_num portid queue_total copy_mode copy_range queue_dropped user_dropped id_sequence 1
SAMPLE = """    1 4026 12 2 65535 0 3 812 1
65535 77 0 2 4096 5 0 9 1
garbage
"""


def test_lines_become_counters_by_queue_number() -> None:
    got = parse_queue_proc(SAMPLE)
    assert set(got) == {1, 65535}
    assert got[1] == QueueCounters(1, 4026, 12, 2, 65535, 0, 3, 812)
    assert got[65535].queue_dropped == 5 and got[65535].copy_range == 4096
    assert parse_queue_proc("") == {}


def test_pid_alive() -> None:
    import os

    assert pid_alive(os.getpid()) and not pid_alive(2**22 + 12345)
