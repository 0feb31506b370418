"""Record the traces in datasets/traces/ from real lab traffic (what notebook 05 shows in replay mode).

Run as root: `.venv/bin/python scripts/make_trace_datasets.py`.  Each is what
``pktlab.trace`` gave on a client-router-server lab; kernel times, addresses
of buffers and ports chosen by the kernel differ from run to run, the steps do
not.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pktlab

OUT = Path(os.environ.get("PKTLAB_DATASETS_OUT", Path(__file__).resolve().parents[1] / "datasets")) / "traces"


def ping_through_a_queue(lab: pktlab.Lab) -> pktlab.Trace:
    """A ping and its reply, forwarded by the router through a queue whose handler lets them pass."""
    s = pktlab.attach(2, rule="-p icmp", hook="FORWARD", netns=lab.router)
    try:
        s.add_handler(lambda pkt: None, "watch")
        with pktlab.trace(lab, "icmp", count=2) as tr:
            lab.ping(1)
        return tr.result
    finally:
        s.detach()


def three_drops(lab: pktlab.Lab) -> pktlab.Trace:
    """Three datagrams that die three ways: no socket, an iptables rule, a pktlab handler."""
    rule = ["FORWARD", "-p", "udp", "--dport", "9301", "-j", "DROP"]
    lab.router.run(["iptables", "-I", *rule])
    s = pktlab.attach(3, rule="-p udp --dport 9302", hook="FORWARD", netns=lab.router)
    try:
        s.add_handler(lambda pkt: pkt.drop(), "no_9302")
        with pktlab.trace(lab, "udp and dst portrange 9300-9302", count=3) as tr:
            lab.udp(1, port=9300, to=lab.router.addr, idle=0.2)  # nobody listens on the router
            lab.udp(1, port=9301, idle=0.2)
            lab.udp(1, port=9302, idle=0.2)
        return tr.result
    finally:
        s.detach()
        lab.router.run(["iptables", "-D", *rule])


def main() -> int:
    OUT.mkdir(parents=True, exist_ok=True)
    with pktlab.Lab("router") as lab:
        for name, make in (("lab-ping", ping_through_a_queue), ("lab-drops", three_drops)):
            t = make(lab)
            t.save(str(OUT / f"{name}.json"))
            print(f"{name}: {len(t)} packets, {sum(len(p.steps) for p in t.packets)} steps, {t.lost} lost")
    return 0


if __name__ == "__main__":
    sys.exit(main())
