"""The packet path at the kernel's pace (issue 40): a UDP flood, TCP with every GSO packet grown, and latency.

Three measures, each configuration in a fresh process with its own lab, alternated ROUNDS times; medians:

* **UDP 64 B flood** (pair lab; iperf3 at full speed, sender pinned to the first CPU, receiver and queue
  reader to the last: the reader shares its CPU with the receiving socket): datagrams/s received through
  the server's INPUT queue (fail-closed: what arrives went through it) — (u0) no queue, (u1) bare
  NetfilterQueue (its own loop, an accept-only callback), (u2) pktlab without a handler, (u3) pktlab
  with a handler reading ``ip.src``, ``ip.dst`` and ``udp.dport``, (u4) a handler that returns None (what a
  Python handler costs before it reads anything); with the rate sent, the reader's CPU time per datagram, and
  where the rest was lost (the queue's drops, the receiving socket's, ``harness.udp_flood``).
  ``BENCH_WINDOW=4M``: iperf3's socket buffers (``-w``) that size.
* **TCP (GSO)** (router lab; iperf3 through the router's FORWARD queue, GSO packets whole): Gbit/s
  received — (t1) a handler that reads the TCP header and accepts, (t2) a handler that grows every data
  packet by 2 bytes (sequence adjustment on every packet of the stream and every ACK back), (t3) a handler that
  rewrites every data packet's TTL: the cheapest rewrite, whose verdict still carries the whole packet, which the
  kernel copies in, makes linear and sends on without a checksum offload (``nfqnl_mangle``) — what any rewrite of
  a GSO packet costs, before sequence adjustment and the handler's own copies: (t2) against it says how much of
  the rest is pktlab's.
* **Latency** (pair lab; ping every 5 ms, PINGS of them, through an ICMP queue at the server's INPUT):
  the round-trip time added over (l0) no queue, average and 99th percentile — (l1) bare NetfilterQueue,
  (l2) pktlab without a handler, (l3) a handler that returns None, (l4) a handler that raises on every
  packet; and while a thread of the process computes in Python (a notebook cell's loop: it holds the GIL
  but for the interpreter's switch interval), (l5) pktlab without a handler, (l6) a handler that returns.
  The same with every CPU kept from sleeping by a ``SCHED_IDLE`` busy loop (``harness.cpus_kept_awake``: an
  idle virtual CPU's wake-up costs 30–60 µs in the host and varies more than the readers differ), (w0)–(w4):
  the readers' own added time.

``--before DIR``: every configuration is also measured with the pktlab of the checkout ``DIR`` (built in
place), alternated with this one's in the same run: the before/after table.  ``BENCH_CONFIGS=u,l,w`` runs
only those measures.  ``--profile``: where the time of the UDP flood goes, by CPU, process and binary
(``perf record`` on every CPU during one run of (u2) and one of (u3); ``BENCH_PROFILE=(u3),(t2)`` picks the
configurations, ``BENCH_PROFILE_SORT=comm,sym`` the report's sort keys).

Run: `.venv/bin/python bench/bench_packet_path.py [ROUNDS] [--before DIR] [--profile]` (as root; default 3 rounds).
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import bench_failing_handler as failing  # noqa: E402
import bench_tcp_rewrite as tcp  # noqa: E402
from before_after import measure  # noqa: E402
from bench_queue import BareReader, read_three  # noqa: E402
from harness import cpu_meter, cpus_kept_awake, udp_flood  # noqa: E402

import pktlab  # noqa: E402

SECONDS = float(os.environ.get("BENCH_SECONDS", "3"))
PINGS = int(os.environ.get("BENCH_PINGS", "1000"))
UDP_PORT = 5201
CPUS = sorted(os.sched_getaffinity(0))
WINDOW = os.environ.get("BENCH_WINDOW") or None  # iperf3 -w for the UDP flood (default: the system's)


# -- UDP flood -------------------------------------------------------------------------------------
def _pin(tid: int | None) -> None:
    if tid is not None:
        os.sched_setaffinity(tid, {CPUS[-1]})  # beside the receiving iperf3


def udp_no_queue(lab: pktlab.Lab) -> dict[str, float]:
    return udp_flood(lab, UDP_PORT, SECONDS, WINDOW)


def udp_bare(lab: pktlab.Lab) -> dict[str, float]:
    with BareReader(lab.server.netns, ("-p", "udp", "--dport", str(UDP_PORT))) as reader:
        _pin(reader.tid)
        reader.start_reading()
        return udp_flood(lab, UDP_PORT, SECONDS, WINDOW, queue=1)


def _udp_pktlab(lab: pktlab.Lab, handler: Callable | None) -> dict[str, float]:
    s = pktlab.attach(1, rule=f"-p udp --dport {UDP_PORT}", netns=lab.server, bypass=False, fail_open=False,
                      max_len=1 << 16)  # fmt: skip
    try:
        if handler is not None:
            s.add_handler(handler, "h")
        _pin(s.source.thread_id)
        n0 = s.status().counters["packets"]
        with cpu_meter() as cpu:
            flood = udp_flood(lab, UDP_PORT, SECONDS, WINDOW, queue=1)
        packets = s.status().counters["packets"] - n0
        assert s.record.n > 0 and not s.errors
        flood["reader_us"] = (cpu["reader_user_s"] + cpu["reader_sys_s"]) * 1e6 / max(1, packets)
        return flood
    finally:
        s.detach()


# -- TCP (GSO): bench_tcp_rewrite's iperf3 run and handlers, the queue bound with gso=True ----------------------
def _tcp(lab: pktlab.Lab, handler: Callable) -> dict[str, float]:
    """Gbit/s; the reader thread's CPU time per packet (µs: what the stream waits for, as the reader is never idle
    while every GSO packet is grown); how many packets got the error verdict (a retransmission cut differently
    from the first time and grown at a new place cannot be made consistent: pktlab refuses that rewrite)."""
    s = pktlab.attach(1, rule="-p tcp", hook="FORWARD", netns=lab.router, deadline=None, max_len=1 << 16,
                      gso=True)  # fmt: skip
    s.say_failures = False
    try:
        s.add_handler(handler, "h")
        n0 = s.status().counters["packets"]
        with cpu_meter() as cpu:
            gbps = tcp.iperf(lab) / 1e9
        packets = s.status().counters["packets"] - n0
        reader_us = (cpu["reader_user_s"] + cpu["reader_sys_s"]) * 1e6 / max(1, packets)
        return {"gbps": gbps, "reader_us": reader_us, "errors": s.status().counters["errors"]}
    finally:
        s.detach()


# -- latency: bench_failing_handler's pings and session, PINGS of them ------------------------------------------
def lat_bare(lab: pktlab.Lab) -> dict[str, Any]:
    with BareReader(lab.server.netns, ("-p", "icmp", "--icmp-type", "echo-request")) as reader:
        reader.start_reading()
        return failing.summary(failing.ping(lab, PINGS))


def awake(fn: Callable[..., dict[str, Any]], *args: Any) -> dict[str, Any]:
    """``fn(*args)`` with every CPU kept from sleeping (``harness.cpus_kept_awake``): the readers' own added time,
    without the host's cost of waking an idle virtual CPU."""
    with cpus_kept_awake():
        return fn(*args)


def lat_computing(lab: pktlab.Lab, handler: Callable | None) -> dict[str, Any]:
    """The pings while a thread of this process runs a Python loop (a notebook cell computing)."""
    stop = threading.Event()

    def compute() -> None:
        n = 0
        while not stop.is_set():
            n += 1

    t = threading.Thread(target=compute, daemon=True)
    t.start()
    try:
        return failing.through(lab, handler, PINGS)
    finally:
        stop.set()
        t.join()


CONFIGS: dict[str, tuple[str, Callable[[pktlab.Lab], Any]]] = {
    "(u0) UDP: no queue": ("pair", udp_no_queue),
    "(u1) UDP: bare NetfilterQueue": ("pair", udp_bare),
    "(u2) UDP: pktlab, no handler": ("pair", lambda lab: _udp_pktlab(lab, None)),
    "(u3) UDP: pktlab, handler reads 3 fields": ("pair", lambda lab: _udp_pktlab(lab, read_three)),
    "(u4) UDP: pktlab, handler returns": ("pair", lambda lab: _udp_pktlab(lab, failing.passes)),
    "(t1) TCP: handler reads the header and accepts": ("router", lambda lab: _tcp(lab, tcp.read_and_accept)),
    "(t2) TCP: handler grows every GSO packet by 2 bytes": ("router", lambda lab: _tcp(lab, tcp.grow)),
    "(t3) TCP: handler rewrites every GSO packet's TTL": ("router", lambda lab: _tcp(lab, tcp.rewrite_ttl)),
    "(l0) latency: no queue": ("pair", lambda lab: failing.no_queue(lab, PINGS)),
    "(l1) latency: bare NetfilterQueue": ("pair", lat_bare),
    "(l2) latency: pktlab, no handler": ("pair", lambda lab: failing.through(lab, None, PINGS)),
    "(l3) latency: pktlab, handler returns": ("pair", lambda lab: failing.through(lab, failing.passes, PINGS)),
    "(l4) latency: pktlab, handler raises": ("pair", lambda lab: failing.through(lab, failing.fails, PINGS)),
    "(l5) latency: pktlab, no handler, a cell computing": ("pair", lambda lab: lat_computing(lab, None)),
    "(l6) latency: pktlab, handler returns, a cell computing": ("pair",
                                                              lambda lab: lat_computing(lab, failing.passes)),
    "(w0) latency, CPUs kept awake: no queue": ("pair", lambda lab: awake(failing.no_queue, lab, PINGS)),
    "(w1) latency, CPUs kept awake: bare NetfilterQueue": ("pair", lambda lab: awake(lat_bare, lab)),
    "(w2) latency, CPUs kept awake: pktlab, no handler": ("pair", lambda lab: awake(failing.through, lab, None, PINGS)),
    "(w3) latency, CPUs kept awake: pktlab, handler returns": ("pair",
                                                              lambda lab: awake(failing.through, lab, failing.passes,
                                                                                PINGS)),
    "(w4) latency, CPUs kept awake: pktlab, handler raises": ("pair",
                                                             lambda lab: awake(failing.through, lab, failing.fails,
                                                                               PINGS)),
}


def run_one(name: str) -> int:
    topology, fn = CONFIGS[name]
    with pktlab.Lab(topology) as lab:
        print(json.dumps(fn(lab)))
    return 0


def profile(name: str) -> None:
    """``perf record`` on every CPU while one run of ``name`` floods; the shares by CPU, process and binary."""
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        data = os.path.join(tmp, "perf.data")
        run = subprocess.Popen([sys.executable, str(Path(__file__).resolve()), "--one", name],
                               stdout=subprocess.PIPE, text=True)  # fmt: skip
        time.sleep(1.5 + SECONDS / 3)  # the lab is up and iperf3 floods
        subprocess.run(["perf", "record", "-a", "-o", data, "sleep", str(SECONDS / 3)], capture_output=True,
                       check=True)  # fmt: skip
        out, _ = run.communicate(timeout=120)
        sort = os.environ.get("BENCH_PROFILE_SORT", "cpu,comm,dso")
        argv = ["perf", "report", "-i", data, "--no-children", "--sort", sort, "--percent-limit", "0.5"]
        report = subprocess.run([*argv, "--stdio"], capture_output=True, text=True, check=False).stdout
    result = json.loads(out.strip().splitlines()[-1])
    print(f"\n#### {name}: {result}; samples by {os.environ.get('BENCH_PROFILE_SORT', 'CPU, process, binary')}\n")
    print("```")
    print("\n".join(line for line in report.splitlines() if line.strip() and not line.startswith("#")))
    print("```")


def main(argv: list[str]) -> int:
    if "--profile" in argv:
        keys = os.environ.get("BENCH_PROFILE", "(u2),(u3)").split(",")
        for name in (n for n in CONFIGS if any(n.startswith(k) for k in keys)):
            profile(name)
        return 0
    rounds = int(argv[0]) if argv and argv[0].isdigit() else 3
    before = Path(argv[argv.index("--before") + 1]).resolve() if "--before" in argv else None
    here = Path(__file__).resolve().parent.parent
    trees = {"after": here, "before": before} if before else {"now": here}
    only = os.environ.get("BENCH_CONFIGS", "")
    names = [n for n in CONFIGS if not only or n[1] in only.split(",")]
    runs: dict[tuple[str, str], list[Any]] = {(t, n): [] for t in trees for n in names}
    for r in range(rounds):
        for n in names:
            for t in sorted(trees, reverse=r % 2 == 1):  # who goes first alternates too
                v = measure(trees[t], Path(__file__).name, n)
                runs[(t, n)].append(v)
                print(f"round {r + 1} {t:6} {n}: {v}", flush=True)
    med: dict[tuple[str, str], Any] = {}
    for k, vs in runs.items():
        med[k] = {f: statistics.median(v[f] for v in vs) for f in vs[0]} if isinstance(vs[0], dict) \
            else statistics.median(vs)  # fmt: skip
    print(f"\n{len(CPUS)} CPUs, medians of {rounds} rounds; iperf3 {SECONDS:g} s; {PINGS} pings every 5 ms\n")
    for t in trees:
        print(f"### {t}\n")
        _report(t, names, med)
    return 0


def _report(t: str, names: list[str], med: dict[tuple[str, str], Any]) -> None:
    def m(key: str) -> Any:
        n = next((x for x in names if x.startswith(key)), None)
        return med.get((t, n)) if n else None

    if m("(u0)") is not None:
        f = {k: m(k) for k in ("(u0)", "(u1)", "(u2)", "(u3)")}
        u0, u1, u2, u3 = (v["pps"] for v in f.values())
        print("| UDP 64 B flood | datagrams/s received | of no queue | of bare NetfilterQueue | sent/s | "
              "dropped at the queue | at the receiving socket |\n|---|---|---|---|---|---|---|")
        for k, name in (("(u0)", "no queue"), ("(u1)", "bare NetfilterQueue"), ("(u2)", "pktlab, no handler"),
                        ("(u3)", "pktlab, handler reads 3 fields")):  # fmt: skip
            v = f[k]
            print(f"| {k} {name} | {v['pps']:,.0f} | {v['pps'] / u0:.1%} | {v['pps'] / u1:.2f}x | "
                  f"{v['sent_pps']:,.0f} | {v['queue_dropped']:.1%} | {v['receiver_dropped']:.1%} |")
        u4 = m("(u4)")
        print(f"\nreading three fields / no handler: {u3 / u2:.1%} (shares dropped: of the datagrams sent); the "
              f"reader's CPU per datagram: no handler {f['(u2)']['reader_us']:.2f} µs, "
              + (f"a handler that returns {u4['reader_us']:.2f} µs ({u4['pps'] / u2:.1%} of no handler), "
                 if u4 is not None else "")
              + f"reading three fields {f['(u3)']['reader_us']:.2f} µs\n")
    if m("(t1)") is not None:
        t1, t2 = m("(t1)"), m("(t2)")
        print(f"TCP (GSO): accept-only {t1['gbps']:.2f} Gbit/s, every GSO packet grown {t2['gbps']:.2f} Gbit/s: "
              f"**{t2['gbps'] / t1['gbps']:.1%}** (packets whose rewrite was refused, median: {t2['errors']:.0f}); "
              f"the reader's CPU per packet {t1['reader_us']:.2f} and {t2['reader_us']:.2f} µs\n")
        t3 = m("(t3)")
        if t3 is not None:
            print(f"the cheapest rewrite of every GSO packet (its TTL): {t3['gbps']:.2f} Gbit/s, "
                  f"{t3['gbps'] / t1['gbps']:.1%} of accept-only (the reader's CPU per packet "
                  f"{t3['reader_us']:.2f} µs); grown / TTL-rewritten: "
                  f"**{t2['gbps'] / t3['gbps']:.1%}**\n")
    for first, keys in (("(l0)", ("(l1)", "(l2)", "(l3)", "(l4)", "(l5)", "(l6)")),
                        ("(w0)", ("(w1)", "(w2)", "(w3)", "(w4)"))):
        base = m(first)
        if base is None:
            continue
        print("| latency | RTT avg µs | p99 µs | added avg µs | added p99 µs |\n|---|---|---|---|---|")
        for k in (first, *keys):
            v, n = m(k), next((x for x in names if x.startswith(k)), None)
            if n is None:
                continue
            print(f"| {n[5:]} | {v['avg_us']:.1f} | {v['p99_us']:.1f} | {v['avg_us'] - base['avg_us']:+.1f} | "
                  f"{v['p99_us'] - base['p99_us']:+.1f} |")  # fmt: skip
        print()

if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--one":
        sys.exit(run_one(sys.argv[2]))
    sys.exit(main(sys.argv[1:]))
