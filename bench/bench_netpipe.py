"""NetPIPE through the queue, and the NAT experiment: figures for BENCHMARKS.md.

(1) Max TCP throughput NPtcp measures between a lab's client and server with every packet to
    the server going through NFQUEUE 1, read by (a) a bare NetfilterQueue accept-only reader
    (bench_queue's BareReader), (b) a pktlab session with no handler.  NPtcp's ends are pinned
    as pktlab.netpipe pins its own (client CPU 0, server the last CPU); runs alternate, median
    of REPEATS.  Goal (issue 4): (b) >= 90 % of (a).
(2) The NAT experiment of notebooks/04-netpipe-nat.ipynb at full size: kernel DNAT, the pktlab
    NAT handler (views) and the same NAT with scapy, each measured with pktlab.netpipe in a
    client-router-server lab.  Goal: pktlab NAT >= 50x the scapy NAT.  Beside them, the same
    queue on the same path without NAT (the client talks to the server's own address): with no
    handler, with a handler that reads the addresses and writes nothing, and with one that writes
    a byte back unchanged (the whole packet then goes back with its verdict, as a NAT's does) -
    the floors a NAT through the queue cannot beat (issue 16's goal: pktlab NAT >= 25 % of the
    kernel's).
(0) pktlab.netpipe against NPtcp, both with their defaults, on the same path, per block size above 64 KiB
    (issues 21, 37): AGREE_RUNS alternated runs, for each of BENCH_AGREE's configurations: "direct"
    (client to server), "kernel NAT" and "handler NAT" (notebook 04's: to the router's virtual address,
    DNAT in its kernel, or pktlab's NAT handler on a queue in its PREROUTING, which NPtcp's packets
    cross as well).
(k) Kernel handlers (issue 38): the kernel's NAT, a static NAT handler compiled into nftables rules
    (kernel=True) and the same handler in Python, alternated on one lab, medians per block size. Goal: the
    compiled NAT >= 90 % of the kernel NAT's throughput at every size from 64 KiB, latency within 10 %.
(s) Steal time and a ping-pong's speed (issue 21's cause): STEAL_TRIALS trials of 30 round trips of
    STEAL_BYTES on one connection, the host's steal ticks of both CPUs read around each trial.
Run: `.venv/bin/python bench/bench_netpipe.py [agree] [queue] [nat] [steal] [kernel-nat]` (as root; the first three
by default).
"""

from __future__ import annotations

import os
import statistics
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_queue import BareReader  # noqa: E402

import pktlab  # noqa: E402
from pktlab.measure.netpipe import compare_runs, nptcp, steal_ticks  # noqa: E402

REPEATS = int(os.environ.get("BENCH_REPEATS", "3"))
MAX = int(os.environ.get("BENCH_NETPIPE_MAX", str(1 << 20)))
AGREE_RUNS = int(os.environ.get("BENCH_AGREE_RUNS", "4"))
AGREE_CONFIGS = [c for c in os.environ.get("BENCH_AGREE", "direct,kernel NAT,handler NAT").split(",") if c]
STEAL_TRIALS = int(os.environ.get("BENCH_STEAL_TRIALS", "400"))
STEAL_BYTES = int(os.environ.get("BENCH_STEAL_BYTES", "262144"))


def nptcp_max(lab: pktlab.Lab) -> float:
    """The highest throughput (Mbps) of one NPtcp run from the client to the server."""
    return max(p.mbps for p in nptcp(lab, max_bytes=MAX, repeats=30).points)


def through_bare(lab: pktlab.Lab) -> float:
    with BareReader(lab.server.netns, ("-p", "tcp")) as r:
        r.start_reading()
        return nptcp_max(lab)


def through_pktlab(lab: pktlab.Lab) -> float:
    s = pktlab.attach(1, rule="-p tcp", netns=lab.server)
    try:
        return nptcp_max(lab)
    finally:
        s.detach()


def queue_table() -> None:
    names = ("(0) no queue", "(a) bare NetfilterQueue accept", "(b) pktlab, no handler")
    runs: dict[str, list[float]] = {n: [] for n in names}
    for _ in range(REPEATS):
        for name, fn in (("(0) no queue", nptcp_max), ("(a) bare NetfilterQueue accept", through_bare),
                         ("(b) pktlab, no handler", through_pktlab)):  # fmt: skip
            with pktlab.Lab() as lab:
                runs[name].append(fn(lab))
            print(f"  {name}: {runs[name][-1]:,.0f} Mbps", file=sys.stderr)
    base = statistics.median(runs["(a) bare NetfilterQueue accept"])
    print(f"\n### NPtcp max throughput through NFQUEUE (up to {MAX:,} bytes, median of {REPEATS})\n")
    print("| configuration | max Mbps | ratio to (a) | runs (Mbps) |\n|---|---|---|---|")
    for name, rs in runs.items():
        med = statistics.median(rs)
        print(f"| {name} | {med:,.0f} | {med / base:.1%} | {', '.join(f'{x:,.0f}' for x in rs)} |")


def agreement_table() -> None:
    """pktlab.netpipe against NPtcp, both with their defaults, AGREE_RUNS alternated runs each, per configuration."""
    for config in AGREE_CONFIGS:
        agreement_config(config)


@contextmanager
def _agreement_path(config: str) -> Iterator[tuple[pktlab.Lab, str | None, pktlab.Session | None]]:
    """The path of one configuration: (lab, the address both tools connect to, the session in the path)."""
    if config == "direct":
        with pktlab.Lab() as lab:
            yield lab, None, None
        return
    vip = "10.77.2.100"
    with pktlab.Lab("router") as lab:
        if config == "kernel NAT":
            lab.router.run(["iptables", "-t", "nat", "-A", "PREROUTING", "-d", vip, "-j", "DNAT",
                            "--to-destination", lab.server.addr])  # fmt: skip
            yield lab, vip, None
            return
        s = pktlab.attach(1, rule="-s 10.77.0.0/16", hook="PREROUTING", netns=lab.router)
        try:
            s.add_handler(_nats(vip, lab.server.addr, lab.client.addr)[0], "nat")
            yield lab, vip, s
        finally:
            s.detach()


def agreement_config(config: str) -> None:
    ours: list[pktlab.NetpipeResult] = []
    ref: list[pktlab.NetpipeResult] = []
    steal0, t0 = steal_ticks(), time.monotonic()
    took = {"NPtcp": 0.0, "pktlab": 0.0}
    with _agreement_path(config) as (lab, to, session):
        for i in range(AGREE_RUNS):
            t = time.monotonic()
            ref.append(nptcp(lab, max_bytes=MAX, to=to))
            took["NPtcp"] += time.monotonic() - t
            t = time.monotonic()
            ours.append(pktlab.netpipe(lab, [session], max_bytes=MAX, to=to))
            took["pktlab"] += time.monotonic() - t
            print(f"  {config}: agreement run {i + 1}/{AGREE_RUNS}", file=sys.stderr)
    stolen_share = (steal_ticks() - steal0) / os.sysconf("SC_CLK_TCK") / (time.monotonic() - t0) / os.cpu_count()
    table = compare_runs(ours, ref)
    head = f"{config}, {AGREE_RUNS} alternated runs of each with its defaults, up to {MAX:,} bytes"
    print(f"\n### pktlab.netpipe / NPtcp per block size ({head})\n")
    print(f"The host stole {stolen_share:.0%} of the CPUs' time during these runs (/proc/stat steal). A run took "
          f"{took['NPtcp'] / AGREE_RUNS:.0f} s with NPtcp, {took['pktlab'] / AGREE_RUNS:.0f} s with pktlab.\n")
    print("| block (bytes) | NPtcp Mbps (best / median) | pktlab Mbps (best / median) | ratio of fastest "
          "| ratio of medians | run ratios (min-max) | pktlab trials set aside (steal) |\n"
          "|---|---|---|---|---|---|---|")  # fmt: skip
    best = {b: (max(p.mbps for r in ref for p in r.points if p.bytes == b),
                max(p.mbps for r in ours for p in r.points if p.bytes == b)) for b in table["bytes"]}  # fmt: skip
    for _, row in table.iterrows():
        b = int(row["bytes"])
        stolen = sum(p.stolen for r in ours for p in r.points if p.bytes == b)
        print(f"| {b:,} | {best[b][0]:,.0f} / {row['reference Mbps']:,.0f} | "
              f"{best[b][1]:,.0f} / {row['ours Mbps']:,.0f} | {row['ratio of fastest']:.2f} | "
              f"{row['ratio of medians']:.2f} | {row['min run ratio']:.2f}-{row['max run ratio']:.2f} | {stolen} |")
    f = table["ratio of fastest"]
    inside = int(((f >= 0.8) & (f <= 1.25)).sum())
    print(f"\nratio of fastest over the sizes: median {f.median():.2f}, min {f.min():.2f}, max {f.max():.2f}; "
          f"{inside} of {len(table)} sizes within 0.8-1.25")


def steal_table() -> None:
    """Trials with and without the host's steal time: the same connection, block size and round trips."""
    from pktlab.lab.network import wait_ready
    from pktlab.measure.netpipe import PORT

    cpus = sorted(os.sched_getaffinity(0))
    with pktlab.Lab() as lab:
        server = lab.server.popen([sys.executable, "-m", "pktlab.measure.netpipe", "serve", "--port", str(PORT),
                                   "--cpu", str(cpus[-1])])  # fmt: skip
        try:
            wait_ready(server, "ping-pong server")
            out = lab.client.run([sys.executable, __file__, "steal-client", lab.server.addr, str(cpus[0]),
                                  str(cpus[-1])], timeout=600).stdout  # fmt: skip
        finally:
            if server.poll() is None:
                server.kill()
            server.wait(5)
    trials = [tuple(float(x) for x in line.split()) for line in out.splitlines() if line.strip()]
    clean = [g for g, ticks in trials if ticks == 0]
    hit = [g for g, ticks in trials if ticks > 0]
    print(f"\n### Steal time and the ping-pong ({len(trials)} trials of 30 round trips of {STEAL_BYTES:,} bytes)\n")
    print("| trials | count | median Gbps | slowest Gbps | fastest Gbps |\n|---|---|---|---|---|")
    for name, g in (("no steal during the trial", clean), ("steal during the trial", hit)):
        if g:
            print(f"| {name} | {len(g)} | {statistics.median(g):.1f} | {min(g):.1f} | {max(g):.1f} |")
    slow = [t for t in trials if t[0] < 0.5 * statistics.median(clean or [1.0])]
    with_steal = sum(1 for t in slow if t[1] > 0)
    print(f"\ntrials below half the steal-free median: {len(slow)}, of which {with_steal} had steal")


def steal_client(host: str, c_cpu: int, s_cpu: int) -> None:
    """In the lab's client: one connection, STEAL_TRIALS trials; prints Gbps and steal ticks per trial."""
    import socket
    import struct

    from pktlab.measure._pingpong import round_trips

    from pktlab.measure.netpipe import PORT

    os.sched_setaffinity(0, {c_cpu})
    conn = socket.create_connection((host, PORT), timeout=10)
    conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    conn.settimeout(None)
    for _ in range(STEAL_TRIALS):
        conn.sendall(struct.pack("!QQ", STEAL_BYTES, 30))
        before = steal_ticks([c_cpu, s_cpu])
        seconds = round_trips(conn.fileno(), STEAL_BYTES, 30)
        print(f"{STEAL_BYTES * 8 * 30 * 2 / seconds / 1e9:.2f} {steal_ticks([c_cpu, s_cpu]) - before}", flush=True)
    conn.sendall(struct.pack("!QQ", 0, 0))
    conn.close()


def nat_table() -> None:
    """The NAT experiment twice: the queue bound with GSO (pktlab's default) and without (one packet per segment)."""
    for gso in (True, False):
        nat_run(gso)


def nat_run(gso: bool) -> None:
    vip = "10.77.2.100"
    with pktlab.Lab("router") as lab:
        real, client = lab.server.addr, lab.client.addr
        views, scapy_nat = _nats(vip, real, client)
        lab.router.run(["iptables", "-t", "nat", "-A", "PREROUTING", "-d", vip, "-j", "DNAT", "--to-destination", real])
        res = pktlab.netpipe(lab, [None], max_bytes=MAX, to=vip).relabel({"no queue": "kernel NAT"})
        lab.router.run(["iptables", "-t", "nat", "-F"])
        s = pktlab.attach(1, rule="-s 10.77.0.0/16", hook="PREROUTING", netns=lab.router, gso=gso)
        try:
            # the queue's own floor on this path (no NAT: the client talks to the server's address): nothing
            # written back, then a handler that reads the addresses a NAT compares and writes nothing
            res = res + pktlab.netpipe(lab, [s], max_bytes=MAX).relabel(
                {"queue 1 (no handler)": "queue, no handler, no NAT"}
            )
            s.add_handler(_reads(vip), "read")
            res = res + pktlab.netpipe(lab, [s], max_bytes=MAX).relabel(
                {"queue 1 (read)": "queue, handler reads ip.src/ip.dst, no NAT"}
            )
            s.add_handler(_writes_back, "write")
            s.remove_handler("read")
            res = res + pktlab.netpipe(lab, [s], max_bytes=MAX).relabel(
                {"queue 1 (write)": "queue, handler writes one byte back unchanged, no NAT"}
            )
            s.add_handler(views, "nat")
            s.remove_handler("write")
            res = res + pktlab.netpipe(lab, [s], max_bytes=MAX, to=vip).relabel({"queue 1 (nat)": "pktlab NAT"})
            s.add_handler(scapy_nat, "nat")
            res = res + pktlab.netpipe(lab, [s], max_bytes=MAX, to=vip).relabel(
                {"queue 1 (nat)": "NAT with scapy"}
            )
            errors = len(s.errors)
            packets = s.record.n
        finally:
            s.detach()
    table = res.summary().set_index("config")
    sc, k = table.loc["NAT with scapy", "max Mbps"], table.loc["kernel NAT", "max Mbps"]
    how = "GSO packets whole (gso=True, the default)" if gso else "one packet per segment (gso=False)"
    print(f"\n### NAT experiment, queue {how} (pktlab.netpipe, up to {MAX:,} bytes; handler errors: {errors}; "
          f"{packets:,} packets through the queue)\n")  # fmt: skip
    print("| NAT | max Mbps | latency µs | saturation bytes | ratio to scapy NAT | ratio to kernel NAT |\n"
          "|---|---|---|---|---|---|")  # fmt: skip
    for c, row in table.iterrows():
        print(f"| {c} | {row['max Mbps']:,.1f} | {row['latency us']:.1f} | {int(row['saturation bytes']):,} | "
              f"{row['max Mbps'] / sc:,.0f}x | {row['max Mbps'] / k:.1%} |")  # fmt: skip


def kernel_nat_table(rounds: int = 3) -> None:
    """Issue 38's three curves: the kernel's NAT, a stateless NAT handler compiled into nftables rules
    (``kernel=True``), and the same handler run in Python, alternated ``rounds`` times on one lab; per block size
    the median of the rounds.  Goal: compiled >= 90 % of the kernel NAT's throughput at every size from 64 KiB,
    latency (the smallest block's one-way time) within 10 %."""
    import statistics

    vip = "10.77.2.100"
    names = ("kernel NAT", "compiled NAT (kernel=True)", "the same NAT handler in Python")
    runs: dict[str, list[dict[int, tuple[float, float]]]] = {n: [] for n in names}
    with pktlab.Lab("router") as lab:
        real, client = lab.server.addr, lab.client.addr
        nat = _stateless_nat(vip, real, client)
        s = pktlab.attach(1, rule="-s 10.77.0.0/16", hook="PREROUTING", netns=lab.router)
        try:
            for _ in range(rounds):
                for name in names:
                    if name == "kernel NAT":  # (netpipe takes the lab's sessions out of the path for "no queue")
                        lab.router.run(["iptables", "-t", "nat", "-A", "PREROUTING", "-d", vip, "-j", "DNAT",
                                        "--to-destination", real])  # fmt: skip
                        res = pktlab.netpipe(lab, [None], max_bytes=MAX, to=vip)
                        lab.router.run(["iptables", "-t", "nat", "-F"])
                    else:
                        s.add_handler(nat, "nat", kernel=name.startswith("compiled"))
                        res = pktlab.netpipe(lab, [s], max_bytes=MAX, to=vip)
                        if name.startswith("compiled"):
                            rules = s.kernel_rules
                    runs[name].append({p.bytes: (p.mbps, p.usec) for p in res.points})
            errors, queued = len(s.errors), s.record.n
        finally:
            s.detach()
    sizes = sorted(set.intersection(*(set(r) for n in names for r in runs[n])))
    med = {n: {b: (statistics.median(r[b][0] for r in runs[n]), statistics.median(r[b][1] for r in runs[n]))
               for b in sizes} for n in names}  # fmt: skip
    k, c, py = names
    print(f"\n### Kernel handlers: the NAT three ways ({rounds} alternated rounds, medians per block size; up to "
          f"{MAX:,} bytes; handler errors {errors}; {queued:,} packets reached the queue, all in the Python runs)\n")
    print("| block bytes | kernel NAT Mbps | compiled Mbps | Python Mbps | compiled / kernel | Python / kernel |\n"
          "|---|---|---|---|---|---|")  # fmt: skip
    for b in sizes:
        if b >= 1 << 10 or b == sizes[0]:
            kb, cb, pb = med[k][b][0], med[c][b][0], med[py][b][0]
            print(f"| {b:,} | {kb:,.0f} | {cb:,.0f} | {pb:,.0f} | {cb / kb:.0%} | {pb / kb:.0%} |")
    big = [b for b in sizes if b >= 64 << 10]
    worst = min(med[c][b][0] / med[k][b][0] for b in big) if big else float("nan")
    lat = med[c][sizes[0]][1] / med[k][sizes[0]][1]
    print(f"\ncompiled / kernel NAT from 64 KiB: worst {worst:.0%} (goal >= 90 %); latency at {sizes[0]} bytes: "
          f"{med[c][sizes[0]][1]:.1f} us against {med[k][sizes[0]][1]:.1f} us ({lat - 1:+.0%}, goal within 10 %); "
          f"Python handler latency {med[py][sizes[0]][1]:.1f} us")
    print("\nThe compiled handler's rules:\n")
    for _, row in rules.iterrows():
        print(f"    {row['rule']:<70} # line {row['line']}: {row['python']}")


def _stateless_nat(vip: str, real: str, client: str):  # type: ignore[no-untyped-def]
    """A static NAT both ways that compiles to the kernel: the virtual address to the server and back."""

    def nat(pkt):  # type: ignore[no-untyped-def]
        if pkt.ip is None:
            return None
        if pkt.ip.dst == vip:
            pkt.ip.dst = real
            return pkt.accept()
        if pkt.ip.src == real and pkt.ip.dst == client:
            pkt.ip.src = vip
            return pkt.accept()
        return None

    return nat


def _writes_back(pkt):  # type: ignore[no-untyped-def]
    """The NAT's verdict without its rewrite: the packet goes back whole, its checksums made again."""
    pkt.raw[0] = pkt.raw[0]
    return None


def _reads(vip: str):  # type: ignore[no-untyped-def]
    def read_addresses(pkt):  # type: ignore[no-untyped-def]
        ip = pkt.ip
        if ip is not None and (ip.dst == vip or ip.src == vip):
            return pkt.drop()
        return None

    return read_addresses


def _nats(vip: str, real: str, client: str):  # type: ignore[no-untyped-def]
    from scapy.layers.inet import IP, TCP

    def nat_views(pkt):  # type: ignore[no-untyped-def]
        ip = pkt.ip
        if ip is None:
            return None
        if ip.dst == vip:
            ip.dst = real
        elif ip.src == real and ip.dst == client:
            ip.src = vip
        return None

    def nat_scapy(pkt):  # type: ignore[no-untyped-def]
        p = IP(bytes(pkt))
        if p.dst == vip:
            p.dst = real
        elif p.src == real and p.dst == client:
            p.src = vip
        else:
            return None
        del p.chksum
        if TCP in p:
            del p[TCP].chksum
        pkt.set_payload(bytes(p))
        return pkt.accept()

    return nat_views, nat_scapy


if __name__ == "__main__":
    if sys.argv[1:2] == ["steal-client"]:
        steal_client(sys.argv[2], int(sys.argv[3]), int(sys.argv[4]))
        sys.exit(0)
    parts = sys.argv[1:] or ["agree", "queue", "nat"]
    if "agree" in parts:
        agreement_table()
    if "queue" in parts:
        queue_table()
    if "nat" in parts:
        nat_table()
    if "steal" in parts:
        steal_table()
    if "kernel-nat" in parts:
        kernel_nat_table()
