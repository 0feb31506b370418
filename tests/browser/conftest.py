"""A Jupyter server of the test's own on loopback, and what the browser tests ask it."""

from __future__ import annotations

import json
import os
import secrets
import socket
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from pktlab.lab.network import wait_until


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


@contextmanager
def jupyter_server(
    app: str, root: Path, env_extra: dict[str, str] | None = None
) -> Iterator[tuple[str, str, Path, str]]:
    """JupyterLab 4 (``app="lab"``) or Notebook 7 serving ``root``; yields (base URL, token, root, app).

    Settings, workspaces and runtime files live in ``root``, not the user's ~/.jupyter, so no workspace of an
    earlier run is restored and no first-run prompt (news, updates) opens over the page.
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
    for var, sub in (("JUPYTERLAB_SETTINGS_DIR", "settings"), ("JUPYTERLAB_WORKSPACES_DIR", "workspaces"),
                     ("JUPYTER_RUNTIME_DIR", "runtime")):  # fmt: skip
        env[var] = str(root / sub)
        (root / sub).mkdir(exist_ok=True)
    quiet = root / "settings" / "@jupyterlab" / "apputils-extension"
    quiet.mkdir(parents=True, exist_ok=True)
    (quiet / "notification.jupyterlab-settings").write_text(
        json.dumps({"fetchNews": "false", "checkForUpdates": False})
    )
    with open(root / "jupyter.log", "w") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "jupyter", app, "--no-browser", "--ip=127.0.0.1", f"--port={port}",
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
