"""Never black-hole, never leak, never die: the safety guarantees on the real kernel."""

from __future__ import annotations

import pktlab
from pktlab import Lab
from pktlab.lab import wait_until
from tests.conftest import needs_root

pytestmark = needs_root


def _waiting(s: pktlab.Session) -> int:
    c = s.kernel_counters()
    return c.queue_total if c else -1


def test_full_queue_fails_open_and_status_counts_what_passed_unseen(lab: Lab, queue_num: int) -> None:
    s = pktlab.attach(queue_num, rule="-p udp --dport 9000", netns=lab.server, max_len=20)
    try:
        s.pause()
        flow = lab.start_udp(200, rate=2000, timeout=20, idle=1.5)
        assert wait_until(lambda: s.rules.hits() >= 200, timeout=5)
        assert _waiting(s) == 20
        st = s.status()
        assert st.passed_unseen == 180 and st.kernel is not None and st.kernel.queue_dropped == 0
        assert "passed unseen 180" in str(st)
        s.resume()
        r = flow.wait()
        assert r.unique == 200  # 180 passed by the kernel, 20 through the handler chain
        assert s.record.n == 20
    finally:
        s.detach()


def test_fail_closed_drops_when_full_and_says_so(lab: Lab, queue_num: int) -> None:
    s = pktlab.attach(
        queue_num, rule="-p udp --dport 9000", netns=lab.server, max_len=20, bypass=False, fail_open=False
    )
    try:
        s.pause()
        flow = lab.start_udp(200, rate=2000, timeout=20, idle=1.0)
        assert wait_until(lambda: s.rules.hits() >= 200, timeout=5)
        st = s.status()
        assert st.kernel is not None and st.kernel.queue_dropped == 180 and st.passed_unseen == 0
        assert "fail-closed" in str(st)
        s.resume()
        assert flow.wait().unique == 20
    finally:
        s.detach()


def test_socket_overruns_are_counted_not_ignored(lab: Lab, queue_num: int) -> None:
    # a tiny socket buffer: the kernel cannot hand most packets to the paused reader
    s = pktlab.attach(
        queue_num, rule="-p udp --dport 9000", netns=lab.server, sock_bytes=4096, bypass=False, fail_open=False
    )
    try:
        s.pause()
        flow = lab.start_udp(300, rate=3000, timeout=20, idle=1.0)
        assert wait_until(lambda: s.rules.hits() >= 300, timeout=5)
        s.resume()
        r = flow.wait()
        st = s.status()
        assert st.kernel is not None and st.kernel.user_dropped > 0
        assert st.enobufs >= 1
        assert r.unique == s.record.n  # what the reader saw was delivered; the rest was dropped and counted
        assert r.unique + st.kernel.user_dropped == 300
    finally:
        s.detach()


def test_whole_packets_beyond_4016_bytes_are_copied(lab: Lab, queue_num: int) -> None:
    # NetfilterQueue alone caps the copy range at 4016 bytes; pktlab reads whole packets
    lab.server.run("ip link set dev eth0 mtu 9000")
    lab.client.run("ip link set dev eth0 mtu 9000")
    s = pktlab.attach(queue_num, rule="-p udp --dport 9000", netns=lab.server)
    try:

        @s.handler
        def stamp_end(pkt):
            pkt.udp.payload = pkt.udp.payload[:-3] + b"END"
            return pkt.accept()

        r = lab.udp(3, size=8000, keep=3)
        assert r.unique == 3
        assert all(len(p) == 8000 and p.endswith(b"END") for p in r.payloads)
        assert set(s.df["size"]) == {8028}
    finally:
        s.detach()
