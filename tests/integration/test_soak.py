"""A bounded soak: sustained traffic, a handler swapped every second, one that raises; nothing grows.

PKTLAB_SOAK_SECONDS sets the length (default 120; longer runs by hand), PKTLAB_SOAK_RATE the offered
datagrams per second (default 60000; this machine sustained 80,000 with exact accounting).
"""

from __future__ import annotations

import gc
import os
import threading
import time

import pktlab
from pktlab import Lab
from pktlab.kernel.queue import hold_process_port
from tests.conftest import needs_live, pktlab_rules

pytestmark = needs_live

SECONDS = float(os.environ.get("PKTLAB_SOAK_SECONDS", "120"))
RATE = int(os.environ.get("PKTLAB_SOAK_RATE", "60000"))
FLOW_SECONDS = 10


def rss_kib() -> int:
    with open("/proc/self/status") as f:
        return int(next(line for line in f if line.startswith("VmRSS:")).split()[1])


def fds() -> dict[str, str]:
    """This process's open file descriptors and what each points to."""
    out = {}
    for fd in os.listdir("/proc/self/fd"):
        try:
            out[fd] = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:  # the directory's own descriptor, closed again by now
            continue
    return out


def test_soak(lab: Lab, queue_num: int) -> None:
    # the one netlink socket a process keeps on purpose from its first queue in a lab on (its port id: see
    # hold_process_port), taken before the count: run alone, the soak would count it as a leak
    hold_process_port()
    threads0, fds0 = threading.active_count(), fds()
    s = pktlab.attach(queue_num, rule="-p udp --dport 9000", netns=lab.server, record_size=50_000)
    seq = lambda pkt: int.from_bytes(pkt.udp.payload[:4], "big")  # noqa: E731

    raised_by_flaky = [0]  # what the handlers saw: the kernel may pass datagrams unseen when the queue is full

    @s.handler
    def flaky(pkt):
        if seq(pkt) % 97 == 0:
            raised_by_flaky[0] += 1
            raise ValueError("one in 97")
        return None

    drops_returned = [0]

    def make_dropper(generation: int):
        def dropper(pkt):
            if seq(pkt) % 10 == 0:
                drops_returned[0] += 1
                return pkt.drop()
            return None

        dropper.generation = generation  # type: ignore[attr-defined]
        return dropper

    swaps = 0
    sent = received = would_drop = would_raise = socket_drops = 0
    rss_start = None
    start = time.monotonic()
    try:
        s.add_handler(make_dropper(0), "dropper")
        while time.monotonic() - start < SECONDS:
            n = int(RATE * min(FLOW_SECONDS, max(1.0, SECONDS - (time.monotonic() - start))))
            flow = lab.start_udp(n, rate=RATE, timeout=FLOW_SECONDS * 3, idle=2.0)
            t_end = time.monotonic() + n / RATE
            while time.monotonic() < t_end:
                time.sleep(1.0)
                swaps += 1
                s.add_handler(make_dropper(swaps), "dropper")  # hot swap under traffic
            r = flow.wait()
            assert r.duplicates == 0
            sent += r.sent
            received += r.unique
            socket_drops += r.socket_drops
            # if every datagram reached the chain: every tenth (seq 0, 10, ...) is dropped by verdict, except
            # those flaky raises on first (seq divisible by 970), which get the error verdict (accept)
            would_drop += (r.sent + 9) // 10 - (r.sent + 969) // 970
            would_raise += (r.sent + 96) // 97  # seq 0, 97, 194 ...
            if rss_start is None:
                rss_start = rss_kib()  # after the first flow: the ring and the caches are warm
        elapsed = time.monotonic() - start
        st = s.status()
        rss_end = rss_kib()
        assert st.kernel is not None
        dropped = s.record.counts[pktlab.DROP]
        print(
            f"\nsoak: {elapsed:.0f} s, {sent:,} datagrams at {sent / elapsed:,.0f}/s, {swaps} hot swaps, "
            f"{s.record.errors:,} handler errors, received {received:,}, dropped by verdict {dropped:,} "
            f"(of {would_drop:,} if all were seen), passed unseen {st.passed_unseen}, "
            f"kernel dropped {st.kernel.queue_dropped + st.kernel.user_dropped}, receiver socket drops {socket_drops}, "
            f"RSS {rss_start / 1024:.1f} -> {rss_end / 1024:.1f} MiB, ring {len(s.record):,}/{s.record.capacity:,}"
        )
        # every datagram accounted for by a counter: what the chain saw or the kernel passed unseen (fail-open,
        # when the queue was full), what the chain dropped, what the receiving socket's full buffer dropped
        assert st.kernel.queue_dropped == 0 and st.kernel.user_dropped == 0  # fail-open: nothing dropped unseen
        assert s.record.n + st.passed_unseen == sent
        assert received == sent - dropped - socket_drops
        # the verdicts are what the handlers decided on the datagrams they saw; a call the watchdog rescued past
        # its deadline (a starved thread) got the error verdict instead, and counts as an error
        raised, rescued = raised_by_flaky[0], st.rescued
        assert drops_returned[0] - rescued <= dropped <= drops_returned[0] <= would_drop
        assert raised <= s.record.errors <= raised + rescued and raised <= would_raise
        assert len(s.record) <= s.record.capacity
        assert rss_start is not None and rss_end - rss_start < 30 * 1024, "resident memory grew by more than 30 MiB"
    finally:
        s.detach()
    assert threading.active_count() == threads0, [t.name for t in threading.enumerate()]
    # a leak is a descriptor that outlives the cyclic collector too (an object in a reference cycle releases its
    # socket only when collected); name what stayed open, so that a failure says which descriptor it was
    gc.collect()
    extra = {fd: target for fd, target in fds().items() if fds0.get(fd) != target}
    assert not extra, f"descriptors left open by the soak: {extra}"
    assert not pktlab_rules(lab.server.netns)
