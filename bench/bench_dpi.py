"""DPI with a userland parser where only a flow's first packets reach Python (issue 38, item 5; seed 002).

A client-router-server lab; on the server, Debian's `openssl s_server -WWW` (HTTPS, a self-signed certificate)
and Python's http.server (HTTP) serve a SIZE-byte file; the client downloads it with curl, asking for a name. On
the router's FORWARD hook a session (flow_verdicts=True) runs pktlab.name_filter: each new TCP flow is decided by
the name its first bytes ask for (TLS SNI through scapy's TLS layer, HTTP Host through pktlab's HTTP view), a
blocked name reset and dropped, any other accepted as a flow, so the rest of it stays in the kernel.

In one run, ROUNDS rounds alternating "no queue" and "DPI" for HTTPS and HTTP: throughput of the allowed
downloads (curl's), median per configuration, ratio DPI / no queue (goal >= 90 %); the packets that reached
Python against the packets of those connections (conntrack's accounting); and what curl says for a blocked name.

Run: `.venv/bin/python bench/bench_dpi.py` (root or an ordinary user). BENCH_DPI_SIZE (default 256 MiB),
BENCH_DPI_ROUNDS (default 5).
"""

from __future__ import annotations

import os
import statistics

import pktlab

ALLOWED, BLOCKED = "www.lab.example", "blocked.lab.example"
SIZE = int(os.environ.get("BENCH_DPI_SIZE", str(256 << 20)))
ROUNDS = int(os.environ.get("BENCH_DPI_ROUNDS", "5"))


def main() -> None:
    speeds: dict[tuple[str, bool], list[float]] = {}
    reached = total = 0
    blocked: dict[bool, str | None] = {}
    with pktlab.Lab("router") as lab, pktlab.WebServer(lab, [ALLOWED, BLOCKED], size=SIZE) as web:
        s = pktlab.attach(1, rule="-p tcp", hook="FORWARD", netns=lab.router, flow_verdicts=True)
        handler = pktlab.name_filter({BLOCKED})
        s.add_handler(handler, "by_name")
        try:
            for _ in range(ROUNDS):
                for tls in (True, False):
                    with s.out_of_path():
                        r = web.fetch(ALLOWED, tls=tls, timeout=120)
                    assert r.ok, r
                    speeds.setdefault(("no queue", tls), []).append(r.mbps)
                    seen = {(f.sport, f.dport) for f in s.flows_offloaded}
                    n0 = s.record.n
                    r = web.fetch(ALLOWED, tls=tls, timeout=120)
                    assert r.ok, r
                    speeds.setdefault(("DPI", tls), []).append(r.mbps)
                    new = [f for f in s.flows_offloaded if (f.sport, f.dport) not in seen and f.verdict == "accept"]
                    reached += s.record.n - n0
                    total += sum(f.packets or 0 for f in new)
            for tls in (True, False):
                blocked[tls] = web.fetch(BLOCKED, tls=tls, timeout=10).error
        finally:
            s.detach()
    print(f"\n### DPI: {ROUNDS} alternated rounds, {SIZE >> 20} MiB per download, medians (curl's Mbit/s)\n")
    print("| download | no queue | DPI (name_filter) | DPI / no queue |\n|---|---|---|---|")
    for tls in (True, False):
        a, b = statistics.median(speeds["no queue", tls]), statistics.median(speeds["DPI", tls])
        print(f"| {'HTTPS' if tls else 'HTTP'} | {a:,.0f} | {b:,.0f} | {b / a:.0%} |")
    print(f"\npackets that reached Python: {reached:,} of {total:,} packets of the allowed connections "
          f"({reached / max(total, 1):.2%}); names seen {dict(handler.names)}")  # fmt: skip
    print(f"a blocked name, as the user sees it: HTTPS `{blocked[True]}`; HTTP `{blocked[False]}`")


if __name__ == "__main__":
    main()
