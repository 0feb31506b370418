"""`pktlab doctor`: what this machine allows, for real; --clean removes what dead processes left."""

from __future__ import annotations

import shutil
import subprocess
import sys

import pytest

from pktlab import doctor
from pktlab.kernel import netns
from tests.conftest import needs_live, pktlab_rules

pytestmark = needs_live


def test_doctor_says_live_mode_works_here() -> None:
    report = doctor.run()
    assert report.live, str(report)
    assert [c.name for c in report.checks] == ["kernel", "tools", "privileges", "python packages", "live queue"]
    assert "live mode: labs and NFQUEUE sessions work" in str(report) and report.mode == "live"
    assert report.replay is not None and report.replay.ok
    extras = [(c.name, c.ok) for c in report.extras]
    assert extras == [("drops (pktlab.drops)", True), ("timeline (pktlab.trace)", True)], str(report)


def test_pktlab_replay_forces_replay_mode_on_a_live_machine(monkeypatch: pytest.MonkeyPatch) -> None:
    assert doctor.mode() == "live"
    monkeypatch.setenv("PKTLAB_REPLAY", "1")
    assert doctor.mode() == "replay"


def test_without_cap_net_admin_doctor_says_replay_only_and_why() -> None:
    # root without CAP_NET_ADMIN (the capability removed from the bounding set): the kernel refuses, doctor explains
    out = subprocess.run(
        ["setpriv", "--bounding-set=-net_admin", "--", sys.executable, "-m", "pktlab.cli", "doctor"],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert out.returncode == 1
    assert "FAIL  privileges: running as uid 0 without CAP_NET_ADMIN; run as root (sudo)" in out.stdout
    assert "=> replay only: no live queue here (privileges)" in out.stdout
    assert "ok    replay:" in out.stdout
    code = "import pktlab; print(pktlab.mode())"
    mode = subprocess.run(["setpriv", "--bounding-set=-net_admin", "--", sys.executable, "-c", code],
                          capture_output=True, text=True, timeout=60)  # fmt: skip
    assert mode.stdout.strip() == "replay"


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
    )
    assert out.returncode == 1
    assert "FAIL  privileges: running as uid 65534 without CAP_NET_ADMIN; run as root (sudo)" in out.stdout
    assert "=> replay only: no live queue here (privileges)" in out.stdout and "ok    replay:" in out.stdout
