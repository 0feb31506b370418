"""Never black-hole, never leak, never die: the safety guarantees on the real kernel."""

from __future__ import annotations

import os
import time

import pktlab
from pktlab import Lab
from pktlab.lab.network import wait_until
from tests.conftest import needs_live, other_process, pktlab_rules, read_every_view

pytestmark = needs_live


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


@other_process
def test_kill_9_of_the_reader_process_leaves_traffic_flowing(lab: Lab, queue_num: int, tmp_path) -> None:
    import os
    import signal
    import subprocess
    import sys

    mine = pktlab.attach(queue_num + 1, rule="-p udp --dport 9001", netns=lab.server)  # a live session's rule
    child = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys, time, pktlab\n"
            f"s = pktlab.attach({queue_num}, rule='-p udp --dport 9000', netns='{lab.server.netns}')\n"
            "s.add_handler(lambda pkt: None, 'slow_reader')\n"
            "print(s.rules.tag, flush=True)\n"
            "time.sleep(60)\n",
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        tag = child.stdout.readline().strip()
        assert tag.startswith("pktlab:")
        flow = lab.start_udp(3000, rate=1000, timeout=20, idle=1.5)
        time.sleep(1.0)
        os.kill(child.pid, signal.SIGKILL)
        child.wait(5)
        r = flow.wait()
        # the dead reader's rule is still there (a kill -9 runs no cleanup), and bypass keeps traffic flowing
        print(f"kill -9: longest silence {r.max_gap * 1000:.0f} ms, {r.missing_count} of 3000 datagrams lost")
        assert r.max_gap < 1.0, f"traffic stopped for {r.max_gap:.2f} s"
        assert r.unique >= 3000 - 1000
        assert any(tag in line for line in pktlab_rules(lab.server.netns))
        # the next attach sweeps the dead process's rules, and only those
        nxt = pktlab.attach(queue_num + 2, rule="-p udp --dport 9002", netns=lab.server)
        left = pktlab_rules(lab.server.netns)
        assert not any(tag in line for line in left)
        assert any(mine.rules.tag in line for line in left) and any(nxt.rules.tag in line for line in left)
        nxt.detach()
    finally:
        if child.poll() is None:
            child.kill()
        mine.detach()


CRAFT = r"""
import socket, sys
from scapy.layers.inet import ICMP, IP, TCP, UDP
from scapy.layers.inet6 import IPv6, IPv6ExtHdrDestOpt, IPv6ExtHdrHopByHop
from scapy.packet import Raw

d4, d6 = sys.argv[1], sys.argv[2]
v4 = [
    IP(dst=d4, proto=6) / Raw(b"\x12\x34\x00\x50\x00"),          # TCP header cut after 5 bytes
    IP(dst=d4) / TCP(dport=80, dataofs=15),                      # TCP claims 40 option bytes it does not have
    IP(dst=d4) / TCP(dport=80, dataofs=2),                       # TCP data offset below the minimum
    IP(dst=d4) / UDP(dport=9000, len=0) / b"zero",               # UDP length zero
    IP(dst=d4) / UDP(dport=9000, len=60000) / b"huge",           # UDP length far beyond the packet
    IP(dst=d4, proto=17),                                        # UDP with no header at all
    IP(dst=d4, proto=1) / Raw(b"\x08"),                          # ICMP cut after its type
    IP(dst=d4, options=b"\x07\x28\x04\x00") / UDP(dport=9000),   # record-route option claiming 40 bytes
    IP(dst=d4, frag=10, proto=6) / Raw(b"x" * 16),               # a later fragment of a TCP segment
]
v6 = [
    IPv6(dst=d6, nh=60) / ((b"\x3c\x00" + bytes(6)) * 20),        # 20 chained destination-options headers
    IPv6(dst=d6) / IPv6ExtHdrHopByHop() / Raw(b"\x11"),            # hop-by-hop header cut short
    IPv6(dst=d6, nh=17) / Raw(b"\x00\x01"),                        # UDP header cut after 2 bytes
]
s4 = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_RAW)
s6 = socket.socket(socket.AF_INET6, socket.SOCK_RAW, socket.IPPROTO_RAW)
sent = 0
for p in v4:
    s4.sendto(bytes(p), (d4, 0)); sent += 1
for p in v6:
    s6.sendto(bytes(p), (d6, 0)); sent += 1
print(sent)
"""


def test_malformed_packets_through_the_queue_never_break_the_reader(lab: Lab, queue_num: int, tmp_path) -> None:
    import sys

    outcomes: list[tuple[str, str]] = []

    def poke(pkt):
        """Read every view of the packet; note what each read raised."""
        outcomes.extend(read_every_view(pkt))
        return None

    def careless(pkt):
        """Reads without looking: its PacketFormatError must not hurt the reader."""
        if pkt.tcp is not None:
            return pkt.accept() if pkt.tcp.window >= 0 else None
        return None

    v4 = pktlab.attach(queue_num, rule="-d 10.77.1.2", hook="OUTPUT", netns=lab.client)
    v6 = pktlab.attach(queue_num + 1, rule="-d fd77:1::2", hook="OUTPUT", family="ipv6", netns=lab.client)
    try:
        for s in (v4, v6):
            s.add_handler(poke, "poke")
            s.add_handler(careless, "careless")
        script = tmp_path / "craft.py"
        script.write_text(CRAFT)
        sent = int(lab.client.run([sys.executable, str(script), "10.77.1.2", "fd77:1::2"]).stdout)
        assert wait_until(lambda: v4.record.n + v6.record.n >= sent, timeout=5)
        print("\nrecorded", v4.record.n, v6.record.n, "outcomes", sorted(set(outcomes)))
        assert v4.record.n + v6.record.n == sent  # every crafted packet reached the reader and got a verdict
        bugs = [o for o in outcomes if o[0] not in ("ok", "PacketFormatError")]
        assert not bugs, bugs
        assert sum(1 for o in outcomes if o[0] == "PacketFormatError") >= 6
        assert any("PacketFormatError" in e.error for e in v4.errors)  # careless' failure kept, packet accepted
        assert all((c := s.kernel_counters()) is not None and c.queue_total == 0 for s in (v4, v6))
        # the reader is alive and well: ordinary traffic still flows through the same session
        assert lab.udp(50).unique == 50
        assert v4.source.running and v4.source.internal_errors == 0 and v4.dispatcher.internal_errors == 0
    finally:
        v4.detach()
        v6.detach()


def test_a_sleeping_handler_does_not_stall_traffic_and_rejoins(lab: Lab, queue_num: int, capsys) -> None:
    import threading

    # 250 ms: a deadline far above scheduling noise (with a CPU hog, a reader was once starved past 50 ms and a
    # second, healthy call was rescued too)
    s = pktlab.attach(queue_num, rule="-p udp --dport 9000", netns=lab.server, deadline=0.25)
    release = threading.Event()
    calls: list[int] = []
    try:

        @s.handler
        def sleepy(pkt):
            seq = int.from_bytes(pkt.udp.payload[:4], "big")
            calls.append(seq)
            if seq == 20:
                release.wait(10)  # stuck, as at a breakpoint, until the test lets go
            return None

        @s.handler
        def drop_odd(pkt):
            return pkt.drop() if int.from_bytes(pkt.udp.payload[:4], "big") % 2 else None

        flow = lab.start_udp(400, rate=1000, timeout=20, idle=1.5)
        assert wait_until(lambda: s.stuck, timeout=5)
        st = str(s.status())
        assert "STUCK: handler sleepy" in st
        time.sleep(0.2)
        release.set()  # the stuck call returns: sleepy rejoins
        r = flow.wait()
        assert not s.stuck and s.chain.active[0].name == "sleepy"
        # every even datagram arrived: the stuck one by the error verdict at the deadline, the others
        # through the rest of the chain (drop_odd) while sleepy was skipped, and through both after
        assert r.unique == 200 and r.max_gap < 1.0, (r.unique, r.max_gap)  # the deadline, and then some
        assert s.record.n == 400  # exactly one record entry (and verdict) per packet
        ids = [e.id for e in s.record]
        assert len(set(ids)) == 400
        rescued = [e for e in s.record if e.error and "did not return within 250 ms" in e.error]
        assert len(rescued) == 1 and s.chain["sleepy"].rescued == 1
        seen = len(calls)
        assert lab.udp(10, rate=1000, idle=0.5).unique == 5  # a flow after it rejoined: drop_odd still runs
        assert len(calls) == seen + 10  # and sleepy saw every packet of it
        said = capsys.readouterr().err
        assert "handler 'sleepy' did not return within 250 ms" in said
        assert "handler 'sleepy' returned and is back in the chain" in said
    finally:
        release.set()
        s.detach()


def test_an_endless_loop_handler_is_skipped_and_detach_still_works(lab: Lab, queue_num: int) -> None:
    import threading

    s = pktlab.attach(queue_num, rule="-p udp --dport 9000", netns=lab.server, deadline=0.03)
    stop = threading.Event()
    try:

        @s.handler
        def spin(pkt):
            if int.from_bytes(pkt.udp.payload[:4], "big") == 3:
                while not stop.is_set():  # a busy loop: holds the GIL but for the interpreter's switches
                    pass
            return None

        r = lab.udp(300, rate=1000, timeout=20)
        assert r.unique == 300 and r.max_gap < 0.5
        assert [h.name for h in s.stuck] == ["spin"]
        assert s.status().stuck_threads == 1
        s.detach()  # the successor reader drains and unbinds; the spinning thread is left alone
        assert not s.attached and not pktlab_rules(lab.server.netns)
    finally:
        stop.set()
        s.detach()
    assert wait_until(lambda: not s.source.stuck_threads, timeout=5)
    assert s.record.n == 300


def _sockets() -> set[str]:
    out = set()
    for fd in os.listdir("/proc/self/fd"):
        try:
            target = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            continue
        if target.startswith("socket:"):
            out.add(target)
    return out


def test_detach_closes_the_queue_socket_after_a_rescue_without_the_cyclic_collector(lab: Lab, queue_num: int) -> None:
    """A handler the watchdog rescued returns later; its packet must not outlive it in a reference cycle.

    The packet references the queue (through NetfilterQueue's packet), so a packet left in a cycle kept the
    queue's netlink socket open after detach until the cyclic collector happened to run (seen once in a soak).
    """
    import gc
    import threading

    before = _sockets()
    gc.collect()
    gc.disable()  # what closes must close by reference counting, at detach, not whenever the collector runs
    release = threading.Event()
    s = pktlab.attach(queue_num, rule="-p udp --dport 9000", netns=lab.server, deadline=0.25)
    try:
        queue_sockets = _sockets() - before
        assert queue_sockets, "attach opened no socket"

        @s.handler
        def sleepy(pkt):
            seq = int.from_bytes(pkt.udp.payload[:4], "big")  # makes the packet <-> view cycle
            if seq == 5:
                release.wait(10)
            return None

        flow = lab.start_udp(50, rate=1000, timeout=20, idle=1.0)
        assert wait_until(lambda: s.stuck, timeout=5)
        release.set()
        assert flow.wait().unique == 50
        assert wait_until(lambda: not s.stuck and not s.source.stuck_threads, timeout=5)
        assert s.chain["sleepy"].rescued == 1
        s.detach()
        assert not (_sockets() & queue_sockets), "the queue's socket is still open after detach"
    finally:
        gc.enable()
        release.set()
        s.detach()
