"""A Jupyter server of the test's own on loopback, and what the browser tests ask it."""

from __future__ import annotations

import json
import os
import secrets
import shutil
import socket
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from pktlab.lab.network import wait_until

REPO = Path(__file__).resolve().parents[2]
RUNUSER = shutil.which("runuser", path="/usr/sbin:/usr/bin:/sbin:/bin") or "runuser"


def kernel_ready(base: str, token: str, notebook: str) -> bool:
    """True once the server has a session for ``notebook`` whose kernel is idle with a browser connected."""
    try:
        with urllib.request.urlopen(f"{base}/api/sessions?token={token}", timeout=2) as r:
            sessions = json.load(r)
    except OSError:
        return False
    return any(
        s["path"].endswith(notebook) and s["kernel"]["execution_state"] == "idle" and s["kernel"]["connections"]
        for s in sessions
    )


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


STUDENT = "pktlab-student"


def server_user() -> str | None:
    """Who runs the test's Jupyter server: as root, the ordinary user the set-up made (notebooks live through user
    namespaces, as on a hub); None (this process's user) when not root, or when that user cannot read this
    checkout (scripts/test_as_user.sh then runs the browser tests from a readable copy)."""
    if os.geteuid() != 0:
        return None
    import pwd

    try:
        pwd.getpwnam(STUDENT)
    except KeyError:
        return None
    probe = subprocess.run([RUNUSER, "-u", STUDENT, "--", sys.executable, "-c", "import pktlab"], cwd="/",
                           capture_output=True, env={"PYTHONPATH": str(REPO)})  # fmt: skip
    return STUDENT if probe.returncode == 0 else None


def lab_path(where: dict[str, Any], role: str) -> str:
    """A namespace of a lab made by the notebook's kernel, as this (root) process can enter it: by path when a
    lab helper of another user owns it (``/proc/PID/root/run/netns/NAME``), else by name."""
    name = where[role]
    return f"/proc/{where['helper']}/root/run/netns/{name}" if where.get("helper") else name


@contextmanager
def jupyter_server(
    app: str, root: Path, env_extra: dict[str, str] | None = None, user: str | None = None
) -> Iterator[tuple[str, str, Path, str]]:
    """JupyterLab 4 (``app="lab"``) or Notebook 7 serving ``root``; yields (base URL, token, root, app).

    Settings, workspaces and runtime files live in ``root``, not the user's ~/.jupyter, so no workspace of an
    earlier run is restored and no first-run prompt (news, updates) opens over the page.  ``user``: the server
    (and its kernels) run as that ordinary user, who is given ``root``.
    """
    port, token = free_port(), secrets.token_hex(16)
    base = f"http://127.0.0.1:{port}"

    def up() -> bool:
        try:
            with urllib.request.urlopen(f"{base}/api/status?token={token}", timeout=1) as r:
                return r.status == 200
        except OSError:
            return False

    env = dict(os.environ, **(env_extra or {}))
    prefix: list[str] = []
    if user is not None:
        import pwd

        home = pwd.getpwnam(user).pw_dir
        env = {k: v for k, v in env.items() if not k.startswith(("PKTLAB_PRIVILEGE", "JUPYTER", "PYTHON"))}
        env.update(HOME=home, USER=user, LOGNAME=user, PYTHONDONTWRITEBYTECODE="1")
        prefix = [RUNUSER, "-u", user, "--"]
    for var, sub in (("JUPYTERLAB_SETTINGS_DIR", "settings"), ("JUPYTERLAB_WORKSPACES_DIR", "workspaces"),
                     ("JUPYTER_RUNTIME_DIR", "runtime")):  # fmt: skip
        env[var] = str(root / sub)
        (root / sub).mkdir(exist_ok=True)
    quiet = root / "settings" / "@jupyterlab" / "apputils-extension"
    quiet.mkdir(parents=True, exist_ok=True)
    (quiet / "notification.jupyterlab-settings").write_text(
        json.dumps({"fetchNews": "false", "checkForUpdates": False})
    )
    served = None
    if user is not None:  # pytest's folders are root's alone: the user's server gets a copy it owns
        import tempfile

        served = Path(tempfile.mkdtemp(prefix="pktlab-jupyter-", dir="/tmp"))
        shutil.copytree(root, served, dirs_exist_ok=True)
        root = served
        subprocess.run(["chown", "-R", f"{user}:", str(root)], check=True)
        for var, sub in (("JUPYTERLAB_SETTINGS_DIR", "settings"), ("JUPYTERLAB_WORKSPACES_DIR", "workspaces"),
                         ("JUPYTER_RUNTIME_DIR", "runtime")):  # fmt: skip
            env[var] = str(root / sub)
    with open(root / "jupyter.log", "w") as log:
        proc = subprocess.Popen(
            [*prefix, sys.executable, "-m", "jupyter", app, "--no-browser", "--ip=127.0.0.1", f"--port={port}",
             f"--IdentityProvider.token={token}", f"--ServerApp.root_dir={root}", "--allow-root",
             *(["--LabApp.news_url=", "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate"]
               if app == "lab" else [])],
            stdout=log, stderr=subprocess.STDOUT, cwd=root, env=env,
        )  # fmt: skip
        try:
            assert wait_until(up, 60, 0.1), (root / "jupyter.log").read_text()[-2000:]
            yield base, token, root, app
        finally:
            proc.terminate()  # our own child, by PID; it shuts its kernels down
            try:
                proc.wait(20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)
            if served is not None:
                shutil.rmtree(served, ignore_errors=True)



def queue_diagnostics(ns: str) -> str:
    """Where the packets of a lab server's queue could have gone, for a failure message.

    The server namespace's queue rules with their counters and the queues bound there and in
    the host's namespace (``/proc/net/netfilter/nfnetlink_queue``: queue, netlink port id,
    waiting, copy mode, range, dropped, user dropped, last id): a rule that counted packets
    while no reader was bound in that namespace passed them unseen (``--queue-bypass``).
    """
    from pktlab.kernel import netns

    def queues(where: str | None) -> str:
        return netns.run(where, ["cat", "/proc/net/netfilter/nfnetlink_queue"]).stdout.strip() or "none"

    rules = [line for line in netns.run(ns, ["iptables-save", "-c"]).stdout.splitlines() if "NFQUEUE" in line]
    return f"queue rules in {ns}: {rules}; queues bound there: {queues(ns)}; in the host namespace: {queues(None)}"
