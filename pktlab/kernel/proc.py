"""Facts about the running kernel and process: privileges and queue counters."""

from __future__ import annotations

import os
from dataclasses import dataclass

from . import netns

QUEUE_PROC = "/proc/thread-self/net/netfilter/nfnetlink_queue"


def pid_alive(pid: int) -> bool:
    """True when a process with this PID exists."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


@dataclass(frozen=True)
class QueueCounters:
    """One line of /proc/net/netfilter/nfnetlink_queue.

    ``queue_total`` is the number of packets waiting for a verdict now;
    ``queue_dropped`` counts packets the kernel dropped because the queue
    was full; ``user_dropped`` those it could not send to the reader
    (socket buffer full); ``id_sequence`` is the last packet id used.
    """

    queue_num: int
    portid: int
    queue_total: int
    copy_mode: int
    copy_range: int
    queue_dropped: int
    user_dropped: int
    id_sequence: int


def _read_queue_proc() -> str:
    try:
        with open(QUEUE_PROC) as f:
            return f.read()
    except (FileNotFoundError, PermissionError):  # no queue module, or the host's queues, which a user may not see
        return ""


def parse_queue_proc(text: str) -> dict[int, QueueCounters]:
    """Parse the nfnetlink_queue proc file into counters keyed by queue number."""
    out: dict[int, QueueCounters] = {}
    for line in text.splitlines():
        parts = line.split()
        if len(parts) < 8:
            continue
        nums = [int(x) for x in parts[:8]]
        out[nums[0]] = QueueCounters(*nums)
    return out


def queue_counters(netns_name: str | None = None) -> dict[int, QueueCounters]:
    """Kernel counters of every bound queue in a namespace (``None``: the calling thread's)."""
    return parse_queue_proc(netns.call_in(netns_name, _read_queue_proc))
