"""Labs for an ordinary user: a helper in a user namespace of its own owns the lab's namespaces.

A process outside a user namespace cannot ``setns`` a thread into a network namespace that
the user namespace owns, but as the namespace's owner it holds every capability *in* it:
sockets made inside (a queue's netlink socket, raw sockets, the sockets NetPIPE measures with)
and handed out over a Unix socket work from outside, verdicts included.  So:

* :class:`UserRealm` starts the helper (``unshare --user --map-root-user --net --mount``, a
  tmpfs on ``/run`` for ``ip netns`` and the xtables lock) from a thread that lives as long as
  the process, and talks to it over a socket pair;
* ``call(name, fn, *args)`` runs a module-level function inside host ``name`` (or in the
  helper itself) and returns its result; sockets in the result come back as file descriptors
  (SCM_RIGHTS) and are sockets again here;
* programs start through ``nsenter`` into the helper's user and mount namespaces, then
  ``ip netns exec``: they are this process's children, with the PIDs the lab kills.

The helper ends with this process: its control socket reads EOF, and it has a parent-death
signal; either way it kills what runs in its namespaces first, so the namespaces go with it.
"""

from __future__ import annotations

import os
import pickle
import queue
import select
import socket
import struct
import subprocess
import sys
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

from ..errors import LabError, PrivilegeError

T = TypeVar("T")

HELPER_MODULE = "pktlab.kernel.userns_helper"
_HEADER = struct.Struct("!Q")
MAX_FDS = 16  # file descriptors one answer may carry
CALL_TIMEOUT = 120.0  # seconds a call into the helper may take before the helper is declared stuck


@dataclass(frozen=True)
class PassedFd:
    """Stands for a socket in a message; the socket itself travels as the ``index``-th descriptor."""

    index: int


# -- the wire: length-prefixed pickles with descriptors beside the first byte ------------------------------------
def send_msg(sock: socket.socket, obj: Any, fds: Sequence[int] = ()) -> None:
    """Send one message (a pickle) and the descriptors ``fds`` with it."""
    body = pickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL)
    head = _HEADER.pack(len(body))
    socket.send_fds(sock, [head], list(fds))
    sock.sendall(body)


def recv_msg(sock: socket.socket, timeout: float | None = None) -> tuple[Any, list[int]] | None:
    """One message and the descriptors that came with it; None at end of stream."""
    if timeout is not None:
        r, _, _ = select.select([sock], [], [], timeout)
        if not r:
            raise TimeoutError(f"no answer within {timeout:g} s")
    head, fds, _, _ = socket.recv_fds(sock, _HEADER.size, MAX_FDS)
    if not head:
        return None
    while len(head) < _HEADER.size:
        more = sock.recv(_HEADER.size - len(head))
        if not more:
            return None
        head += more
    (n,) = _HEADER.unpack(head)
    chunks, got = [], 0
    while got < n:
        chunk = sock.recv(min(n - got, 1 << 20))
        if not chunk:
            return None
        chunks.append(chunk)
        got += len(chunk)
    return pickle.loads(b"".join(chunks)), fds


def take_sockets(value: Any, fds: list[int]) -> Any:
    """``value`` with each socket in it (nested in tuples, lists, dicts) replaced by a :class:`PassedFd`."""
    if isinstance(value, socket.socket):
        fds.append(value.fileno())
        return PassedFd(len(fds) - 1)
    if isinstance(value, tuple | list):
        return type(value)(take_sockets(v, fds) for v in value)
    if isinstance(value, dict):
        return {k: take_sockets(v, fds) for k, v in value.items()}
    return value


def give_sockets(value: Any, fds: list[int]) -> Any:
    """The inverse of :func:`take_sockets` on the receiving side: descriptors become sockets again."""
    if isinstance(value, PassedFd):
        return socket.socket(fileno=fds[value.index])
    if isinstance(value, tuple | list):
        return type(value)(give_sockets(v, fds) for v in value)
    if isinstance(value, dict):
        return {k: give_sockets(v, fds) for k, v in value.items()}
    return value


# -- starting helpers from one long-lived thread ---------------------------------------------------------------
class _Spawner:
    """Starts helpers from a thread that lives as long as the process.

    A parent-death signal fires when the *thread* that forked the child ends, not the process:
    a helper forked by a short-lived thread (a lab made in a worker thread) would be killed
    with that thread.
    """

    def __init__(self) -> None:
        self._jobs: queue.Queue[tuple[Callable[[], Any], queue.Queue[Any]]] = queue.Queue()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    def run(self, fn: Callable[[], T]) -> T:
        with self._lock:
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._serve, name="pktlab-userns-spawner", daemon=True)
                self._thread.start()
        box: queue.Queue[Any] = queue.Queue()
        self._jobs.put((fn, box))
        ok, value = box.get()
        if not ok:
            raise value
        return value

    def _serve(self) -> None:
        while True:
            fn, box = self._jobs.get()
            try:
                box.put((True, fn()))
            except BaseException as exc:  # handed to the caller
                box.put((False, exc))


_SPAWNER = _Spawner()


class UserRealm:
    """One helper process and the lab namespaces it owns (see the module's docstring)."""

    def __init__(self, start_timeout: float = 20.0) -> None:
        self.names: set[str] = set()
        self._lock = threading.Lock()
        self._closed = False
        parent, child = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        argv = [
            "unshare", "--user", "--map-root-user", "--net", "--mount", "--propagation", "private",
            sys.executable, "-m", HELPER_MODULE, str(child.fileno()), str(os.getpid()),
        ]  # fmt: skip
        env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in sys.path if p))
        try:
            self.proc: subprocess.Popen[bytes] = _SPAWNER.run(
                lambda: subprocess.Popen(
                    argv, pass_fds=[child.fileno()], stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                    stderr=subprocess.PIPE, env=env, start_new_session=True,
                )
            )  # fmt: skip
        except FileNotFoundError:
            parent.close()
            raise PrivilegeError("unshare is not installed (Debian package util-linux); run `make setup`") from None
        finally:
            child.close()
        self._sock = parent
        try:
            got = recv_msg(parent, start_timeout)
        except TimeoutError:
            got = None
        if got is None or got[0] != ("ready",):
            self._reap()
            err = self.proc.stderr.read().decode(errors="replace").strip() if self.proc.stderr else ""
            raise PrivilegeError(
                "the lab helper could not start in a user namespace of its own "
                f"({err.splitlines()[-1] if err else 'no output'}); run `pktlab doctor` to see why"
            )
        self.pid = self.proc.pid

    # -- life -------------------------------------------------------------------------------------------------
    @property
    def alive(self) -> bool:
        return not self._closed and self.proc.poll() is None

    def close(self) -> None:
        """End the helper: it kills what runs in its namespaces, and the namespaces go with it."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            try:
                self._sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            self._sock.close()
        self._reap()
        self.names.clear()

    def _reap(self) -> None:
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()  # it started no later than us and is ours: by PID
            self.proc.wait(timeout=5)

    # -- calls ------------------------------------------------------------------------------------------------
    def call(self, name: str | None, fn: Callable[..., T], *args: Any) -> T:
        """``fn(*args)`` inside host ``name`` (None: in the helper, in none of the hosts)."""
        with self._lock:
            if self._closed or self.proc.poll() is not None:
                raise LabError("the lab helper has ended (its labs are gone); make a new lab with pktlab.Lab()")
            try:
                send_msg(self._sock, ("call", name, fn, args))
                got = recv_msg(self._sock, CALL_TIMEOUT)
            except (pickle.PicklingError, AttributeError, TypeError) as exc:
                raise LabError(f"cannot hand {fn!r} to the lab helper ({exc}); pass a module-level function") from None
            except (OSError, TimeoutError) as exc:
                raise LabError(f"the lab helper did not answer ({exc}); make a new lab with pktlab.Lab()") from None
        if got is None:
            raise LabError("the lab helper ended during a call; its labs are gone, make a new one with pktlab.Lab()")
        (kind, value), fds = got
        value = give_sockets(value, fds)
        if kind == "error":
            raise value
        return value

    def argv_in(self, name: str, argv: Sequence[str]) -> list[str]:
        """The argv that runs ``argv`` inside host ``name``, as this process's child."""
        return ["nsenter", "-t", str(self.pid), "--user", "--mount", "--preserve-credentials",
                "ip", "netns", "exec", name, *argv]  # fmt: skip
