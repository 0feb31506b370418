"""How many students this machine holds at once, and what one costs in memory (issue 35's scale benchmark).

Each student is an ordinary Unix user of their own (``pktlab-scaleNN``, made here and removed at the end) whose
process does what a student's notebook kernel does with pktlab: a lab of its own (user-namespace mode), a queue
with a handler reading three fields, and 100 datagrams/s through it for ``SECONDS``; each student in a cgroup of
their own as on the hub (``pktlab.hub.limits``: equal CPU weight, at most one core).  N students start together
(their labs come up), then all send at once; a step passes when every student's datagrams all arrived, all
through the handler (none passed unseen by a full queue, none dropped).  N grows by STEP until a step fails or
reaches MAX.

Memory per student, measured apart (PSS, so shared pages are split among their users): the student's process
(Python with pktlab and its lab attached: a kernel's pktlab part), the rest of its cgroup (the lab: its helper,
the traffic programs), and, once, an idle ``jupyter lab`` server and an idle ipykernel run as such a user (what
the hub's single-user server and a bare kernel cost).

Usage: ``.venv/bin/python bench/bench_hub_scale.py [MAX] [STEP] [SECONDS]`` (as root; default 60 10 10).
"""

from __future__ import annotations

import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pktlab.hub.limits import StudentLimits  # noqa: E402

PREFIX = "pktlab-scale"
GROUP = "pktlab-bench-scale"

STUDENT = """
import json, sys, time
import pktlab
sys.stdin.readline()
seen = [0]
def look(pkt):
    pkt.ip.src, pkt.ip.dst, pkt.udp.dport
    seen[0] += 1
with pktlab.Lab() as lab:
    s = pktlab.attach(1, rule="-p udp", netns=lab.server)
    s.add_handler(look, "look")
    print("ready", flush=True)
    sys.stdin.readline()
    n = int(sys.argv[1])
    t = time.monotonic()
    r = lab.udp(n, size=64, rate=100, timeout=n / 100 + 20)
    st = s.status()
    s.detach()
print(json.dumps({"sent": r.sent, "received": r.received, "handled": seen[0], "unseen": st.passed_unseen,
                  "seconds": time.monotonic() - t}), flush=True)
"""


def _user(i: int) -> str:
    name = f"{PREFIX}{i:02d}"
    if subprocess.run(["id", "-u", name], capture_output=True).returncode != 0:
        subprocess.run(["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin", name], check=True)
    return name


def _pss(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/smaps_rollup") as f:
            return next(int(line.split()[1]) for line in f if line.startswith("Pss:")) * 1024
    except (OSError, StopIteration):
        return 0


def _descendants(pid: int) -> list[int]:
    """Every process started (directly or not) by ``pid``."""
    kids: dict[int, list[int]] = {}
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                with open(f"/proc/{d}/stat") as f:
                    ppid = int(f.read().rpartition(")")[2].split()[1])
            except (OSError, ValueError, IndexError):
                continue
            kids.setdefault(ppid, []).append(int(d))
    out, todo = [], [pid]
    while todo:
        for k in kids.get(todo.pop(), []):
            out.append(k)
            todo.append(k)
    return out


def _as(user: str, argv: list[str], **kw) -> subprocess.Popen[str]:  # type: ignore[no-untyped-def]
    env = {"PATH": f"{Path(sys.executable).parent}:/usr/bin:/bin:/usr/sbin:/sbin", "HOME": "/tmp", "LANG": "C.UTF-8"}
    return subprocess.Popen(["setpriv", f"--reuid={user}", f"--regid={user}", "--init-groups", "--", *argv],
                            text=True, cwd="/tmp", env=env, **kw)  # fmt: skip


def step(n: int, seconds: int, limits: StudentLimits) -> dict:
    users = [_user(i) for i in range(1, n + 1)]
    procs = []
    t0 = time.monotonic()
    try:
        for u in users:
            p = _as(u, [sys.executable, "-c", STUDENT, str(100 * seconds)], stdin=subprocess.PIPE,
                    stdout=subprocess.PIPE, stderr=subprocess.PIPE)  # fmt: skip
            limits.apply(u, p.pid)
            p.stdin.write("go\n")
            p.stdin.flush()
            procs.append(p)
        for u, p in zip(users, procs, strict=True):
            line = p.stdout.readline().strip()
            if line != "ready":
                raise RuntimeError(f"{u}'s lab did not come up: {line!r} {p.stderr.read()[-500:]}")
        up = time.monotonic() - t0
        for p in procs:
            p.stdin.write("send\n")
            p.stdin.flush()
        time.sleep(seconds / 2)  # mid-flow: every student's lab is up and sending
        kernel = [_pss(p.pid) for p in procs]
        lab = [sum(_pss(q) for q in limits.pids(u) if q != p.pid) for u, p in zip(users, procs, strict=True)]
        results = []
        for u, p in zip(users, procs, strict=True):
            out, err = p.communicate(timeout=seconds + 120)
            if not out.strip():
                raise RuntimeError(f"{u} reported nothing: {err[-500:]}")
            results.append(json.loads(out.strip().splitlines()[-1]))
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()  # our own child, by PID
                p.wait(10)
        for u in users:
            for _ in range(50):
                if not limits.pids(u):
                    break
                time.sleep(0.1)
            limits.remove(u)
    whole = all(r["received"] == r["sent"] == r["handled"] == 100 * seconds and r["unseen"] == 0 for r in results)
    return {"students": n, "whole": whole, "labs_up_s": round(up, 1),
            "worst_received": min(r["received"] for r in results), "unseen": sum(r["unseen"] for r in results),
            "kernel_pss_mib": round(statistics.median(kernel) / 2**20, 1),
            "lab_pss_mib": round(statistics.median(lab) / 2**20, 1)}  # fmt: skip


def idle_costs(user: str) -> dict:
    """PSS of an idle JupyterLab server and of an idle ipykernel, run as ``user``."""
    out = {}
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    root = tempfile.mkdtemp(prefix="pktlab-scale-")
    os.chmod(root, 0o777)
    server = _as(user, [sys.executable, "-m", "jupyter", "lab", "--no-browser", f"--port={port}",
                        f"--notebook-dir={root}", "--IdentityProvider.token=x", "--LabApp.news_url="],
                 stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    kernel = _as(user, [sys.executable, "-m", "ipykernel_launcher", "-f", f"{root}/kernel.json"],
                 stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    try:
        time.sleep(8)  # both idle, imports done
        out["server_pss_mib"] = round(_pss(server.pid) / 2**20, 1)
        out["ipykernel_pss_mib"] = round(_pss(kernel.pid) / 2**20, 1)
        # the same kernel once a student's first cells ran: pktlab loaded, a lab up, a session with a handler
        from jupyter_client import BlockingKernelClient

        client = BlockingKernelClient(connection_file=f"{root}/kernel.json")
        client.load_connection_file()
        client.start_channels()
        try:
            client.wait_for_ready(timeout=30)
            reply = client.execute_interactive(
                "import pktlab\nlab = pktlab.Lab()\ns = pktlab.attach(1, rule='-p udp', netns=lab.server)\n"
                "s.add_handler(lambda pkt: None, 'look')\nr = lab.udp(100, rate=100)", timeout=60)
            assert reply["content"]["status"] == "ok", reply["content"]
            time.sleep(2)
            out["kernel_with_lab_pss_mib"] = round(_pss(kernel.pid) / 2**20, 1)
            out["its_lab_pss_mib"] = round(sum(_pss(q) for q in _descendants(kernel.pid)) / 2**20, 1)
            client.execute_interactive("s.detach(); lab.down()", timeout=60)
        finally:
            client.stop_channels()
    finally:
        for p in (server, kernel):
            p.terminate()  # our own children, by PID
            try:
                p.wait(20)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait(5)
        subprocess.run(["rm", "-rf", root], check=False)
    return out


def main() -> int:
    if os.geteuid() != 0:
        print("bench_hub_scale: run as root (it makes the students' accounts)", file=sys.stderr)
        return 2
    top = int(sys.argv[1]) if len(sys.argv) > 1 else 60
    inc = int(sys.argv[2]) if len(sys.argv) > 2 else 10
    seconds = int(sys.argv[3]) if len(sys.argv) > 3 else 10
    limits = StudentLimits(group=GROUP, cpu_max=1.0)
    made = []
    try:
        idle = idle_costs(_user(1))
        print(json.dumps(idle), flush=True)
        n = inc
        while n <= top:
            r = step(n, seconds, limits)
            made = list(range(1, n + 1))
            print(json.dumps(r), flush=True)
            if not r["whole"]:
                break
            n += inc
    finally:
        for i in range(1, max(made, default=1) + 1):
            name = f"{PREFIX}{i:02d}"
            for _ in range(100):  # a lab helper still ending
                if subprocess.run(["pgrep", "-u", name], capture_output=True).returncode != 0:
                    break
                time.sleep(0.1)
            subprocess.run(["userdel", name], capture_output=True, check=False)
        for d in limits.dirs("x"):
            try:
                d.parent.rmdir()
            except OSError:
                pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
