"""The verdict writer's thread (pipeline/_writer.pyx) on a socket pair: order, the fallback verdict, its end.

The live queue's use of it (large verdicts of rewritten GSO packets) is tested in
tests/integration/test_tcp_rewrite.py; here what it promises, whatever the file descriptor."""

from __future__ import annotations

import errno
import os
import socket
import threading

from pktlab.pipeline._writer import VerdictWriter


def writer_threads() -> int:
    names = []
    for tid in os.listdir("/proc/self/task"):
        try:
            with open(f"/proc/self/task/{tid}/comm") as f:
                names.append(f.read().strip())
        except FileNotFoundError:
            pass  # a thread that ended meanwhile
    return names.count("pktlab-writer")


def test_writes_arrive_whole_and_in_the_order_given() -> None:
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    before = writer_threads()
    w = VerdictWriter(a.fileno())
    sizes = [32, 65536, 100, 4096, 70000] * 40  # more than its slots: the one who writes waits for room
    messages = [bytes([i % 251]) * n for i, n in enumerate(sizes)]

    def give() -> None:
        for m in messages:
            w.write(m)

    t = threading.Thread(target=give)
    t.start()
    got = [b.recv(1 << 17) for _ in messages]
    t.join()
    w.wait_written()
    assert got == messages
    assert w.writes == len(messages) and w.failures == 0 and w.pending == 0
    assert writer_threads() == before + 1
    w.finish()
    assert writer_threads() == before  # its thread ended
    try:
        w.write(b"late")
        raise AssertionError("a write after finish() was taken")
    except OSError as exc:
        assert exc.errno == errno.EBADF
    a.close()
    b.close()


def test_a_write_that_fails_is_followed_by_its_fallback_verdict() -> None:
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
    a.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)  # a 64 KiB datagram cannot be sent: EMSGSIZE
    w = VerdictWriter(a.fileno())
    fallback = bytes(range(32))
    w.write(b"x" * 65536, fallback)
    w.write(b"next")
    w.wait_written()
    b.settimeout(5)
    assert b.recv(1 << 17) == fallback  # the packet still got a verdict
    assert b.recv(1 << 17) == b"next"
    assert w.failures == 1 and w.writes == 2
    w.finish()
    a.close()
    b.close()


def test_a_payload_written_where_it_lies_goes_in_order_and_cannot_be_resized_until_written() -> None:
    """write_view: the header copied, the payload read from the caller's bytearray (padded to 4 bytes), in order
    with copied writes; while it waits, the bytearray cannot change size (its buffer is exported), and once
    written and released it can."""
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    w = VerdictWriter(a.fileno())
    filler = [bytes([i]) * 100_000 for i in range(4)]  # more than the socket takes: the thread waits in write
    for m in filler:
        w.write(m)
    payload = bytearray(b"p" * 65_533)
    w.write_view(b"HEAD", payload)
    w.write(b"after")
    assert w.pending >= 2  # the view and the write after it wait behind the filler
    try:
        payload.extend(b"x")
        raise AssertionError("a payload waiting to be written was resized")
    except BufferError:
        pass
    got = [b.recv(1 << 18) for _ in range(len(filler) + 2)]
    assert got[: len(filler)] == filler
    assert got[len(filler)] == b"HEAD" + b"p" * 65_533 + b"\0" * 3
    assert got[-1] == b"after"
    w.finish()  # releases what was written
    payload.extend(b"x")  # its own again
    assert w.writes == len(filler) + 2 and w.failures == 0
    a.close()
    b.close()


def test_a_writer_never_written_to_starts_no_thread() -> None:
    before = writer_threads()
    a, b = socket.socketpair()
    w = VerdictWriter(a.fileno())
    assert writer_threads() == before
    w.finish()
    a.close()
    b.close()
