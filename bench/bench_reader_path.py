"""The queue reader's own time per packet, without the host's noise around it (issue 40, latency).

A ping's added round trip moves by ±10–20 µs from run to run here (an idle virtual CPU's wake-up is the
host's), more than the readers differ.  Three measures of the reader itself, each configuration in a fresh
process with its own lab:

* **read → verdict** (pair lab; PINGS pings every 5 ms through an ICMP queue at the server's INPUT, every CPU
  kept awake, ``harness.cpus_kept_awake``): ``bpftrace`` on the reading thread, from the return of the read
  that brought a packet (``recvmmsg``; bare NetfilterQueue: ``recv``) to the start of the write of its verdict,
  percentiles (µs) — (r1) bare NetfilterQueue, (r2) pktlab without a handler, (r3) a handler that returns,
  (r4) a handler that raises.
* **CPU per packet** (pair lab; 300,000 UDP datagrams of 64 bytes at a steady 100,000 per second through the
  server's INPUT queue): the reading thread's CPU time per datagram (µs) and datagrams per read — (c2) pktlab
  without a handler, (c3) a handler reading ``ip.src``, ``ip.dst`` and ``udp.dport``.
* **A failure's record** (no lab): what the dispatcher's call keeps for a handler's failure costs, µs per
  failure after the first five (``HandlerChain.failed`` on a raised ``ValueError``), (f1).

Run: `.venv/bin/python bench/bench_reader_path.py [ROUNDS]` (as root; medians of ROUNDS, default 3);
before/after: `.venv/bin/python bench/before_after.py DIR bench_reader_path.py ROUNDS CONFIG...`.
"""

from __future__ import annotations

import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import bench_failing_handler as failing  # noqa: E402
from bench_queue import BareReader, read_three  # noqa: E402
from harness import alternate, cpu_meter, cpus_kept_awake  # noqa: E402

import pktlab  # noqa: E402

PINGS = int(os.environ.get("BENCH_PINGS", "600"))
RATE = 100_000
DATAGRAMS = 300_000
PROBE = """
tracepoint:syscalls:sys_exit_recvmmsg, tracepoint:syscalls:sys_exit_recvfrom, tracepoint:syscalls:sys_exit_recvmsg
/tid == TID && args->ret > 0/ { @t = nsecs; }
tracepoint:syscalls:sys_enter_write, tracepoint:syscalls:sys_enter_sendto, tracepoint:syscalls:sys_enter_sendmsg
/tid == TID && @t/ { @us = lhist((nsecs - @t) / 100, 0, 2000, 5); delete(@t); }
"""  # tenths of a µs, in buckets of 0.5 µs


def _percentiles(text: str) -> dict[str, float]:
    rows = [(int(a) / 10, int(c)) for a, c in re.findall(r"\[(\d+), \d+\)\s+(\d+)", text)]
    total = sum(c for _, c in rows)
    out: dict[str, float] = {}  # the median first: before_after.py compares the first figure
    for q in (50, 90, 99):
        seen = 0
        for lo, c in rows:
            seen += c
            if seen >= q / 100 * total:
                out[f"p{q}_us"] = lo
                break
    out["n"] = total
    return out


def _read_to_verdict(lab: pktlab.Lab, tid: int) -> dict[str, float]:
    with tempfile.TemporaryFile("w+") as out, cpus_kept_awake():
        failing.ping(lab, 20)  # the path is warm and the reader waits
        tracer = subprocess.Popen(["bpftrace", "-e", PROBE.replace("TID", str(tid))], stdout=out,
                                  stderr=subprocess.DEVNULL)  # fmt: skip
        try:
            time.sleep(3)  # bpftrace attaches its probes
            failing.ping(lab, PINGS)
        finally:
            tracer.send_signal(2)  # prints the histogram and ends
            tracer.wait(timeout=30)
        out.seek(0)
        return _percentiles(out.read())


def verdict_bare(lab: pktlab.Lab) -> dict[str, float]:
    with BareReader(lab.server.netns, ("-p", "icmp", "--icmp-type", "echo-request")) as reader:
        reader.start_reading()
        return _read_to_verdict(lab, reader.tid)


def verdict_pktlab(handler: Any) -> Any:
    def run(lab: pktlab.Lab) -> dict[str, float]:
        s = pktlab.attach(1, rule="-p icmp --icmp-type echo-request", netns=lab.server)
        s.say_failures = False
        try:
            if handler is not None:
                s.add_handler(handler, "h")
            assert s.source.thread_id is not None
            return _read_to_verdict(lab, s.source.thread_id)
        finally:
            s.detach()

    return run


def cpu_per_packet(handler: Any) -> Any:
    def run(lab: pktlab.Lab) -> dict[str, float]:
        s = pktlab.attach(1, rule="-p udp --dport 9000", netns=lab.server, fail_open=False, max_len=1 << 16)
        try:
            if handler is not None:
                s.add_handler(handler, "h")
            reads = s.source.reader.calls
            with cpu_meter() as m:
                r = lab.udp(DATAGRAMS, rate=RATE, timeout=30, idle=0.5)
            reads = s.source.reader.calls - reads
        finally:
            s.detach()
        cpu = m["reader_user_s"] + m["reader_sys_s"]
        return {"us_per_packet": 1e6 * cpu / r.received, "per_read": r.received / reads, "received": r.received}

    return run


def failure_record(_lab: pktlab.Lab | None = None) -> dict[str, float]:
    from pktlab.pipeline.handlers import WRITTEN_OUT, HandlerChain

    pkt = pktlab.Packet(None, bytes.fromhex("4500001c0001000040117cc90a0000010a000002" "03e8003500080000"))
    chain = HandlerChain()
    h = chain.add(lambda p: None, "h")

    def fails(p: Any) -> None:
        raise ValueError(f"no rule for {p.ip.src}")

    def once(record: bool) -> None:
        try:
            fails(pkt)
        except ValueError as exc:
            if record:
                chain.failed(h, pkt, exc)

    for _ in range(WRITTEN_OUT):
        once(True)
    n = 20_000
    t0 = time.perf_counter()
    for _ in range(n):
        once(False)
    t1 = time.perf_counter()
    for _ in range(n):
        once(True)
    t2 = time.perf_counter()
    return {"us_per_failure": 1e6 * ((t2 - t1) - (t1 - t0)) / n, "raise_us": 1e6 * (t1 - t0) / n}


CONFIGS: dict[str, Any] = {
    "(r1) read to verdict: bare NetfilterQueue": verdict_bare,
    "(r2) read to verdict: pktlab, no handler": verdict_pktlab(None),
    "(r3) read to verdict: pktlab, handler returns": verdict_pktlab(failing.passes),
    "(r4) read to verdict: pktlab, handler raises": verdict_pktlab(failing.fails),
    "(c2) CPU per packet: pktlab, no handler": cpu_per_packet(None),
    "(c3) CPU per packet: pktlab, handler reads 3 fields": cpu_per_packet(read_three),
    "(f1) a failure's record": failure_record,
}


def main(argv: list[str]) -> int:
    rounds = int(argv[0]) if argv and argv[0].isdigit() else 3
    runs = alternate(__file__, CONFIGS, rounds, lambda _, r: json.dumps(r), timeout=300)
    print(f"\nmedians of {rounds} rounds\n\n| configuration | median |\n|---|---|")
    for name, results in runs.items():
        med = {k: statistics.median(r[k] for r in results) for k in results[0]}
        print(f"| {name} | " + ", ".join(f"{k} {v:,.2f}" for k, v in med.items()) + " |")
    return 0


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--one":
        if sys.argv[2].startswith("(f1)"):
            print(json.dumps(failure_record()))
            sys.exit(0)
        with pktlab.Lab("pair") as lab:
            print(json.dumps(CONFIGS[sys.argv[2]](lab)))
        sys.exit(0)
    sys.exit(main(sys.argv[1:]))
