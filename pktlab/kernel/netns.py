"""Doing things inside a lab host's network namespace, in either privilege mode.

This is the one seam between pktlab and "a place in a lab".  Two implementations sit behind
the same functions, chosen by :mod:`pktlab.kernel.privilege`:

* **root**: namespaces live under ``/var/run/netns``.  A network namespace is per thread on
  Linux: a thread that calls ``setns`` creates its sockets (netlink ones included) there while
  the rest of the process stays where it was (:func:`call_in`); commands run through
  ``ip netns exec``.
* **userns** (an ordinary user): a helper in a user namespace of its own owns the namespaces
  (:class:`pktlab.kernel.userns.UserRealm`); :func:`call_in` runs the (module-level) function
  in the helper, inside the host, and sockets come back as descriptors; commands run through
  ``nsenter`` into the helper's namespaces, then ``ip netns exec``.

Callers name a host by its namespace name; the name says which helper owns it.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import threading
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

from ..errors import LabError, MissingToolError, PrivilegeError

if TYPE_CHECKING:
    from .userns import UserRealm

T = TypeVar("T")

NETNS_DIR = "/var/run/netns"


class Place(Protocol):
    """Something that lives in a network namespace: a lab host, or a lab (its server).

    ``netns_and_lab()`` gives the namespace's name and the lab it belongs to
    (what a session attached there is tracked by); sessions take a place
    without knowing labs.
    """

    def netns_and_lab(self) -> tuple[str, Any]: ...


class _Realms:
    """This process's lab helpers (user-namespace mode) and the namespace names each owns."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.shared: UserRealm | None = None
        self.owner: dict[str, UserRealm] = {}

    def of(self, name: str | None) -> UserRealm | None:
        if name is None:
            return None
        with self.lock:
            return self.owner.get(name)

    def for_new_lab(self) -> UserRealm | None:
        """The helper a new lab's namespaces go to (None: root mode, /var/run/netns)."""
        from . import privilege

        if privilege.require_live("create a lab").name == "root":
            return None
        from .userns import UserRealm

        with self.lock:
            if self.shared is None or not self.shared.alive:
                if self.shared is not None:
                    self._forget(self.shared)
                else:  # ended (and reaped) by this process at exit, not left to init
                    import atexit

                    atexit.register(self.close)
                self.shared = UserRealm()
            return self.shared

    def _forget(self, realm: UserRealm) -> None:
        for n in [n for n, r in self.owner.items() if r is realm]:
            del self.owner[n]

    def close(self) -> None:
        with self.lock:
            realm, self.shared = self.shared, None
            if realm is not None:
                self._forget(realm)
        if realm is not None:
            realm.close()


_REALMS = _Realms()


def helper_for_new_lab() -> UserRealm | None:
    """Where a new lab's namespaces are made: None in root mode, else this process's lab helper (started now)."""
    return _REALMS.for_new_lab()


def prestart_helper() -> None:
    """In user-namespace mode, start this process's lab helper now, in the background.

    The first lab then does not wait for it (a Python start and pktlab's import, ~0.3 s); a failure is
    not lost: the first ``Lab()`` tries again and raises it.
    """
    from ..errors import PktlabError
    from . import privilege

    if privilege.current().name != "userns":
        return

    def start() -> None:
        try:
            _REALMS.for_new_lab()
        except PktlabError:
            pass

    threading.Thread(target=start, name="pktlab-userns-prestart", daemon=True).start()


def helper_pid(name: str) -> int | None:
    """The PID of the helper that owns namespace ``name`` (None: a root-mode namespace)."""
    realm = _REALMS.of(name)
    return realm.pid if realm is not None else None


def queue_may_rewrite(name: str | None) -> bool:
    """False where the kernel refuses a queue verdict's new payload: a namespace of a lab helper.

    Linux drops a queued packet whose verdict carries a new payload when the packet's network
    namespace belongs to a user namespace other than the initial one (``nfqnl_mangle`` answers
    EPERM); a rewritten packet must leave another way there (see ``Dispatcher.reinject``).
    """
    return _REALMS.of(name) is None


def call_in_helper(realm: UserRealm | None, fn: Callable[..., T], *args: Any) -> T:
    """``fn(*args)`` where ``realm``'s namespaces are made: in its helper, or (None) in a thread of this process."""
    return in_thread(fn, *args) if realm is None else realm.call(None, fn, *args)


def create(name: str, realm: UserRealm | None) -> None:
    """Make the network namespace ``name`` (in ``realm``'s helper, or under /var/run/netns)."""
    call_in_helper(realm, create_here, name)
    if realm is None:
        return
    with _REALMS.lock:
        _REALMS.owner[name] = realm
        realm.names.add(name)


def remove(name: str) -> None:
    """Kill what still runs in namespace ``name`` and remove it."""
    realm = _REALMS.of(name)
    if realm is None:
        in_thread(remove_here, name)
        return
    try:
        realm.call(None, remove_here, name)
    finally:
        with _REALMS.lock:
            _REALMS.owner.pop(name, None)
            realm.names.discard(name)


def create_here(name: str) -> None:
    """Make namespace ``name`` under this process's /var/run/netns (root, or inside the helper)."""
    from pyroute2 import netns as _netns

    _netns.create(name)


def remove_here(name: str) -> None:
    """Kill what runs in namespace ``name`` (by PID, found through /proc) and remove it."""
    import signal

    from pyroute2 import netns as _netns

    for pid in pids_in(name):
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    try:
        _netns.remove(name)
    except FileNotFoundError:
        pass


def enter(name: str | None) -> None:
    """Move the *calling thread* into the named namespace (``None``: stay); root mode and the helper only."""
    if name is None:
        return
    from pyroute2 import netns as _netns

    if _REALMS.of(name) is not None:
        raise LabError(f"namespace {name!r} belongs to a lab helper; a thread cannot enter it, use netns.call_in")
    if not os.path.exists(os.path.join(NETNS_DIR, name)):
        raise LabError(
            f"network namespace {name!r} does not exist; bring the lab up first (pktlab.Lab() or %pktlab lab up)"
        )
    try:
        _netns.setns(name, flags=0)
    except PermissionError:
        raise PrivilegeError(
            f"namespace {name!r} is not one of this process's labs (entering another user's namespace needs root); "
            "make a lab of your own with pktlab.Lab()"
        ) from None


def in_thread(fn: Callable[..., T], *args: Any) -> T:
    """Run ``fn(*args)`` in a short-lived thread of its own and return its result.

    pyroute2 drives an asyncio loop of its own; a thread keeps it away from the
    loop already running in a Jupyter kernel's main thread.
    """
    return call_in(None, fn, *args, thread=True)


def call_in(name: str | None, fn: Callable[..., T], *args: Any, thread: bool = False) -> T:
    """Run ``fn(*args)`` inside namespace ``name``, in a short-lived thread unless ``name`` is None.

    In a helper's namespace ``fn`` runs in the helper: it must be a module-level function (or a
    static method), its arguments and result must pickle, and sockets in the result arrive as
    sockets of this process.
    """
    realm = _REALMS.of(name)
    if realm is not None:
        return realm.call(name, fn, *args)
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


def socket_in(name: str | None, family: int, kind: int, proto: int = 0) -> Any:
    """A socket made inside namespace ``name``: it lives there, wherever the thread that uses it is."""
    import socket

    return call_in(name, socket.socket, family, kind, proto)


class InterfaceNames:
    """Interface index -> name inside namespace ``name`` (None: this process's), for ``pkt.indev``/``pkt.outdev``.

    The queue gives interface indexes, which name different interfaces in every namespace: a
    lab's must be looked up in the lab.  Read once, and again when an index is not known (an
    interface made since); a name that still cannot be found is the index as text.
    """

    def __init__(self, name: str | None) -> None:
        self.name = name
        self._names: dict[int, str] = {}

    def __call__(self, index: int) -> str | None:
        if not index:
            return None
        found = self._names.get(index)
        if found is None:
            import socket

            try:
                self._names = dict(call_in(self.name, socket.if_nameindex))
            except OSError:
                pass  # the namespace is gone: the index as text, below
            found = self._names.get(index)
        return found if found is not None else str(index)


def argv_in(name: str | None, argv: Sequence[str]) -> list[str]:
    """The argv that runs ``argv`` inside namespace ``name`` (as a child of this process).

    ``name`` is a lab host's namespace name, or (root mode) the path of a namespace file.
    """
    if not name:
        return list(argv)
    realm = _REALMS.of(name)
    if realm is not None:
        return realm.argv_in(name, argv)
    from . import privilege

    if privilege.current().name == "userns":
        raise LabError(f"namespace {name!r} is not one of your labs; use a host of a lab you made (pktlab.Lab())")
    if name.startswith("/"):  # a namespace file given by path (root looking into another user's lab, say)
        return ["nsenter", f"--net={name}", *argv]
    return ["ip", "netns", "exec", name, *argv]


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


def namespace_id(name: str) -> tuple[int, int] | None:
    """(device, inode) that identify namespace ``name`` (as /proc/PID/ns/net shows it); None if it is gone."""
    path = os.path.join(NETNS_DIR, name)
    realm = _REALMS.of(name)
    try:
        st = realm.call(None, os.stat, path) if realm is not None else os.stat(path)
    except FileNotFoundError:
        return None
    return st.st_dev, st.st_ino


def pids_in(name: str) -> list[int]:
    """The processes whose network namespace is the named one (found through /proc)."""
    target = namespace_id(name)
    if target is None:
        return []
    out = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            st = os.stat(f"/proc/{pid}/ns/net")
        except OSError:  # ended meanwhile, or not ours to look at
            continue
        if (st.st_dev, st.st_ino) == target:
            out.append(int(pid))
    return out


def list_names() -> list[str]:
    """Names of the lab namespaces this process can use: its lab helper's, and /var/run/netns's in root mode."""
    from . import privilege

    with _REALMS.lock:
        here = set(_REALMS.owner)
    if privilege.current().name != "userns":
        try:
            here |= set(os.listdir(NETNS_DIR))
        except FileNotFoundError:
            pass
    return sorted(here)
