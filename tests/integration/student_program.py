"""What one student's kernel does in the user-namespace tests, run as that student (not collected by pytest).

``python student_program.py share``: a lab with a queue carrying traffic; prints its namespace, waits for the
other student's on stdin, tries to reach it and the host, sends, prints what it saw as JSON.
``python student_program.py flood``: a lab sending for a minute; prints its helper's PID, then waits to be killed.
"""

from __future__ import annotations

import json
import sys


def share() -> None:
    import pktlab
    from pktlab.kernel import netns, privilege

    lab = pktlab.Lab()
    s = pktlab.attach(7, rule="-p udp --dport 9000", netns=lab.server)
    print(json.dumps({"netns": lab.server.netns}), flush=True)
    other = sys.stdin.readline().strip()
    refused = {}
    for what, fn in (
        ("other's namespace", lambda: pktlab.attach(8, rule="-p udp", netns=other)),
        ("host", lambda: pktlab.attach(9, rule="-p udp", allow_host=True)),
        ("other's commands", lambda: netns.run(other, ["iptables", "-A", "INPUT", "-j", "DROP"])),
    ):
        try:
            fn()
            refused[what] = None
        except Exception as exc:  # what the student would read
            refused[what] = f"{type(exc).__name__}: {exc}"
    r = lab.udp(50, rate=2000)
    seen = {str(row.dst) for row in s.df.itertuples()}
    print(json.dumps({"refused": refused, "received": r.unique, "queued": s.record.n, "dst": sorted(seen),
                      "mode": privilege.current().name}), flush=True)  # fmt: skip
    lab.down()


def flood() -> None:
    import pktlab
    from pktlab.kernel import netns

    lab = pktlab.Lab()
    pktlab.attach(7, rule="-p udp --dport 9000", netns=lab.server)
    flow = lab.start_udp(60000, rate=1000, timeout=60)
    print(json.dumps({"helper": netns.helper_pid(lab.server.netns), "netns": lab.server.netns}), flush=True)
    flow.wait()


if __name__ == "__main__":
    {"share": share, "flood": flood}[sys.argv[1]]()
