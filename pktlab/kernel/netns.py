"""Doing things inside a network namespace without moving the whole process.

A network namespace is per thread on Linux: a thread that calls ``setns``
creates its sockets (netlink ones included) in that namespace while the
rest of the process stays where it was.  pktlab uses this for the queue
reader (which lives in the lab's namespace for its whole life) and for
short look-ups such as reading ``/proc/thread-self/net/...``.  Commands
run through ``ip netns exec``.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import threading
from collections.abc import Callable, Sequence
from typing import Any, Protocol, TypeVar

from ..errors import LabError, MissingToolError

T = TypeVar("T")

NETNS_DIR = "/var/run/netns"


class Place(Protocol):
    """Something that lives in a network namespace: a lab host, or a lab (its server).

    ``netns_and_lab()`` gives the namespace's name and the lab it belongs to
    (what a session attached there is tracked by); sessions take a place
    without knowing labs.
    """

    def netns_and_lab(self) -> tuple[str, Any]: ...


def enter(name: str | None) -> None:
    """Move the *calling thread* into the named namespace (``None``: stay)."""
    if name is None:
        return
    from pyroute2 import netns as _netns

    if not os.path.exists(os.path.join(NETNS_DIR, name)):
        raise LabError(
            f"network namespace {name!r} does not exist; bring the lab up first (pktlab.Lab() or %pktlab lab up)"
        )
    _netns.setns(name, flags=0)


def in_thread(fn: Callable[..., T], *args: Any) -> T:
    """Run ``fn(*args)`` in a short-lived thread of its own and return its result.

    pyroute2 drives an asyncio loop of its own; a thread keeps it away from the
    loop already running in a Jupyter kernel's main thread.
    """
    return call_in(None, fn, *args, thread=True)


def call_in(name: str | None, fn: Callable[..., T], *args: Any, thread: bool = False) -> T:
    """Run ``fn(*args)`` inside namespace ``name``, in a short-lived thread unless ``name`` is None."""
    if name is None and not thread:
        return fn(*args)
    box: dict[str, Any] = {}

    def body() -> None:
        try:
            enter(name)
            box["value"] = fn(*args)
        except BaseException as exc:  # handed back to the caller below
            box["error"] = exc

    t = threading.Thread(target=body, name=f"pktlab-netns-{name or 'worker'}", daemon=True)
    t.start()
    t.join()
    if "error" in box:
        raise box["error"]
    return box["value"]


def argv_in(name: str | None, argv: Sequence[str]) -> list[str]:
    """The argv that runs ``argv`` inside namespace ``name``."""
    return ["ip", "netns", "exec", name, *argv] if name else list(argv)


def run(
    name: str | None,
    argv: Sequence[str],
    *,
    input: str | None = None,
    timeout: float = 30.0,
    check: bool = True,
) -> subprocess.CompletedProcess[str]:
    """Run a command in a namespace and return its completed process."""
    tool = argv[0]
    if shutil.which(tool) is None and not os.path.isabs(tool):
        raise MissingToolError(f"{tool} is not installed; run `make setup` (or apt-get install {tool})")
    proc = subprocess.run(
        argv_in(name, argv),
        input=input,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    if check and proc.returncode != 0:
        raise subprocess.CalledProcessError(proc.returncode, proc.args, proc.stdout, proc.stderr)
    return proc


def pids_in(name: str) -> list[int]:
    """The processes whose network namespace is the named one (found through /proc)."""
    try:
        target = os.stat(os.path.join(NETNS_DIR, name))
    except FileNotFoundError:
        return []
    out = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            st = os.stat(f"/proc/{pid}/ns/net")
        except OSError:  # ended meanwhile, or not ours to look at
            continue
        if (st.st_ino, st.st_dev) == (target.st_ino, target.st_dev):
            out.append(int(pid))
    return out


def list_names() -> list[str]:
    """Names of the namespaces under /var/run/netns."""
    try:
        return sorted(os.listdir(NETNS_DIR))
    except FileNotFoundError:
        return []
