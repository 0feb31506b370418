"""`pktlab doctor`: what this machine allows, for real; --clean removes what dead processes left."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

import pytest

from pktlab import doctor
from pktlab.kernel import netns, privilege
from tests.conftest import needs_live, needs_root, pktlab_rules, root_only

pytestmark = needs_live


def test_doctor_says_live_mode_works_here_and_which_mode() -> None:
    report = doctor.run()
    assert report.live, str(report)
    assert [c.name for c in report.checks] == ["kernel", "tools", "privileges", "python packages", "live queue"]
    assert "live mode: labs and NFQUEUE sessions work" in str(report) and report.mode == "live"
    assert "and 3 rewritten by a handler" in report.checks[-1].detail
    assert report.replay is not None and report.replay.ok
    extras = [(c.name, c.ok) for c in report.extras]
    root = privilege.current().name == "root"
    assert extras == [("drops (pktlab.drops)", root), ("timeline (pktlab.trace)", root)], str(report)
    privileges = report.checks[2].detail
    if root:
        assert privileges.startswith("root mode: ")
    else:  # what does not work says why, in one sentence each
        assert privileges.startswith("user-namespace mode: ") and "need root" in privileges
        assert all("needs root (an ordinary user cannot attach BPF programs" in c.detail for c in report.extras)


def test_pktlab_replay_forces_replay_mode_on_a_live_machine(monkeypatch: pytest.MonkeyPatch) -> None:
    assert doctor.mode() == "live"
    monkeypatch.setenv("PKTLAB_REPLAY", "1")
    assert doctor.mode() == "replay"


@root_only("takes CAP_NET_ADMIN away to show the doctor without it")
def test_without_cap_net_admin_doctor_takes_user_namespaces_or_says_replay_only_and_why() -> None:
    # root without CAP_NET_ADMIN (the capability removed from the bounding set, as in a container): user namespaces
    out = subprocess.run(
        ["setpriv", "--bounding-set=-net_admin", "--", sys.executable, "-m", "pktlab.cli", "doctor"],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert out.returncode == 0, out.stdout
    assert "ok    privileges: user-namespace mode: uid 0 without CAP_NET_ADMIN" in out.stdout
    # where user namespaces are refused too (PKTLAB_PRIVILEGE=root stands for that): replay only, and why
    env = dict(os.environ, PKTLAB_PRIVILEGE="root")
    out = subprocess.run(
        ["setpriv", "--bounding-set=-net_admin", "--", sys.executable, "-m", "pktlab.cli", "doctor"],
        capture_output=True, text=True, timeout=120, env=env,
    )  # fmt: skip
    assert out.returncode == 1
    assert "FAIL  privileges: PKTLAB_PRIVILEGE=root but this process is uid 0 without CAP_NET_ADMIN" in out.stdout
    assert "=> replay only: no live queue here (privileges)" in out.stdout
    assert "ok    replay:" in out.stdout
    code = "import pktlab; print(pktlab.mode())"
    mode = subprocess.run(["setpriv", "--bounding-set=-net_admin", "--", sys.executable, "-c", code],
                          capture_output=True, text=True, timeout=60, env=env)  # fmt: skip
    assert mode.stdout.strip() == "replay"


@needs_root  # the host's namespaces and rules
def test_doctor_clean_removes_only_dead_processes_leftovers() -> None:
    dead_ns = "pktlab-4194999-1-client"
    dead_tag = "pktlab:4194999:q-gone"
    subprocess.run(["ip", "netns", "add", dead_ns], check=True)
    rule = [
        "INPUT",
        "-i",
        "lo",
        "-p",
        "udp",
        "--dport",
        "39999",
        "-m",
        "comment",
        "--comment",
        dead_tag,
        "-j",
        "NFQUEUE",
        "--queue-num",
        "7",
        "--queue-bypass",
    ]
    subprocess.run(["iptables", "-I", *rule], check=True)
    try:
        out = subprocess.run(
            [sys.executable, "-m", "pktlab.cli", "doctor", "--clean"], capture_output=True, text=True, timeout=120
        )
        assert out.returncode == 0, out.stdout + out.stderr
        assert f"cleaned: namespace {dead_ns}" in out.stdout and f"cleaned: host rule {dead_tag}" in out.stdout
        assert dead_ns not in netns.list_names() and not pktlab_rules(None)
    finally:
        subprocess.run(["ip", "netns", "del", dead_ns], capture_output=True)
        subprocess.run(["iptables", "-D", *rule], capture_output=True)


@root_only("becomes another user to show the doctor without privileges")
def test_doctor_without_privileges_names_the_fix(tmp_path) -> None:
    if shutil.which("setpriv") is None:
        pytest.skip("setpriv (util-linux) is needed to drop privileges")
    out = subprocess.run(
        [
            "setpriv",
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            "--inh-caps=-all",
            sys.executable,
            "-m",
            "pktlab.cli",
            "doctor",
        ],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=tmp_path,
        env=dict(os.environ, PKTLAB_PRIVILEGE="root"),  # as where user namespaces are refused
    )
    assert out.returncode == 1
    assert "FAIL  privileges: PKTLAB_PRIVILEGE=root but this process is uid 65534 without CAP_NET_ADMIN" in out.stdout
    assert "run as root, or allow unprivileged user namespaces (see docs/how-to/without-root.md)" in out.stdout
    assert "=> replay only: no live queue here (privileges)" in out.stdout and "ok    replay:" in out.stdout
