"""Root mode against user-namespace mode, alternated in one run: a lab's start and the packet path.

Each measurement runs in a fresh process with ``PKTLAB_PRIVILEGE`` set to the mode (user-namespace mode
works as root too; the same code path an ordinary user takes).  Per round and mode:

* lab start: the first ``Lab()`` of the process (in user-namespace mode it starts the lab helper), then
  the median of 5 more pair labs and of 3 router labs;
* UDP 64 B at full speed (iperf3, 3 s) through a queue with no handler: datagrams/s received;
* TCP (iperf3, 3 s) through a queue whose handler rewrites ``ip.ttl`` of every segment: Gbit/s (in
  user-namespace mode the kernel refuses a verdict's new payload, so each rewritten packet leaves from
  the host and the original is dropped: the cost of that path shows here).

Usage: ``.venv/bin/python bench/bench_userns.py [ROUNDS]`` (default 3); prints medians and the ratio.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

MODES = ("root", "userns")


def _one() -> dict[str, float]:
    from harness import iperf3_server, iperf_udp64

    import pktlab

    out: dict[str, float] = {}
    t = time.perf_counter()
    first = pktlab.Lab()
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
    with pktlab.Lab() as lab:
        with pktlab.attach(1, rule="-p udp --dport 5201", netns=lab.server):
            out["udp64_pps"] = iperf_udp64(lab, 5201, 3.0)[0]
        with pktlab.attach(2, rule="-p tcp --dport 5202", netns=lab.server) as s:
            s.add_handler(lambda pkt: setattr(pkt.ip, "ttl", 33), "ttl")
            with iperf3_server(lab, 5202):
                argv = ["iperf3", "-c", lab.server.addr, "-p", "5202", "-t", "3", "-J"]
                res = lab.client.run(argv, timeout=40).stdout
            out["tcp_rewrite_gbps"] = json.loads(res)["end"]["sum_received"]["bits_per_second"] / 1e9
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
