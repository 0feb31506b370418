"""Root mode against user-namespace mode, alternated in one run: a lab's start and the packet path.

Each measurement runs in a fresh process with ``PKTLAB_PRIVILEGE`` set to the mode (user-namespace mode
works as root too; the same code path an ordinary user takes).  Per round and mode:

* lab start: the first ``Lab()`` of the process (in user-namespace mode it starts the lab helper, unless
  ``BENCH_PRESTART=1``: started a second before, as ``%load_ext pktlab`` does), then the median of 5
  more pair labs and of 3 router labs;
* UDP 64 B at full speed (iperf3, 3 s) through the server's INPUT queue, datagrams/s the reader took and
  datagrams/s received (the queue is fail-open: what the reader cannot take passes unseen): (b) no
  handler, (c) a handler reading ``udp.dport``, (d) one reading ``ip.src``, ``ip.dst`` and ``udp.dport``,
  (e) the same through scapy, (f) a handler rewriting ``ip.ttl`` (bench_queue's
  configurations, measured with traffic instead of its drain: the drain needs socket buffers of
  hundreds of MB, which an ordinary user cannot have);
* TCP (iperf3, 3 s, GSO packets whole) through a router's FORWARD queue, Gbit/s: (a) a handler reading
  ``tcp.dport`` (bench_tcp_rewrite's baseline), and one rewriting ``ip.ttl`` of every packet.

A rewrite takes another path in user-namespace mode: the kernel refuses a verdict's new payload there,
so each rewritten packet leaves from the host (cut into segments when it is a GSO packet) and the
original is dropped.

Usage: ``.venv/bin/python bench/bench_userns.py [ROUNDS]`` (default 3); prints medians and the ratio.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import time
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

MODES = ("root", "userns")


def _tcp(lab: Any, port: int) -> float:
    """Gbit/s iperf3 got over TCP from the lab's client to its server in 3 s."""
    from harness import iperf3_server

    with iperf3_server(lab, port):
        out = lab.client.run(["iperf3", "-c", lab.server.addr, "-p", str(port), "-t", "3", "-J"], timeout=40).stdout
    return json.loads(out)["end"]["sum_received"]["bits_per_second"] / 1e9


def _one() -> dict[str, float]:
    from harness import iperf_udp64

    import pktlab
    from pktlab.kernel import netns

    out: dict[str, float] = {}
    if os.environ.get("BENCH_PRESTART"):  # as after %load_ext pktlab, a second before the first %pktlab lab up
        netns.prestart_helper()
        time.sleep(1.0)
    lab_class = pktlab.Lab  # imported before the clock starts, in both modes
    t = time.perf_counter()
    first = lab_class()
    out["first_lab_s"] = time.perf_counter() - t
    first.down()
    pair, router = [], []
    for _ in range(5):
        t = time.perf_counter()
        with pktlab.Lab():
            pair.append(time.perf_counter() - t)
    for _ in range(3):
        t = time.perf_counter()
        with pktlab.Lab("router"):
            router.append(time.perf_counter() - t)
    out["pair_lab_s"], out["router_lab_s"] = statistics.median(pair), statistics.median(router)
    seen: list[Any] = [None]

    def views_read(pkt: Any) -> None:
        seen[0] = (pkt.ip.src, pkt.ip.dst, pkt.udp.dport)

    def scapy_read(pkt: Any) -> None:
        from scapy.layers.inet import IP

        p = IP(bytes(pkt))
        seen[0] = (p.src, p.dst, p.dport)

    udp_handlers = {
        "udp64_b_none_pps": None,
        "udp64_c_read_pps": lambda pkt: pkt.udp.dport and None,
        "udp64_d_views_pps": views_read,
        "udp64_e_scapy_pps": scapy_read,
        "udp64_f_rewrite_pps": lambda pkt: setattr(pkt.ip, "ttl", 33),
    }
    with pktlab.Lab() as lab:
        for i, (key, fn) in enumerate(udp_handlers.items()):
            deadline = None if key.startswith("udp64_e") else 0.5  # scapy's first parse imports a lot
            with pktlab.attach(1 + i, rule="-p udp --dport 5201", netns=lab.server, deadline=deadline) as s:
                if fn is not None:
                    s.add_handler(fn, "h")
                out[key.replace("_pps", "_received_pps")] = iperf_udp64(lab, 5201, 3.0)[0]
                # what the reader took (the rest passed unseen, fail-open): its own rate, the path's cost
                out[key.replace("_pps", "_reader_pps")] = s.status().packets / 3.0
    tcp_handlers = {
        "tcp_a_read_gbps": lambda pkt: pkt.tcp.dport and None,
        "tcp_rewrite_gbps": lambda pkt: setattr(pkt.ip, "ttl", 33),
    }
    with pktlab.Lab("router") as lab:
        for i, (key, fn) in enumerate(tcp_handlers.items()):
            with pktlab.attach(10 + i, rule="-p tcp --dport 5202", hook="FORWARD", netns=lab.router) as s:
                s.add_handler(fn, "h")
                out[key] = _tcp(lab, 5202)
    return out


def main() -> int:
    if len(sys.argv) == 2 and sys.argv[1] == "--one":
        print(json.dumps(_one()))
        return 0
    rounds = int(sys.argv[1]) if len(sys.argv) > 1 else 3
    runs: dict[str, list[dict[str, float]]] = {m: [] for m in MODES}
    for r in range(rounds):
        for mode in MODES:
            proc = subprocess.run([sys.executable, __file__, "--one"], capture_output=True, text=True, timeout=300,
                                  env=dict(os.environ, PKTLAB_PRIVILEGE=mode), check=True)  # fmt: skip
            runs[mode].append(json.loads(proc.stdout.strip().splitlines()[-1]))
            print(f"  round {r + 1} {mode}: {runs[mode][-1]}", file=sys.stderr)
    keys = list(runs["root"][0])
    print(f"{'measure':18s} {'root':>12s} {'userns':>12s} {'userns/root':>12s}")
    for k in keys:
        a = statistics.median(x[k] for x in runs["root"])
        b = statistics.median(x[k] for x in runs["userns"])
        print(f"{k:18s} {a:12.4g} {b:12.4g} {b / a:12.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
