"""A class on a real JupyterHub (scripts/hub.sh): students log in with headless Chromium and run notebook 01 live
at the same time, each in their own user namespaces; one cannot reach another's files, kernels or the machine's
queues; and when the hub stops nothing of any student is left.

The hub runs as root (it makes the students' accounts and runs their servers as them), on loopback; the
accounts are this test's own (``pktlab-hubt01`` ...), removed at the end whatever happened.
"""

from __future__ import annotations

import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import nbformat
import pytest

from pktlab.hub.limits import StudentLimits
from pktlab.lab.network import wait_until
from tests.browser.test_notebook_walk import OUTPUTS_JS, PROMPTS_JS
from tests.conftest import _is_root, needs_live, pktlab_rules
from tests.notebooks.expected import check_live_output

REPO = Path(__file__).resolve().parents[2]
PROXY = REPO / ".venv" / "node" / "node_modules" / ".bin" / "configurable-http-proxy"
PREFIX, GROUP, TEACHER = "pktlab-hubt", "pktlab-hubtest", "pktlab-hubt-teacher"
OUT = REPO / "test-output" / "hub"
HELDBACK = REPO / "notebooks" / "assignments" / "firewall" / "grading" / "heldback.pcap"

pytestmark = [
    needs_live,
    pytest.mark.skipif(not _is_root(), reason="the hub runs as root: it makes accounts and runs servers as them"),
    pytest.mark.skipif(shutil.which("chromium") is None, reason="Debian's chromium is not installed"),
    pytest.mark.skipif(not PROXY.exists(), reason="configurable-http-proxy is not installed (scripts/setup.sh)"),
]


def _ports() -> int:
    """A port with the two after it free too (the hub's proxy, the hub itself, the proxy's API)."""
    for _ in range(50):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        if port > 65000:
            continue
        try:
            for p in (port + 1, port + 2):
                with socket.socket() as s:
                    s.bind(("127.0.0.1", p))
            return port
        except OSError:
            continue
    raise RuntimeError("no three free ports in a row on loopback")


def _remove_accounts(n: int) -> None:
    for user in [f"{PREFIX}{i:02d}" for i in range(1, n + 1)] + [TEACHER]:
        subprocess.run(["userdel", "--remove", user], capture_output=True, check=False)
    subprocess.run(["groupdel", GROUP], capture_output=True, check=False)


@contextmanager
def running_hub(students: int, after: dict[str, bool] | None = None) -> Iterator[tuple[str, dict[str, str], Path]]:
    """scripts/hub.sh with this test's accounts; yields (base URL, {student: password}, state folder).

    ``after["parent cgroup left"]`` says, once the hub stopped, whether it left the students' parent cgroup.
    """
    _remove_accounts(students)  # an earlier run killed before its clean-up
    state = Path(tempfile.mkdtemp(prefix="pktlab-hub-", dir="/var/tmp"))
    state.chmod(0o755)  # the shared folder (nbgrader's exchange) is in it; the hub's own state stays root's
    port = _ports()
    base = f"http://127.0.0.1:{port}"
    env = {**os.environ, "STUDENTS": str(students), "PKTLAB_HUB_PREFIX": PREFIX, "PKTLAB_HUB_GROUP": GROUP,
           "PKTLAB_HUB_TEACHER": TEACHER, "PKTLAB_HUB_STATE": str(state / "hub"),
           "PKTLAB_HUB_SHARED": str(state / "shared"), "PKTLAB_HUB_PORT": str(port)}  # fmt: skip
    log = open(state / "hub.log", "w")  # noqa: SIM115 - closed below
    proc = subprocess.Popen(["bash", str(REPO / "scripts" / "hub.sh")], stdout=log, stderr=subprocess.STDOUT,
                            env=env, cwd=REPO)  # fmt: skip

    def up() -> bool:
        try:
            with urllib.request.urlopen(f"{base}/hub/health", timeout=2) as r:
                return r.status == 200
        except OSError:
            return False

    try:
        assert wait_until(lambda: up() or proc.poll() is not None, 300, 0.2) and proc.poll() is None, (
            (state / "hub.log").read_text()[-3000:]
        )
        passwords = dict(line.split() for line in (state / "hub" / "passwords").read_text().splitlines())
        yield base, passwords, state
    finally:
        proc.terminate()  # our own child, by PID: the hub stops every student's server
        try:
            proc.wait(120)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)
        log.close()
        OUT.mkdir(parents=True, exist_ok=True)
        shutil.copy(state / "hub.log", OUT / "hub.log")
        _remove_accounts(students)
        shutil.rmtree(state, ignore_errors=True)
        limits = StudentLimits()
        if after is not None:
            after["parent cgroup left"] = any(d.parent.exists() for d in limits.dirs("-"))
        limits.remove_parent()  # the hub removes it as it ends; a failure before that may not have


def running_as(uid: int) -> list[str]:
    """The processes of ``uid`` that still run (a zombie has ended: init reaps it when it gets to it)."""
    out = subprocess.run(["ps", "-u", str(uid), "-o", "pid=,stat=,args="], capture_output=True, text=True, check=False)
    return [line for line in out.stdout.splitlines() if line.split()[1][0] != "Z"]


def _login(context, base: str, user: str, password: str):  # type: ignore[no-untyped-def]
    page = context.new_page()
    page.goto(f"{base}/hub/login")
    page.fill("#username_input", user)
    page.fill("#password_input", password)
    page.click("#login_submit")
    page.wait_for_url(f"**/user/{user}/lab**", timeout=120_000)  # the hub spawned the student's server
    return page


def _open_and_run(page, base: str, user: str, rel: str) -> None:  # type: ignore[no-untyped-def]
    page.goto(f"{base}/user/{user}/lab/tree/{rel}?reset")  # a fresh workspace: only this notebook open
    page.wait_for_selector(".jp-Notebook", timeout=60_000)

    def kernel_ready() -> bool:
        r = page.request.get(f"{base}/user/{user}/api/sessions")
        return r.ok and any(s["path"].endswith(rel.rpartition("/")[2]) and s["kernel"]["execution_state"] == "idle"
                            and s["kernel"]["connections"] for s in r.json())  # fmt: skip

    assert wait_until(kernel_ready, 60, 0.3), f"{user}: the kernel of {rel} did not connect"
    page.click("div.lm-MenuBar-itemLabel:text-is('Run')")
    page.click("li.lm-Menu-item:has-text('Run All Cells')")
    assert wait_until(lambda: page.evaluate(PROMPTS_JS).count("[*]:") > 0, 30, 0.2), f"{user}: nothing started"


def _finished(page) -> bool:  # type: ignore[no-untyped-def]
    prompts = page.evaluate(PROMPTS_JS)
    return bool(prompts) and "[*]:" not in prompts and all(p[1:-2].isdigit() for p in prompts)


def _outputs(page, user: str) -> str:  # type: ignore[no-untyped-def]
    if not wait_until(lambda: _finished(page), 150, 0.5):
        OUT.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(OUT / f"{user}-failure.png"))
        raise AssertionError(f"{user}: cells not run: {page.evaluate(PROMPTS_JS)}")
    page.wait_for_timeout(500)
    return "\n".join(page.evaluate(OUTPUTS_JS))


ISOLATION = '''import os
import pktlab

def attempt(what, fn):
    try:
        print(what + ": allowed:", fn())
    except Exception as exc:
        print(what + ": refused:", type(exc).__name__)

attempt("read the other student's notebook", lambda: open({other_nb!r}).read()[:20])
attempt("list the other student's home", lambda: os.listdir({other_home!r}))
attempt("enter the other student's kernel's network namespace", lambda: os.open({ns!r}, os.O_RDONLY))
attempt("queue in the machine's own namespace", lambda: pktlab.attach(1, rule="-p udp", allow_host=True))
attempt("read a held-back capture", lambda: open({heldback!r}, "rb").read(4))
named = os.listdir("/run/netns") if os.path.isdir("/run/netns") else []
print("lab namespaces in /run/netns:", sorted(n for n in named if n.startswith("pktlab")))
'''


def _kernel_pids(user: str) -> list[int]:
    out = subprocess.run(["pgrep", "-u", user, "-f", "ipykernel_launcher"], capture_output=True, text=True).stdout
    return [int(p) for p in out.split()]


def test_three_students_run_notebook_01_live_at_once_isolated_and_nothing_is_left(tmp_path: Path) -> None:
    from playwright.sync_api import sync_playwright

    students = [f"{PREFIX}{i:02d}" for i in (1, 2, 3)]
    rules_before = pktlab_rules(None)
    after: dict[str, bool] = {}
    with running_hub(3, after) as (base, passwords, _), sync_playwright() as p:
        offline = ["--proxy-server=http://127.0.0.1:9", "--proxy-bypass-list=127.0.0.1;localhost"]
        browser = p.chromium.launch(executable_path=shutil.which("chromium"), headless=True,
                                    args=["--no-sandbox", *offline])  # fmt: skip
        try:
            pages = {}
            uids = {u: pwd.getpwnam(u).pw_uid for u in students}  # the accounts go with the hub
            for user in students:  # each in a context of its own: its own login cookie
                pages[user] = _login(browser.new_context(viewport={"width": 1400, "height": 1600}), base, user,
                                     passwords[user])  # fmt: skip
            for user in students:  # all three run at the same time
                _open_and_run(pages[user], base, user, "pktlab-notebooks/01-quickstart.ipynb")
            for user in students:
                text = _outputs(pages[user], user)
                assert "Traceback" not in text, f"{user}:\n{text[-3000:]}"
                # exact counts: each record holds its own student's 100 datagrams and nothing of another's
                check_live_output("01-quickstart", text)
                kernels = _kernel_pids(user)
                assert kernels, f"{user}: no kernel of theirs is running"
                with open(f"/proc/{kernels[0]}/cgroup") as f:
                    assert f"/pktlab-hub/{user}" in f.read()  # their share of the machine is bounded

            # student 2 tries what no student may; student 1's kernel is still running
            a, b = students[0], students[1]
            a_home, b_home = pwd.getpwnam(a).pw_dir, pwd.getpwnam(b).pw_dir
            nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(ISOLATION.format(
                other_nb=f"{a_home}/pktlab-notebooks/01-quickstart.ipynb", other_home=a_home,
                ns=f"/proc/{_kernel_pids(a)[0]}/ns/net",
                heldback=str(HELDBACK)))])  # fmt: skip
            nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
            target = Path(b_home) / "pktlab-notebooks" / "isolation.ipynb"
            nbformat.write(nb, target)
            shutil.chown(target, b, GROUP)
            _open_and_run(pages[b], base, b, "pktlab-notebooks/isolation.ipynb")
            text = _outputs(pages[b], b)
            assert "allowed" not in text, text
            for what in ("read the other student's notebook", "list the other student's home",
                         "enter the other student's kernel's network namespace",
                         "queue in the machine's own namespace", "read a held-back capture"):  # fmt: skip
                assert f"{what}: refused" in text, text
            assert "lab namespaces in /run/netns: []" in text, text
            for page in pages.values():
                page.screenshot(path=str(tmp_path / "page.png"))
        finally:
            browser.close()
        limits = StudentLimits()
    # the hub has stopped: nothing of any student is left
    for user in students:
        assert running_as(uids[user]) == [], f"{user} still runs processes"
        assert limits.pids(user) == [] and not any(d.exists() for d in limits.dirs(user))
    assert pktlab_rules(None) == rules_before
    assert after == {"parent cgroup left": False}
    with open("/proc/self/mountinfo") as f:
        assert "pktlab-hidden" not in f.read()
    assert not [n for n in os.listdir("/run/netns") if n.startswith(PREFIX)] if os.path.isdir("/run/netns") else True
