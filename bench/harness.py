"""Configurations measured in alternation, each run in a fresh process (with its own lab)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager, nullcontext
from typing import Any

import pktlab


def alternate(
    script: str, names: Iterable[str], repeats: int, show: Callable[[str, Any], str], timeout: float = 180
) -> dict[str, list[Any]]:
    """``repeats`` rounds of ``script --one NAME`` for every name; each prints its result as JSON on its last line.

    ``show(name, result)`` is the progress line written to stderr after each run.
    """
    names = list(names)
    runs: dict[str, list[Any]] = {k: [] for k in names}
    for _ in range(repeats):
        for name in names:
            out = subprocess.run(
                [sys.executable, script, "--one", name], capture_output=True, text=True, timeout=timeout, check=True
            ).stdout
            result = json.loads(out.strip().splitlines()[-1])
            runs[name].append(result)
            print(f"  {name}: {show(name, result)}", file=sys.stderr)
    return runs


def run_one_if_asked(configs: dict[str, Callable[[pktlab.Lab], Any]], topology: str = "pair") -> int | None:
    """As the child ``script --one NAME``: measure that configuration in a fresh lab, print its result as JSON.

    Returns the exit code then, None in the parent (no ``--one``).
    """
    if len(sys.argv) != 3 or sys.argv[1] != "--one":
        return None
    with pktlab.Lab(topology) as lab:
        print(json.dumps(configs[sys.argv[2]](lab)))
    return 0


@contextmanager
def iperf3_server(lab: pktlab.Lab, port: int, cpu: int | None = None) -> Iterator[None]:
    """A one-shot iperf3 server in the lab's server, listening when the block starts, reaped when it ends."""
    argv = ["iperf3", "-s", "-1", "-p", str(port), *(["-A", str(cpu)] if cpu is not None else [])]
    server = lab.server.popen(argv, stdout=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:  # until the server listens
            probe = lab.server.run(["ss", "-ltn", f"sport = :{port}"], check=False)
            if str(port) in probe.stdout:
                break
            time.sleep(0.05)
        yield
    finally:
        try:
            server.wait(10)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()


def iperf_udp64(lab: pktlab.Lab, port: int, seconds: float, window: str | None = None) -> tuple[float, float]:
    """Received datagrams per second and loss fraction of one iperf3 run of 64-byte UDP datagrams at full speed.

    From the lab's client to an iperf3 server in its server, sender pinned to the first CPU, receiver to the last.
    ``window``: the sockets' buffer size (iperf3 ``-w``, e.g. "4M"). The receiver's bounds how many datagrams
    can arrive at once while it waits for its CPU: a verdict for many delivers them together, on the reader's
    CPU, where the receiver runs too (with the system's default, a fifth of what pktlab's queue passed was
    dropped there on 2026-12-06: :func:`udp_flood` says where datagrams were lost). The sender was not held back
    by its buffer through a queue at the server's INPUT (its thread always runnable, no ``SndbufErrors``): its
    CPU, which does the queue's enqueue too, bounds it.
    """
    cpus = sorted(os.sched_getaffinity(0))
    with iperf3_server(lab, port, cpus[-1]):
        out = lab.client.run(
            [
                "iperf3", "-c", lab.server.addr, "-p", str(port), "-A", str(cpus[0]),
                "-u", "-l", "64", "-b", "0", "-t", str(seconds), "-J", *(["-w", window] if window else []),
            ],  # fmt: skip
            timeout=seconds + 30,
        ).stdout
    end = json.loads(out)["end"]["sum"]
    got = end["packets"] - end["lost_packets"]
    return got / end["seconds"], end["lost_packets"] / max(1, end["packets"])


def _udp_snmp(node: Any) -> dict[str, int]:
    """A lab host's UDP counters (``/proc/net/snmp`` in its namespace)."""
    rows = [line.split() for line in node.run(["cat", "/proc/net/snmp"]).stdout.splitlines() if line.startswith("Udp:")]
    return dict(zip(rows[0][1:], map(int, rows[1][1:]), strict=True))


def udp_flood(lab: pktlab.Lab, port: int, seconds: float, window: str | None = None,
              queue: int | None = None, meter: Callable[[], Any] | None = None) -> dict[str, Any]:  # fmt: skip
    """:func:`iperf_udp64`, and where the datagrams that did not arrive were lost.

    ``pps``: datagrams received per second; ``sent_pps``: sent per second; ``queue_dropped``: the share of the
    sent datagrams that queue ``queue`` of the server dropped (its socket to the reader full, or the queue full:
    fail-closed); ``receiver_dropped``: the share that the receiving socket dropped, its buffer full
    (``RcvbufErrors``). A verdict for many datagrams delivers them at once, on the reader's CPU, where the
    receiver runs too.  ``meter``: a context manager (:func:`cpu_meter`) around the iperf3 run alone (not the
    counters' reads), whose value the result holds as ``cpu``.
    """
    c0, s0 = _udp_snmp(lab.client), _udp_snmp(lab.server)
    with meter() if meter is not None else nullcontext() as measured:
        pps, loss = iperf_udp64(lab, port, seconds, window)
    c1, s1 = _udp_snmp(lab.client), _udp_snmp(lab.server)
    sent = max(1, c1["OutDatagrams"] - c0["OutDatagrams"])
    at_queue = 0
    if queue is not None:
        from pktlab.kernel import proc

        c = proc.queue_counters(lab.server.netns).get(queue)
        at_queue = (c.user_dropped + c.queue_dropped) if c is not None else 0
    out: dict[str, Any] = {
        "pps": pps,
        "sent_pps": pps / (1 - loss) if loss < 1 else 0.0,
        "queue_dropped": at_queue / sent,
        "receiver_dropped": (s1["RcvbufErrors"] - s0["RcvbufErrors"]) / sent,
    }
    if meter is not None:
        out["cpu"] = measured
    return out


def _cpu_jiffies() -> dict[str, list[int]]:
    """Per CPU (cpu0, cpu1, ...): user, nice, system, idle, iowait, irq, softirq, steal jiffies from /proc/stat."""
    out = {}
    with open("/proc/stat") as f:
        for line in f:
            name, *vals = line.split()
            if name.startswith("cpu") and name != "cpu":
                out[name] = [int(v) for v in vals[:8]]
    return out


def _thread_jiffies(tid: int | None = None) -> tuple[int, int]:
    """User and system jiffies of one thread of this process, or of the whole process (fields 14 and 15 of stat)."""
    with open(f"/proc/self/task/{tid}/stat" if tid else "/proc/self/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return int(fields[11]), int(fields[12])


@contextmanager
def cpu_meter(thread_prefix: str = "pktlab-queue-") -> Iterator[dict[str, Any]]:
    """What the CPUs and this process's reader threads did during the block, filled in when it ends.

    ``busy``: per CPU, the fraction of the block's time not idle (user, system, irq and softirq all count;
    steal is reported apart); ``busy_cpu_s``: CPU-seconds busy in total; ``reader_user_s``/``reader_sys_s``:
    the CPU time of the threads whose name starts with ``thread_prefix`` (the queue reader);
    ``process_user_s``/``process_sys_s``: this whole process's (every thread; not its children).
    Resolution: one jiffy (10 ms) per counter.
    """
    hz = os.sysconf("SC_CLK_TCK")
    tids = [t.native_id for t in threading.enumerate() if t.name.startswith(thread_prefix) and t.native_id]
    before, tbefore, t0 = _cpu_jiffies(), {t: _thread_jiffies(t) for t in tids}, time.monotonic()
    pbefore = _thread_jiffies()
    result: dict[str, Any] = {}
    try:
        yield result
    finally:
        after, wall, pafter = _cpu_jiffies(), time.monotonic() - t0, _thread_jiffies()
        busy, steal = {}, {}
        for cpu, vals in after.items():
            d = [a - b for a, b in zip(vals, before[cpu], strict=True)]
            busy[cpu] = (d[0] + d[1] + d[2] + d[5] + d[6]) / hz / wall
            steal[cpu] = d[7] / hz / wall
        user = sys_ = 0
        for t, (u0, s0) in tbefore.items():
            try:
                u1, s1 = _thread_jiffies(t)
            except FileNotFoundError:  # the thread ended inside the block: its time is lost to the count
                continue
            user, sys_ = user + u1 - u0, sys_ + s1 - s0
        result.update(
            wall_s=wall, busy=busy, steal=steal, busy_cpu_s=sum(busy.values()) * wall,
            reader_user_s=user / hz, reader_sys_s=sys_ / hz, reader_threads=len(tids),
            process_user_s=(pafter[0] - pbefore[0]) / hz, process_sys_s=(pafter[1] - pbefore[1]) / hz,
        )  # fmt: skip


_SPIN = "import os; os.sched_setscheduler(0, os.SCHED_IDLE, os.sched_param(0)); print(flush=True)\nwhile True: pass"


@contextmanager
def cpus_kept_awake() -> Iterator[None]:
    """A busy loop of the lowest priority (``SCHED_IDLE``) on every CPU while the block runs.

    An idle virtual CPU sleeps in the host: waking it for a packet costs 30–60 µs, more than the queue's own
    path, and varies from run to run.  With a ``SCHED_IDLE`` loop on it the CPU never sleeps, and any other
    thread that wakes takes it at once: what a round trip then adds is the readers' own work.
    """
    spinners = [subprocess.Popen([sys.executable, "-c", _SPIN], stdout=subprocess.PIPE, text=True,
                                 preexec_fn=lambda c=cpu: os.sched_setaffinity(0, {c}))  # fmt: skip
                for cpu in sorted(os.sched_getaffinity(0))]
    try:
        for p in spinners:
            p.stdout.readline()  # it runs at the lowest priority
        yield
    finally:
        for p in spinners:
            p.kill()
            p.wait()
