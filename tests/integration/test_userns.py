"""User-namespace mode seen from outside: two ordinary users at once, and a kernel killed mid-traffic.

Run as root (they switch to the two users the set-up makes); the rest of the live suite runs as an ordinary
user through ``scripts/test_as_user.sh``.
"""

from __future__ import annotations

import json
import os
import pwd
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import root_only

PROGRAM = Path(__file__).with_name("student_program.py")
REPO = Path(__file__).resolve().parents[2]
STUDENTS = ("pktlab-student", "pktlab-student2")
RUNUSER = shutil.which("runuser", path="/usr/sbin:/usr/bin:/sbin:/bin") or "runuser"


def _user(name: str) -> pwd.struct_passwd:
    try:
        return pwd.getpwnam(name)
    except KeyError:
        pytest.skip(f"user {name} is missing; `make setup` as root creates it")


def _as(name: str, *args: str) -> subprocess.Popen[str]:
    u = _user(name)
    argv = [RUNUSER, "-u", name, "--", "env", "-i", f"HOME={u.pw_dir}", "PATH=/usr/bin:/bin:/usr/sbin:/sbin",
            "PYTHONDONTWRITEBYTECODE=1", f"PYTHONPATH={REPO}", sys.executable, str(PROGRAM), *args]  # fmt: skip
    return subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            cwd="/")  # fmt: skip


def _readable_by_students() -> None:
    probe = subprocess.run([RUNUSER, "-u", STUDENTS[0], "--", sys.executable, "-c", "import pktlab"],
                           capture_output=True, text=True, env={"PYTHONPATH": str(REPO)}, cwd="/")  # fmt: skip
    if probe.returncode != 0:
        pytest.skip("this checkout is not readable by ordinary users; scripts/test_as_user.sh runs this test "
                    f"from a readable copy ({probe.stderr.strip()[-200:]})")  # fmt: skip


def _host_network() -> dict[str, str]:
    """The initial namespace's ruleset, links and routes, as text."""
    out = {}
    commands = {"nft": ["nft", "list", "ruleset"], "links": ["ip", "-d", "link", "show"],
                "routes": ["ip", "route", "show", "table", "all"], "routes6": ["ip", "-6", "route"]}  # fmt: skip
    for key, argv in commands.items():
        out[key] = subprocess.run(argv, capture_output=True, text=True, check=True).stdout
    return out


def _processes_of(uid: int) -> list[int]:
    """The user's processes that still run (a zombie has released its namespaces; its reaping is init's job)."""
    out = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            state = Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0]
            if os.stat(f"/proc/{pid}").st_uid == uid and state != "Z":
                out.append(int(pid))
        except (FileNotFoundError, ProcessLookupError):
            continue
    return out


@root_only("switches to two ordinary users (they run in user-namespace mode)")
def test_two_ordinary_users_each_see_only_their_own_lab_and_the_host_network_does_not_change() -> None:
    for s in STUDENTS:
        _user(s)
    _readable_by_students()
    before = _host_network()
    procs = [_as(s, "share") for s in STUDENTS]
    try:
        names = [json.loads(p.stdout.readline() or "{}").get("netns") for p in procs]
        assert all(names), [p.stderr.read() for p in procs if p.poll() is not None]
        for p, other in zip(procs, reversed(names), strict=True):
            p.stdin.write(other + "\n")
            p.stdin.flush()
        results = []
        for p in procs:
            out, err = p.communicate(timeout=120)
            assert p.returncode == 0, err[-2000:]
            results.append(json.loads(out.strip().splitlines()[-1]))
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    for r in results:
        assert r["mode"] == "userns"
        assert r["received"] == 50 and r["queued"] == 50 and r["dst"] == ["10.77.1.2"]  # its own packets, all
        ns = r["refused"]
        assert ns["other's namespace"] and "is not one of your labs" in ns["other's namespace"]
        assert ns["other's commands"] and "is not one of your labs" in ns["other's commands"]
        assert ns["host"] and "needs root" in ns["host"] and "pktlab.Lab()" in ns["host"]
    assert _host_network() == before


@root_only("switches to two ordinary users (they run in user-namespace mode)")
def test_killing_an_ordinary_users_kernel_mid_traffic_leaves_nothing() -> None:
    u = _user(STUDENTS[1])
    _readable_by_students()
    assert _processes_of(u.pw_uid) == [], "the student has processes before the test"
    p = _as(STUDENTS[1], "flood")
    try:
        line = p.stdout.readline()
        assert line, p.stderr.read()[-2000:]
        helper = json.loads(line)["helper"]
        kernel = [pid for pid in _processes_of(u.pw_uid) if Path(f"/proc/{pid}/cmdline").read_bytes().endswith(
            b"flood\0")]  # fmt: skip
        assert len(kernel) == 1 and helper in _processes_of(u.pw_uid)
        os.kill(kernel[0], signal.SIGKILL)
        deadline = time.monotonic() + 20
        while _processes_of(u.pw_uid) and time.monotonic() < deadline:
            time.sleep(0.05)  # the helper reads EOF, kills what runs in its namespaces, and ends
        assert _processes_of(u.pw_uid) == [], [Path(f"/proc/{q}/cmdline").read_bytes() for q in _processes_of(u.pw_uid)]
    finally:
        p.kill()
        p.wait()
    left = [str(f) for d in ("/run", "/tmp", "/var/tmp", "/dev/shm") for f in Path(d).rglob("*pktlab*")
            if f.exists() and f.stat().st_uid == u.pw_uid]  # fmt: skip
    assert left == []
    # no mount namespace of the helper is left: every process is gone, and with them their namespaces
    assert not [m for m in Path("/proc/self/mountinfo").read_text().splitlines() if "pktlab-run" in m]
