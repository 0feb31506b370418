"""The reader takes up to 16 messages per system call and reuses packet objects: nothing is lost by either.

A reader stuck in a handler holds the rest of its batch; those messages must
go to its successor (every packet one verdict).  A packet object is reused
only when nothing but the dispatcher can see it: packets, views and weak
references a handler kept must keep showing their own packet.
"""

from __future__ import annotations

import copy
import ctypes
import threading
import time
import weakref

import pytest
from pktlab.packet._core import message_copies

import pktlab
from pktlab import Lab
from pktlab.lab.network import wait_until
from tests.conftest import needs_live

pytestmark = needs_live


def _seq(data: bytes) -> int:
    return int.from_bytes(data[:4], "big")


@pytest.mark.parametrize("stuck_at", [0, 5])
def test_a_stuck_reader_hands_its_batch_to_the_successor(lab: Lab, queue_num: int, stuck_at: int) -> None:
    # far above scheduling noise: only the stuck call may be rescued (a starved reader was once seen past 50 ms)
    s = pktlab.attach(queue_num, rule="-p udp --dport 9000", netns=lab.server, deadline=0.25)
    release = threading.Event()
    seen: list[int] = []
    try:

        @s.handler
        def stall(pkt):
            seq = _seq(pkt.udp.payload)
            seen.append(seq)
            if seq == stuck_at:
                release.wait(20)  # stuck until the test ends: its batch must not wait with it
            return None

        s.pause()
        flow = lab.start_udp(100, rate=0, timeout=20, idle=1.0)
        assert wait_until(lambda: (c := s.kernel_counters()) is not None and c.queue_total == 100, 5)
        reader = s.source.reader
        s.resume()  # the reader takes 16 messages at once and blocks on packet ``stuck_at`` of them
        assert wait_until(lambda: s.record.n == 100, timeout=5), s.record.n
        r = flow.wait()
        assert r.unique == 100 and r.received == 100  # the stuck one by the error verdict, the rest by the chain
        assert reader.retired and reader.successor is s.source.reader
        # the stuck reader dispatched up to the stuck packet; the successor the rest, handed over or read
        assert reader.successor.messages == 100 - (stuck_at + 1) and reader.successor.waiting == 0
        ids = [e.id for e in s.record]
        assert len(set(ids)) == 100
        assert seen == list(range(stuck_at + 1))  # once stuck, the handler is skipped until it returns
    finally:
        release.set()
        s.detach()


def test_packets_are_reused_only_when_nothing_kept_them(lab: Lab, queue_num: int) -> None:
    """Handlers see packets over the reader's buffer; one kept past its verdict gets its own bytes, once."""
    s = pktlab.attach(queue_num, rule="-p udp --dport 9000", netns=lab.server)
    copies = message_copies()
    objects_reused = s.source.reader.packets_reused
    kept: list[tuple[int, pktlab.Packet]] = []
    ids: dict[int, tuple[int, str]] = {}
    views: list[tuple[int, object]] = []
    refs: list[tuple[int, weakref.ref]] = []
    wrong: list[str] = []
    try:

        @s.handler
        def keep_some(pkt):
            seq = _seq(pkt.udp.payload)
            for old_seq, ref in refs[-3:]:  # a weak reference never shows another packet
                old = ref()
                if old is not None and _seq(old.udp.payload) != old_seq:
                    wrong.append(f"weakref {old_seq} shows {_seq(old.udp.payload)}")
            if seq % 10 == 0:
                kept.append((seq, pkt))
                ids[seq] = (pkt.id, pkt.hook)
            elif seq % 10 == 1:
                views.append((seq, pkt.udp))  # a view keeps its packet
            elif seq % 10 == 2:
                refs.append((seq, weakref.ref(pkt)))
            else:
                pkt.ip.src, pkt.ip.dst, pkt.udp.dport  # noqa: B018 - views made, then left behind
            return None

        r = lab.udp(300, rate=3000, timeout=20)
        assert r.unique == 300
        assert wait_until(lambda: s.record.n == 300, timeout=5)
        time.sleep(0.1)
    finally:
        s.detach()
    assert not wrong, wrong[:5]
    assert [seq for seq, _ in kept] == list(range(0, 300, 10))
    for seq, pkt in kept:
        assert _seq(pkt.udp.payload) == seq and pkt.ip.dst == lab.server.addr and pkt.udp.dport == 9000
        assert (pkt.id, pkt.hook) == ids[seq]  # its queue message's numbers, not a later packet's
    for seq, view in views:
        assert _seq(view.payload) == seq and view.dport == 9000
    # a packet reuses the one before it when nobody kept that one (seq % 10 in 3..9: 7 in 10;
    # kept packets, views and weak references all prevent reuse); the last one has no next
    assert s.dispatcher.reused == 300 // 10 * 7 - 1
    # the reader's own object for a packet's numbers is reused as well, but never one a kept packet or view
    # refers to (a weak reference keeps neither alive): 8 in 10, less the first packet
    assert s.source.reader.packets_reused - objects_reused == 300 // 10 * 8 - 1
    # the reader reads 16 messages at a time into the same buffer, over and over: a packet, view or weakly
    # referenced packet kept past its verdict shows its own packet above because it was copied out of the
    # message then; the packets nobody kept were read in place (fields and payload) and never copied
    assert message_copies() - copies == 3 * 30


def test_a_handler_reads_the_packet_in_place_and_a_write_copies_it_once(lab: Lab, queue_num: int) -> None:
    """Fields, payload and raw slices are read from the queue message itself; the first write copies the
    packet (and only then), what goes on is the rewrite, and the record keeps the packet as it arrived."""
    s = pktlab.attach(queue_num, rule="-p udp --dport 9000", netns=lab.server)
    seen: list[tuple] = []
    try:

        @s.handler
        def read(pkt):
            seen.append((pkt.ip.dst, pkt.udp.dport, _seq(pkt.udp.payload), pkt.raw[9], pkt.raw[16:20], len(pkt)))

        copies = message_copies()
        r = lab.udp(50, rate=0, timeout=20, idle=0.5)
        assert r.unique == 50 and r.received == 50
        assert message_copies() == copies  # 50 packets read, none copied
        dst = bytes(int(x) for x in lab.server.addr.split("."))
        assert sorted(x[2] for x in seen) == list(range(50))
        assert all(x[:2] == (lab.server.addr, 9000) and x[3] == 17 and x[4] == dst and x[5] == 92 for x in seen)

        s.remove_handler("read")

        @s.handler
        def rewrite(pkt):
            before = pkt.udp.payload
            pkt.udp.payload = before[:4] + b"rewritten" + before[13:]  # the same length: the receiver counts it
            assert pkt.udp.payload[4:13] == b"rewritten"

        copies = message_copies()
        r = lab.udp(50, rate=0, timeout=20, idle=0.5, keep=50)
        assert r.unique == 50 and r.received == 50
        assert all(p[4:13] == b"rewritten" for p in r.payloads)
        assert message_copies() - copies == 50  # one copy per packet: the write's
        assert wait_until(lambda: s.record.n == 100, timeout=5)
        entries = list(s.record)[50:]
        assert all(e.modified for e in entries)
        assert all(b"rewritten" not in e.head for e in entries)  # the record: the packet as it arrived

        s.remove_handler("rewrite")
        copies_kept: list = []

        @s.handler
        def snapshot(pkt):
            copies_kept.append(copy.copy(pkt))  # a copy of a packet over its message has bytes of its own

        r = lab.udp(50, rate=0, timeout=20, idle=0.5)
        assert r.unique == 50 and r.received == 50
        assert sorted(_seq(c.udp.payload) for c in copies_kept) == list(range(50))
    finally:
        s.detach()


def test_packets_no_handler_sees_are_verdicted_from_the_readers_parse(lab: Lab, queue_num: int) -> None:
    """Without a handler a packet gets its verdict and record entry from the message the reader parsed once
    (no packet object); with one, every packet reaches it again, and without it the C path takes over again."""
    s = pktlab.attach(queue_num, rule="-p udp --dport 9000", netns=lab.server)
    try:
        reader = s.source.reader
        r = lab.udp(100, rate=0, timeout=20, idle=0.5)
        assert r.unique == 100 and r.received == 100
        assert wait_until(lambda: s.record.n == 100, timeout=5), s.record.n
        assert reader.fast_packets == 100
        entries = list(s.record)
        assert len({e.id for e in entries}) == 100 and all(e.verdict == "accept" for e in entries)
        assert all(e.size == 28 + 64 and e.head[9] == 17 and e.hook == "INPUT" for e in entries)  # IPv4, UDP, 64 B

        seen: list[int] = []

        @s.handler
        def count(pkt):
            seen.append(pkt.udp.dport)

        r = lab.udp(100, rate=0, timeout=20, idle=0.5)
        assert r.received == 100 and len(seen) == 100 and reader.fast_packets == 100

        s.remove_handler("count")
        r = lab.udp(100, rate=0, timeout=20, idle=0.5)
        assert r.received == 100 and len(seen) == 100 and reader.fast_packets == 200
        assert wait_until(lambda: s.record.n == 300, timeout=5), s.record.n
    finally:
        s.detach()


def test_packets_no_handler_sees_get_their_verdicts_while_a_notebook_thread_holds_the_gil(
    lab: Lab, queue_num: int
) -> None:
    """The reader's path for packets no handler sees takes no GIL: a cell that holds it (here a C call made
    without releasing it) holds none of their verdicts up, and their record entries are there afterwards."""
    s = pktlab.attach(queue_num, rule="-p udp --dport 9000", netns=lab.server)
    hold_gil = ctypes.PyDLL(None).usleep  # a PyDLL call keeps the GIL for its whole length
    hold_gil.argtypes = [ctypes.c_uint]
    try:
        flow = lab.start_udp(50, rate=20, timeout=20, idle=1.0)  # 2.5 s of datagrams from another process
        assert wait_until(lambda: s.record.n >= 1, timeout=10)  # the sender runs
        t0 = time.monotonic_ns()
        hold_gil(1_500_000)  # 1.5 s: about 30 datagrams come meanwhile
        t1 = time.monotonic_ns()
        r = flow.wait()
        assert r.unique == 50 and r.received == 50
        assert wait_until(lambda: s.record.n == 50, timeout=5), s.record.n
        during = [e.decided_ns for e in s.record if t0 <= e.decided_ns <= t1]
        # verdicted while the GIL was held (a reader that needs it verdicts them all after t1, none during)
        assert len(during) >= 10, len(during)
        assert s.source.reader.fast_packets == 50
    finally:
        s.detach()


def test_the_record_read_while_the_reader_writes_it_without_the_gil_is_whole(lab: Lab, queue_num: int) -> None:
    """A record of 64 entries read over and over while 3,000 datagrams pass without a handler: the reader
    overwrites slots while they are read, and every entry read is one packet's, whole, in order."""
    s = pktlab.attach(queue_num, rule="-p udp --dport 9000", netns=lab.server, record_size=64)
    try:
        flow = lab.start_udp(3000, rate=0, timeout=20, idle=0.5)
        reads = 0
        while reads < 5 or (s.record.n < 3000 and reads < 100_000):
            entries = list(s.record)
            reads += 1
            assert len(entries) <= 64
            ids = [e.id for e in entries]
            assert ids == sorted(set(ids)), ids  # oldest first, each once
            for e in entries:  # the head is this packet's: its own IP length and datagram number
                assert int.from_bytes(e.head[2:4], "big") == e.size == 28 + 64, e
            seqs = [_seq(e.head[28:]) for e in entries]
            assert seqs == sorted(seqs), seqs
        r = flow.wait()
        assert r.received == 3000 and s.record.n == 3000 and s.source.reader.fast_packets == 3000
    finally:
        s.detach()


def _mac(host, ifname: str) -> str:
    out = host.run(["ip", "-o", "link", "show", "dev", ifname]).stdout
    return out.split("link/ether", 1)[1].split()[0]


def test_the_packet_object_from_the_readers_parse_says_what_the_kernel_said(router_lab: Lab, queue_num: int) -> None:
    """id, hook, the interfaces the packet came in and goes out on (named in the lab, where those indexes
    belong), the sender's MAC address and the mark, as the queue message gave them."""
    lab = router_lab
    lab.router.run(["nft", "-f", "-"], input=(
        "table ip pktlab_test_mark {\n chain pre {\n  type filter hook prerouting priority -300;\n"
        "  udp dport 9000 meta mark set 0x2a\n }\n}\n"))  # fmt: skip
    s = pktlab.attach(queue_num, rule="-p udp --dport 9000", hook="FORWARD", netns=lab.router)
    seen: list[tuple] = []
    try:

        @s.handler
        def note(pkt):
            seen.append((pkt.id, pkt.hook, pkt.indev, pkt.outdev, pkt.hw, pkt.mark))

        r = lab.udp(5, rate=0, timeout=20, idle=0.5)
        assert r.received == 5 and len(seen) == 5
    finally:
        s.detach()
        lab.router.run(["nft", "delete", "table", "ip", "pktlab_test_mark"])

    def facing(peer) -> str:  # the router's interface on the peer's /24
        net = peer.addr.rsplit(".", 1)[0] + "."
        return next(name for name, a in lab.router.addrs.items() if a.startswith(net))

    client_if = next(iter(lab.client.addrs))
    want = ("FORWARD", facing(lab.client), facing(lab.server), _mac(lab.client, client_if), 0x2A)
    assert [x[1:] for x in seen] == [want] * 5
    assert len({x[0] for x in seen}) == 5 and all(x[0] > 0 for x in seen)


def test_a_read_that_empties_the_socket_is_verdicted_without_reading_it_again(lab: Lab, queue_num: int) -> None:
    """Packets arriving one at a time: each read takes one message, fewer than it asked for, so the socket is
    empty; the verdict goes out at once and the reader waits, without a read that finds nothing in between
    (a system call on every packet's round trip), with a handler or without."""
    s = pktlab.attach(queue_num, rule="-p udp --dport 9000", netns=lab.server)
    try:
        reader = s.source.reader
        for handler in (None, lambda pkt: None):
            if handler is not None:
                s.add_handler(handler, "h")
            before, calls = reader.empty_reads, reader.calls
            r = lab.udp(30, rate=100, timeout=20, idle=0.5)  # one datagram every 10 ms
            assert r.unique == 30 and r.received == 30
            assert reader.calls - calls >= 20  # (mostly) one read per datagram
            assert reader.empty_reads == before, reader.empty_reads - before
    finally:
        s.detach()


def test_a_handler_failing_on_every_packet_keeps_each_packet_described_without_copying_it(
    lab: Lab, queue_num: int
) -> None:
    """A failure keeps its packet's summary: taken from the packet over its queue message (its first bytes), not
    from a copy of the whole packet; the text says what the packet was."""
    s = pktlab.attach(queue_num, rule="-p udp --dport 9000", netns=lab.server)
    s.say_failures = False

    def fails(pkt):
        raise ValueError("no rule")

    try:
        s.add_handler(fails, "h")
        copies = message_copies()
        r = lab.udp(20, rate=0, timeout=20, idle=0.5)
        assert r.unique == 20 and r.received == 20  # the error verdict (on_error): accept
        assert message_copies() == copies
        assert len(s.errors) == 20 and all(f.error == "ValueError: no rule" for f in s.errors)
        assert all(f.packet.startswith("<Packet #") and " INPUT udp " in f.packet and ":9000 len=92>" in f.packet
                   for f in s.errors)  # fmt: skip
    finally:
        s.detach()
