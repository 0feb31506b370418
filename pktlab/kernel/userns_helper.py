"""The lab helper of user-namespace mode: runs as root of a user namespace the user owns.

Started by :class:`pktlab.kernel.userns.UserRealm` as
``unshare --user --map-root-user --net --mount python -m pktlab.kernel.userns_helper FD PID``.
Inside, pktlab's root mode is the right one: the helper sets ``PKTLAB_PRIVILEGE=root`` and runs
each call with :func:`pktlab.kernel.netns.call_in` (a thread that enters the host).  It ends
when its control socket reads EOF (the notebook kernel ended, even by ``kill -9``), on SIGTERM
(its parent-death signal) or when told to, and kills what runs in its namespaces first.
"""

from __future__ import annotations

import ctypes
import os
import select
import signal
import socket
import subprocess
import sys
import time
from typing import Any

PR_SET_PDEATHSIG = 1
RUN_DIR = "/run"


def namespace_ids() -> set[tuple[int, int]]:
    """(device, inode) of every namespace under /run/netns of this helper."""
    from .netns import NETNS_DIR

    out = set()
    for name in _names(NETNS_DIR):
        try:
            st = os.stat(os.path.join(NETNS_DIR, name))
        except OSError:
            continue
        out.add((st.st_dev, st.st_ino))
    return out


def kill_in_namespaces(sig: int = signal.SIGKILL) -> int:
    """Send ``sig`` to every process in one of the helper's network namespaces or in its user namespace; how many.

    The user namespace catches a program on its way in (``nsenter`` has entered it, ``ip netns exec`` has
    not yet entered the host).
    """
    ids = namespace_ids()
    me = os.stat("/proc/self/ns/user")
    n = 0
    for pid in filter(str.isdigit, os.listdir("/proc")):
        if int(pid) == os.getpid():
            continue
        try:
            net = os.stat(f"/proc/{pid}/ns/net")
            user = os.stat(f"/proc/{pid}/ns/user")
            if (net.st_dev, net.st_ino) in ids or (user.st_dev, user.st_ino) == (me.st_dev, me.st_ino):
                os.kill(int(pid), sig)
                n += 1
        except OSError:  # ended meanwhile, or not ours
            continue
    return n


def kill_until_quiet(quiet: float = 0.3, most: float = 3.0) -> None:
    """Kill what runs in the helper's namespaces until none has been seen for ``quiet`` s (at most ``most`` s).

    A program the notebook kernel started just before it died may still be inside ``nsenter`` (it holds the
    namespaces open and enters them a moment later): scanning once would miss it.
    """
    end = time.monotonic() + most
    calm_since = time.monotonic()
    while time.monotonic() < end:
        if kill_in_namespaces():
            calm_since = time.monotonic()
        elif time.monotonic() - calm_since >= quiet:
            return
        time.sleep(0.02)


def _names(path: str) -> list[str]:
    try:
        return sorted(os.listdir(path))
    except FileNotFoundError:
        return []


def _serve(sock: socket.socket) -> None:
    from . import netns
    from .userns import recv_msg, send_msg, take_sockets

    while not _TERM:
        if not select.select([sock], [], [], 0.5)[0]:
            continue
        got = recv_msg(sock)
        if got is None:
            return
        (op, name, fn, args), _ = got
        if op != "call":
            send_msg(sock, ("error", ValueError(f"unknown request {op!r}")))
            continue
        try:
            value = netns.call_in(name, fn, *args, thread=True)
            kind = "ok"
        except BaseException as exc:  # the caller gets it
            value, kind = _portable(exc), "error"
        fds: list[int] = []
        wire = take_sockets(value, fds)
        try:
            send_msg(sock, (kind, wire), fds)
        except Exception as exc:  # an answer that does not pickle
            send_msg(sock, ("error", _portable(exc)))
        finally:
            _close_sockets(value)


def _portable(exc: BaseException) -> BaseException:
    """``exc`` if it survives a pickle round trip, else a LabError with its text."""
    import pickle

    from ..errors import LabError

    try:
        pickle.loads(pickle.dumps(exc))
        return exc
    except Exception:
        return LabError(f"{type(exc).__name__}: {exc}")


def _close_sockets(value: Any) -> None:
    if isinstance(value, socket.socket):
        value.close()
    elif isinstance(value, tuple | list):
        for v in value:
            _close_sockets(v)
    elif isinstance(value, dict):
        for v in value.values():
            _close_sockets(v)


_TERM: list[int] = []  # the parent-death signal came: serve no more (a flag, so that it never cuts the cleanup short)


def _on_term(signum: int, frame: Any) -> None:
    _TERM.append(signum)


def main(argv: list[str]) -> int:
    fd, parent = int(argv[1]), int(argv[2])
    os.environ["PKTLAB_PRIVILEGE"] = "root"  # in here, this process is root (of its own user namespace)
    signal.signal(signal.SIGTERM, _on_term)
    ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
    if os.getppid() != parent:  # the kernel ended before the signal was set
        return 1
    sock = socket.socket(fileno=fd)
    subprocess.run(["mount", "-t", "tmpfs", "-o", "mode=0755", "pktlab-run", RUN_DIR], check=True,
                   stdout=subprocess.DEVNULL)  # fmt: skip
    from .userns import send_msg

    send_msg(sock, ("ready",))
    devnull = os.open(os.devnull, os.O_WRONLY)  # no one reads our stderr any more: never block on it
    os.dup2(devnull, 2)
    try:
        _serve(sock)
    finally:
        kill_until_quiet()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
