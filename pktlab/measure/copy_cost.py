"""What a packet's trip through the queue costs the machine, by how much of it is copied: ``pktlab.copy_cost``.

The experiment of the in-situ filtering thesis (its Tables 1-3), on a lab: a
session on the server's INPUT queue whose handler reads one byte of each
datagram (or rewrites it and returns the packet).  The figure is what the
queue's reader spends per packet, in CPU time: receiving the queue message (the
copy of the packet, as much of it as the copy range takes, from the kernel into
the notebook), the handler's read or write, the verdict, and the packet's way on
through the server's stack to its socket, which runs in the reader's verdict.

Method (a drain): the session is paused; this process sends ``count``
datagrams from a socket in the lab's client to a socket in the server that is
read only at the end; they wait in the kernel's queue (their messages built and
copied by the kernel as they were queued, before the clock starts).  Then the
reader is resumed, and this process's CPU time (``getrusage``: nanoseconds, the
host's steal time not counted) from then until the reader has given the last
verdict, divided by ``count``, is one run's figure; no other process is woken
(the receiving socket is read afterwards, and every datagram must be there).
``repeats`` runs, each with a session of its own, give the mean and its 95 %
confidence interval (Student's t).  CPU cycles are the microseconds times the
processor's nominal clock (its model name's "@ x GHz", else the kernel's "cpu MHz").
"""

from __future__ import annotations

import math
import re
import resource
import socket
import statistics
import time
from dataclasses import dataclass
from typing import Any

from ..errors import LabError
from ..kernel import netns
from ..lab.traffic import UDP_SEGMENT

# Student's t at 97.5 % for n-1 degrees of freedom (n = 2..30): a 95 % interval of a mean
_T975 = [
    12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179, 2.160, 2.145, 2.131,
    2.120, 2.110, 2.101, 2.093, 2.086, 2.080, 2.074, 2.069, 2.064, 2.060, 2.056, 2.052, 2.048, 2.045,
]


def cpu_seconds() -> float:
    """CPU time of this process (user and system, all its threads), in seconds."""
    me = resource.getrusage(resource.RUSAGE_SELF)
    return me.ru_utime + me.ru_stime


def clock_ghz() -> float:
    """The processor's nominal clock in GHz (for cycles from times)."""
    with open("/proc/cpuinfo") as f:
        info = f.read()
    m = re.search(r"model name\s*:.*@\s*([0-9.]+)\s*GHz", info)
    if m:
        return float(m.group(1))
    mhz = [float(x) for x in re.findall(r"cpu MHz\s*:\s*([0-9.]+)", info)]
    return statistics.mean(mhz) / 1000 if mhz else float("nan")


def mean_ci95(values: list[float]) -> tuple[float, float]:
    """(mean, half-width of its 95 % confidence interval) of at least two values."""
    if len(values) < 2:
        raise ValueError("a confidence interval needs at least two runs")
    t = _T975[min(len(values), 30) - 2] if len(values) <= 30 else 1.96
    return statistics.mean(values), t * statistics.stdev(values) / math.sqrt(len(values))


@dataclass(frozen=True)
class Cost:
    """What the queue's reader spent per packet, over ``repeats`` runs."""

    label: str
    size: int  # datagram payload bytes (a GSO send: the whole send)
    us: float  # mean microseconds per packet
    ci_us: float  # half-width of its 95 % confidence interval
    cycles: float  # the same in CPU cycles (nominal clock)
    ci_cycles: float
    runs: tuple[float, ...]  # each run's µs per packet
    packets: int  # packets per run through the queue (a GSO packet counts once)

    def row(self) -> dict[str, Any]:
        return {"configuration": self.label, "bytes": self.size, "µs per packet": round(self.us, 2),
                "± (95 %)": round(self.ci_us, 2), "CPU cycles": round(self.cycles), "± cycles": round(self.ci_cycles),
                "packets per run": self.packets}  # fmt: skip


PORT = 9000
SO_RCVBUFFORCE = 33  # <asm-generic/socket.h>: root may exceed rmem_max


def _sockets(lab: Any, segment: int) -> tuple[socket.socket, socket.socket]:
    """A sending socket in the lab's client (GSO sends of ``segment`` bytes each if set), a parked one in the server."""

    return netns.call_in(lab.client.netns, _sender, segment), netns.call_in(lab.server.netns, _parked)


def _sender(segment: int) -> socket.socket:
    tx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    tx.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4 << 20)
    if segment:
        tx.setsockopt(socket.SOL_UDP, UDP_SEGMENT, segment)
    return tx


def _parked() -> socket.socket:
    rx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        rx.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, 1 << 30)
    except PermissionError:  # an ordinary user (user-namespace mode): as large as net.core.rmem_max allows
        rx.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 30)
    rx.bind(("0.0.0.0", PORT))
    rx.setblocking(False)
    return rx


def _check_room(room: int) -> None:
    """Refuse at once when the paused packets cannot wait in socket buffers this process may ask for.

    Only root may force a socket buffer beyond ``net.core.rmem_max`` (SO_RCVBUFFORCE checks the
    initial namespace); an ordinary user's sockets stop at twice that.
    """
    from ..kernel import privilege

    if privilege.current().name == "root":
        return
    with open("/proc/sys/net/core/rmem_max") as f:
        most = 2 * int(f.read())
    if most < room:
        raise LabError(
            f"queue_cost holds its packets in socket buffers of {room:,} bytes, more than an ordinary user may ask "
            f"for ({most:,}, twice net.core.rmem_max); measure as root, or have root raise it "
            f"(sysctl -w net.core.rmem_max={room})"
        )


def _parked_count(rx: socket.socket) -> int:
    got = 0
    while True:
        try:
            rx.recv(65536)
        except BlockingIOError:
            return got
        got += 1


def queue_cost(
    lab: Any,
    *,
    size: int = 1024,
    position: int = -1,
    copy: str | None = "full",
    copy_range: int | None = None,
    modify: bool = False,
    segment: int = 0,
    count: int = 5000,
    repeats: int = 5,
    label: str | None = None,
) -> Cost:
    """What the reader of a session on ``lab``'s server spends per datagram; see the module's text.

    The handler reads the byte at ``position`` of the UDP payload (-1: the packet's last), or
    with ``modify`` flips it and returns the packet (a verdict carrying the new payload).
    ``copy`` / ``copy_range`` are the session's options; ``segment`` makes each send one GSO
    packet of ``size`` bytes (``UDP_SEGMENT``), which goes through the queue whole.
    """
    from ..pipeline.session import attach

    if repeats < 2:
        raise ValueError("repeats must be at least 2 (a confidence interval needs two runs)")
    per_packet: list[float] = []
    expected = count * (-(-size // segment) if segment else 1)
    # room for every message while paused: the kernel queue and the socket they wait in
    room = min(0x7FFFFFFF, max(8 << 20, count * (min(size + 28, copy_range or 65535) + 512) * 2))
    _check_room(room)
    for _ in range(repeats):
        tx, rx = _sockets(lab, segment)
        s = attach(1, rule=f"-p udp --dport {PORT}", netns=lab.server, copy=copy, copy_range=copy_range,
                   fail_open=False, deadline=None, max_len=count + 64, sock_bytes=room)  # fmt: skip
        try:

            @s.handler
            def one_byte(pkt):  # type: ignore[no-untyped-def]
                at = pkt.udp.payload_offset + position if position >= 0 else len(pkt) - 1
                if modify:
                    pkt.raw[at] = pkt.raw[at] ^ 0xFF
                    return pkt.accept()
                pkt.raw[at]  # noqa: B018 - the read is what is measured
                return None

            s.pause()
            data, dst = bytes(size), (lab.server.addr, PORT)
            for i in range(count):
                tx.sendto(data, dst)
                if i % 64 == 63:
                    time.sleep(0.0005)  # the sender's socket buffer drains into the queue
            deadline = time.monotonic() + 30
            while (k := s.kernel_counters()) is not None and k.queue_total < count and time.monotonic() < deadline:
                time.sleep(0.01)
            if k is None or k.queue_total < count:
                raise LabError(f"only {k.queue_total if k else 0} of {count} packets waited in the queue")
            before = cpu_seconds()
            s.resume()
            while s.record.n < count and time.monotonic() < deadline:
                time.sleep(0.002)
            spent = cpu_seconds() - before
            if s.errors:
                raise LabError(f"the measuring handler failed: {s.errors[0]}")
            if s.record.n < count:
                raise LabError(f"the reader gave {s.record.n} of {count} verdicts within 30 s")
        finally:
            s.detach()
            tx.close()
        got = _parked_count(rx)
        rx.close()
        if got != expected:
            raise LabError(f"{got} of {expected} datagrams reached the receiving socket; every one must")
        per_packet.append(spent / count * 1e6)
    us, ci = mean_ci95(per_packet)
    ghz = clock_ghz()
    return Cost(label or f"{size} B", size, us, ci, us * 1e3 * ghz, ci * 1e3 * ghz, tuple(per_packet), count)
