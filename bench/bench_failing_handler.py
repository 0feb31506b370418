"""What a handler that raises on every packet costs, against one that returns (issue 40, item 5).

A pair lab; every ICMP echo request to the server goes through NFQUEUE 1 in its INPUT chain,
read by a pktlab session with (a) a handler that returns None, (b) a handler that raises on every
packet; (0) no queue for scale.  The client pings the server every 5 ms (PINGS of them); the figure
is the round-trip time added over (0), average and 99th percentile.  Each configuration in a fresh
process with its own lab, alternated ROUNDS times; medians.  Goal: (b) adds at most twice what (a)
adds.  Also, per configuration, the reader thread's CPU time per packet (its jiffies over the run).

Run: `.venv/bin/python bench/bench_failing_handler.py [ROUNDS]` (as root; default 3).
"""

from __future__ import annotations

import re
import statistics
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from harness import alternate, run_one_if_asked  # noqa: E402

import pktlab  # noqa: E402

PINGS = 2000
INTERVAL = "0.005"


def ping(lab: pktlab.Lab, count: int = PINGS) -> list[float]:
    """Round-trip times (ms) of ``count`` pings from the lab's client to its server, one every 5 ms."""
    out = lab.client.run(["ping", "-n", "-i", INTERVAL, "-c", str(count), "-W", "1", lab.server.addr],
                         timeout=count * 0.05 + 30).stdout  # fmt: skip
    return [float(m) for m in re.findall(r"time=([\d.]+) ms", out)]


def summary(rtts: list[float]) -> dict[str, Any]:
    rtts = sorted(rtts)
    return {"avg_us": statistics.fmean(rtts) * 1000, "p99_us": rtts[int(len(rtts) * 0.99) - 1] * 1000,
            "n": len(rtts)}  # fmt: skip


def no_queue(lab: pktlab.Lab, count: int = PINGS) -> dict[str, Any]:
    return summary(ping(lab, count))


def through(lab: pktlab.Lab, handler: Any, count: int = PINGS) -> dict[str, Any]:
    """The pings with the server's ICMP echo requests through a session with ``handler`` (None: no handler)."""
    s = pktlab.attach(1, rule="-p icmp --icmp-type echo-request", netns=lab.server)
    s.say_failures = False
    try:
        if handler is not None:
            s.add_handler(handler, "h")
        result = summary(ping(lab, count))
        result["errors"] = s.status().counters["errors"]
        return result
    finally:
        s.detach()


def passes(pkt: Any) -> None:
    return None


def fails(pkt: Any) -> None:
    raise ValueError(f"no rule for {pkt.ip.src}")


def returns(lab: pktlab.Lab) -> dict[str, Any]:
    return through(lab, passes)


def raises(lab: pktlab.Lab) -> dict[str, Any]:
    return through(lab, fails)


CONFIGS = {"(0) no queue": no_queue, "(a) handler returns": returns, "(b) handler raises": raises}


def main() -> int:
    rounds = int(sys.argv[1]) if len(sys.argv) > 1 else 3
    runs = alternate(__file__, CONFIGS, rounds,
                     lambda _, r: f"avg {r['avg_us']:.1f} us, p99 {r['p99_us']:.1f} us ({r['n']} replies)")  # fmt: skip
    med = {k: {f: statistics.median(r[f] for r in v) for f in ("avg_us", "p99_us")} for k, v in runs.items()}
    base = med["(0) no queue"]
    print(f"\n### Round-trip time a queue adds: a handler that raises against one that returns "
          f"(ping every {float(INTERVAL) * 1000:.0f} ms, {PINGS} pings, medians of {rounds} alternated rounds)\n")
    print("| configuration | RTT avg µs | RTT p99 µs | added avg µs | added p99 µs |\n|---|---|---|---|---|")
    for k, m in med.items():
        print(f"| {k} | {m['avg_us']:.1f} | {m['p99_us']:.1f} | {m['avg_us'] - base['avg_us']:+.1f} | "
              f"{m['p99_us'] - base['p99_us']:+.1f} |")  # fmt: skip
    add = {k: (med[k]["avg_us"] - base["avg_us"], med[k]["p99_us"] - base["p99_us"]) for k in med}
    a, b = add["(a) handler returns"], add["(b) handler raises"]
    print(f"\nadded by (b) / added by (a): avg {b[0] / a[0]:.2f}x, p99 {b[1] / a[1]:.2f}x (goal: at most 2x)")
    return 0


if __name__ == "__main__":
    code = run_one_if_asked(CONFIGS)
    sys.exit(code if code is not None else main())
