"""Packets per second through NFQUEUE: bare NetfilterQueue vs pktlab, same run.

Method (drain): the reader is bound but not reading; the lab client sends N
64-byte UDP datagrams, which all wait in the kernel queue (checked: nothing
dropped); then the reader starts, alone on its own CPU, and the time until it
has verdicted all N gives its packets/s.  The sender is done before the clock
starts, so the figure is the reader's own capacity, not a share of two cores.
The delivered datagrams wait, unread, in a large socket buffer in the server
namespace and are counted (and checked in order) after the clock stops
(BENCH_RECEIVER=process: a receiving process reads them during the drain
instead, the method before 2026-11-24, whose wake-up interrupts made single
runs bimodal; see BENCHMARKS.md).

Configurations, measured REPEATS times in alternation, median reported:
  (a) bare: NetfilterQueue callback that only accepts (plus a counter);
  (b) pktlab with no handler;
  (c) pktlab with one handler that reads the UDP destination port;
  (b1), (c1) the same with batch verdicts off (one verdict message per packet,
  as the bare callback sends), to show what the batching buys;
  (c2) as (c) with the hung-handler watchdog off (deadline=None), to show what
  the deadline costs;
  (d) a handler reading ip.src, ip.dst and udp.dport through the views, (e) the
  same through scapy (deadline off: scapy's first parse imports a lot), (f) a
  handler rewriting ip.dst, so every packet is rebuilt with its checksums.
BENCH_CONFIGS=c,c2 measures only those (and the baseline).
The bare reader is NetfilterQueue's own loop (poll + run(block=False), one
recv per packet); pktlab's reader polls the same socket and reads up to 16
messages per recvmmsg call.  Each measurement runs in a fresh process with its
own lab.  Run: `make bench` (as root).
"""

from __future__ import annotations

import json
import os
import select
import socket
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass

import pktlab
from pktlab.kernel import netns, rules
from pktlab.kernel import proc as kernel

N = int(os.environ.get("BENCH_PACKETS", "65000"))  # the kernel held at most 65,536 here
REPEATS = int(os.environ.get("BENCH_REPEATS", "7"))
QUEUE = 1
PORT = 9000
SO_RCVBUFFORCE = 33  # <asm-generic/socket.h>; Python does not name it
MAX_LEN = 1 << 18
SOCK_BYTES = 512 << 20
CPUS = sorted(os.sched_getaffinity(0))
# "parked" (default): the datagrams wait in a socket nobody reads until the clock stops;
# "process": a receiving process reads them during the drain (the method before 2026-11-24)
RECEIVER = os.environ.get("BENCH_RECEIVER", "parked")
if RECEIVER not in ("parked", "process"):
    sys.exit(f"BENCH_RECEIVER={RECEIVER!r}: use 'parked' or 'process'")


@dataclass
class Result:
    pps: float  # packets the reader verdicted per second while draining the backlog
    cpu_us: float  # reader thread CPU (user + kernel) per packet
    queued: int  # packets waiting in the kernel when the reader started
    received: int  # datagrams the receiver got


def cpu_ns(tid: int) -> int:
    """CPU time a thread has used so far (kernel + user), from its schedstat."""
    with open(f"/proc/{os.getpid()}/task/{tid}/schedstat") as f:
        return int(f.read().split()[0])


class BareReader:
    """NetfilterQueue with an accept-only callback, in the lab namespace, reading once started."""

    def __init__(
        self, ns: str, match: tuple[str, ...] = ("-p", "udp", "--dport", "9000"), hook: str = "INPUT", gso: bool = False
    ) -> None:
        self.ns = ns
        self.match = match
        self.hook = hook
        self.gso = gso  # NFQA_CFG_F_GSO on its queue (NetfilterQueue's API cannot set it; pktlab's configure_queue)
        self.count = [0]
        self._stop = False
        self._ready = threading.Event()
        self._go = threading.Event()
        self._t = threading.Thread(target=self._run, daemon=True)
        self.rules = rules.RuleSet(rules.make_tag("bench-bare"), ns)

    def _run(self) -> None:
        from netfilterqueue import NetfilterQueue

        netns.enter(self.ns)
        count = self.count

        def cb(p) -> None:
            p.accept()
            count[0] += 1

        q = NetfilterQueue()
        q.bind(QUEUE, cb, max_len=MAX_LEN, sock_len=SOCK_BYTES)
        if self.gso:
            from pktlab.kernel._reader import configure_queue

            configure_queue(q, 65535, False, True)
        self._ready.set()
        self._go.wait()
        poller = select.poll()
        poller.register(q.get_fd(), select.POLLIN)
        while not self._stop:
            poller.poll(100)
            q.run(block=False)
        q.unbind()

    @property
    def tid(self) -> int:
        assert self._t.native_id is not None
        return self._t.native_id

    def start_reading(self) -> None:
        self._go.set()

    def __enter__(self) -> BareReader:
        self._t.start()
        self._ready.wait(5)
        self.rules.install([rules.QueueRule(QUEUE, self.hook, self.match)])
        return self

    def __exit__(self, *exc: object) -> None:
        self.rules.remove()
        self._stop = True
        self._go.set()
        self._t.join(5)


def parked_socket(lab: pktlab.Lab) -> socket.socket:
    """A UDP socket on the server's port 9000 that nobody waits on during the drain.

    A receiving process asleep in recv() would be woken (an interrupt to the
    other CPU) for many of the datagrams the reader's verdicts deliver, and would
    free their buffers from the other CPU (more interrupts back): both depend on
    how the two CPUs happen to interleave, which made single runs fall near
    320 k or 385 k pkt/s.  Parked in a large socket buffer, the datagrams are
    counted after the clock stops.
    """

    def make() -> socket.socket:
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sock.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, 1 << 30)
        sock.bind(("0.0.0.0", PORT))
        return sock

    return netns.call_in(lab.server.netns, make)


def count_parked(sock: socket.socket, expected: int) -> int:
    """Read every datagram parked in ``sock``; check they are the sender's, in order."""
    sock.setblocking(False)
    got = 0
    try:
        while True:
            data = sock.recv(2048)
            if len(data) != 64 - 28 or int.from_bytes(data[:4], "big") != got:
                raise RuntimeError(f"datagram {got} arrived wrong: {data[:8].hex()} ({len(data)} bytes)")
            got += 1
    except BlockingIOError:
        pass
    if got != expected:
        raise RuntimeError(f"{got} datagrams arrived, {expected} expected")
    return got


def wait_queued(lab: pktlab.Lab) -> int:
    """How many packets wait in the kernel queue, once all N are there (or after 5 s)."""
    deadline = time.monotonic() + 5
    waiting = 0
    while time.monotonic() < deadline:
        c = kernel.queue_counters(lab.server.netns).get(QUEUE)
        waiting = c.queue_total if c else 0
        if waiting >= N:
            break
        time.sleep(0.05)
    return waiting


def timed_drain(
    waiting: int, start: Callable[[], None], counter: Callable[[], int], tid: int
) -> tuple[float, float, int]:
    """Start the reader and time it until it has verdicted ``waiting`` packets: (pkt/s, CPU µs/pkt, done)."""
    c0, u0, t0 = counter(), cpu_ns(tid), time.perf_counter()
    start()
    end = time.monotonic() + 30
    while counter() - c0 < waiting and time.monotonic() < end:
        time.sleep(0.002)  # coarse on purpose: each look takes the GIL from the reader
    t1, u1 = time.perf_counter(), cpu_ns(tid)
    done = counter() - c0
    return done / (t1 - t0), (u1 - u0) / max(done, 1) / 1000.0, done


def pin(tid: int, others: list[int]) -> None:
    """The reader alone on the last CPU; this process's other threads and ``others`` elsewhere."""
    if len(CPUS) > 1:
        os.sched_setaffinity(tid, {CPUS[-1]})
        for pid in others:
            os.sched_setaffinity(pid, set(CPUS[:-1]))
        os.sched_setaffinity(0, set(CPUS[:-1]))


def drain_parked(lab: pktlab.Lab, start: Callable[[], None], counter: Callable[[], int], tid: int) -> Result:
    with parked_socket(lab) as sock:
        send = lab.client.popen(
            [sys.executable, "-m", "pktlab.lab.traffic", "udp-send", "--dst", lab.server.addr, "--port", str(PORT),
             "--count", str(N), "--size", str(64 - 28), "--rate", "0", "--timeout", "30"]
        )
        out, err = send.communicate(timeout=60)
        if send.returncode != 0:
            raise RuntimeError(f"sender failed: {err.strip()}")
        waiting = wait_queued(lab)
        pin(tid, [])
        pps, cpu, done = timed_drain(waiting, start, counter, tid)
        time.sleep(0.05)  # the last batch verdict
        received = count_parked(sock, N)
    return Result(pps, cpu, waiting, received)


def drain_receiver(lab: pktlab.Lab, start: Callable[[], None], counter: Callable[[], int], tid: int) -> Result:
    """The earlier method: a receiving process in the server namespace reads while the reader drains."""
    flow = lab.start_udp(N, size=64 - 28, rate=0, timeout=30, idle=1.0)
    flow._sender.wait(30)
    waiting = wait_queued(lab)
    pin(tid, [flow._receiver.pid])
    pps, cpu, _ = timed_drain(waiting, start, counter, tid)
    r = flow.wait()
    return Result(pps, cpu, waiting, r.received)


def drain(lab: pktlab.Lab, start: Callable[[], None], counter: Callable[[], int], tid: int) -> Result:
    if RECEIVER == "process":
        return drain_receiver(lab, start, counter, tid)
    return drain_parked(lab, start, counter, tid)


def run_bare(lab: pktlab.Lab) -> Result:
    with BareReader(lab.server.netns) as b:
        return drain(lab, b.start_reading, lambda: b.count[0], b.tid)


def read_dport(pkt):
    pkt.udp.dport  # noqa: B018 - the read is the point
    return None


def read_three(pkt):
    pkt.ip.src, pkt.ip.dst, pkt.udp.dport  # noqa: B018
    return None


def read_three_scapy(pkt):
    from scapy.layers.inet import IP, UDP

    p = IP(bytes(pkt))
    p.src, p.dst, p[UDP].dport  # noqa: B018
    return None


def rewrite_dst(pkt):
    pkt.ip.dst = pkt.ip.dst  # a real write: the packet goes out rebuilt, checksums recomputed
    return None


def run_pktlab(
    lab: pktlab.Lab,
    handler: Callable[[pktlab.Packet], object] | None,
    batch: int = 64,
    deadline: float | None = 0.05,
) -> Result:
    s = pktlab.attach(
        QUEUE,
        deadline=deadline,
        rule="-p udp --dport 9000",
        netns=lab.server,
        batch=batch,
        max_len=MAX_LEN,
        sock_bytes=SOCK_BYTES,
        record_size=1 << 16,
    )
    s.pause()
    if handler is not None:
        s.add_handler(handler)

    try:
        assert s.source.thread_id is not None
        return drain(lab, s.resume, lambda: s.record.n, s.source.thread_id)
    finally:
        s.detach()


CONFIGS: dict[str, Callable[[pktlab.Lab], Result]] = {
    "(a) bare NetfilterQueue accept": run_bare,
    "(b) pktlab, no handler": lambda lab: run_pktlab(lab, None),
    "(c) pktlab, handler reads udp.dport": lambda lab: run_pktlab(lab, read_dport),
    "(b1) as (b), batch verdicts off": lambda lab: run_pktlab(lab, None, batch=0),
    "(c1) as (c), batch verdicts off": lambda lab: run_pktlab(lab, read_dport, batch=0),
    "(c2) as (c), hung-handler watchdog off": lambda lab: run_pktlab(lab, read_dport, deadline=None),
    "(d) handler reads ip.src, ip.dst, udp.dport": lambda lab: run_pktlab(lab, read_three),
    "(e) as (d) through scapy.IP(bytes(pkt))": lambda lab: run_pktlab(lab, read_three_scapy, deadline=None),
    "(f) handler rewrites ip.dst (checksums fixed)": lambda lab: run_pktlab(lab, rewrite_dst),
}


def run_one(name: str) -> int:
    """Measure one configuration in this (fresh) process and print the result as JSON."""
    with pktlab.Lab() as lab:
        print(json.dumps(asdict(CONFIGS[name](lab))))
    return 0


def main() -> int:
    if len(sys.argv) == 3 and sys.argv[1] == "--one":
        return run_one(sys.argv[2])
    # every measurement in a fresh process, configurations alternating: no state carries over
    only = [x.strip() for x in os.environ.get("BENCH_CONFIGS", "").split(",") if x.strip()]
    names = [k for k in CONFIGS if k.startswith("(a)") or not only or any(k.startswith(f"({o})") for o in only)]
    results: dict[str, list[Result]] = {k: [] for k in names}
    for _ in range(REPEATS):
        for name in names:
            out = subprocess.run([sys.executable, __file__, "--one", name], capture_output=True, text=True, check=True)
            results[name].append(Result(**json.loads(out.stdout.strip().splitlines()[-1])))
    base = results["(a) bare NetfilterQueue accept"]
    base_pps = statistics.median(r.pps for r in base)
    receiver = "datagrams parked in an unread socket" if RECEIVER == "parked" else "a receiving process reading"
    print(f"64-byte UDP, NFQUEUE {QUEUE}, drain of {N:,} queued packets ({receiver}), median of {REPEATS}, ", end="")
    print(f"{len(CPUS)} CPUs (reader pinned alone)")
    print()
    print(
        "| configuration | reader pkt/s | ratio to (a) | reader CPU µs/pkt | runs (pkt/s) "
        "| queued / received (last run) |"
    )
    print("|---|---|---|---|---|---|")
    for name, rs in results.items():
        pps = statistics.median(r.pps for r in rs)
        cpu = statistics.median(r.cpu_us for r in rs)
        runs = ", ".join(f"{r.pps:,.0f}" for r in rs)
        last = rs[-1]
        tail = f"{last.queued:,} / {last.received:,}"
        print(f"| {name} | {pps:,.0f} | {pps / base_pps:.1%} | {cpu:.2f} | {runs} | {tail} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
