"""Which privilege mode this process is live in: ``root`` or ``userns`` (an ordinary user), and why.

* ``root``: the process may change netfilter state in the host's own namespace (CAP_NET_ADMIN
  there).  Labs are network namespaces under ``/var/run/netns``; threads enter them.
* ``userns``: an ordinary user.  Each lab's namespaces are owned by a helper process in a
  user namespace of its own (:mod:`pktlab.kernel.userns`); the notebook kernel reads and
  verdicts sockets the helper made inside.  Everything a lab does works; kernel
  tracepoints (``pktlab.trace``'s kernel timestamps, ``pktlab.drops``) and the host's own
  namespace need root and are refused with that reason.

``PKTLAB_PRIVILEGE=root|userns`` forces a mode (``userns`` works as root too, which is how the
two modes are compared on one machine).
"""

from __future__ import annotations

import functools
import os
import shutil
import subprocess
from dataclasses import dataclass

from ..errors import PrivilegeError

CAP_NET_ADMIN = 12
ENV = "PKTLAB_PRIVILEGE"
MODES = ("root", "userns")


def has_net_admin() -> bool:
    """True when this process may change netfilter state: CAP_NET_ADMIN in its effective set.

    uid 0 alone is not enough (a container or ``setpriv`` can take the capability away).
    """
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("CapEff:"):
                    return bool(int(line.split()[1], 16) >> CAP_NET_ADMIN & 1)
    except OSError:
        pass
    return os.geteuid() == 0


@dataclass(frozen=True)
class Mode:
    """The mode in use (``None`` when no live mode works) and the reason, in one sentence."""

    name: str | None
    reason: str

    @property
    def live(self) -> bool:
        return self.name is not None


def current() -> Mode:
    """The privilege mode of this process, decided once per environment setting."""
    return _decide(os.environ.get(ENV, "").strip().lower(), has_net_admin())


@functools.lru_cache(maxsize=8)
def _decide(forced: str, net_admin: bool) -> Mode:
    if forced and forced not in MODES:
        raise PrivilegeError(f"{ENV}={forced!r} is not a mode; use 'root' or 'userns' (or unset it to choose)")
    if forced == "root":
        if not net_admin:
            return Mode(None, f"{ENV}=root but this process is uid {os.geteuid()} without CAP_NET_ADMIN")
        return Mode("root", f"forced by {ENV}=root")
    why_not = userns_unavailable()
    if forced == "userns":
        but = f", but {why_not}" if why_not else ""
        return Mode("userns" if why_not is None else None, f"forced by {ENV}=userns{but}")
    if net_admin:
        return Mode("root", "this process has CAP_NET_ADMIN (root)")
    if why_not is None:
        uid = os.geteuid()
        who = f"uid {uid} without CAP_NET_ADMIN" if uid == 0 else f"uid {uid} is an ordinary user"
        return Mode("userns", f"{who}; labs live in user namespaces it owns")
    return Mode(None, f"uid {os.geteuid()} is not root and {why_not}")


def userns_unavailable() -> str | None:
    """Why an ordinary user cannot make a user namespace with a network namespace here (None: it can)."""
    if shutil.which("unshare") is None or shutil.which("nsenter") is None:
        return "unshare/nsenter are missing (Debian package util-linux)"
    return _probe_userns()


@functools.lru_cache(maxsize=1)
def _probe_userns() -> str | None:
    try:
        proc = subprocess.run(
            ["unshare", "--user", "--map-root-user", "--net", "--mount", "true"],
            capture_output=True, text=True, timeout=10, check=False,
        )  # fmt: skip
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"unshare could not run ({exc})"
    if proc.returncode == 0:
        return None
    return "the kernel refuses unprivileged user namespaces (" + _userns_blocker(proc.stderr.strip()) + ")"


def _userns_blocker(stderr: str) -> str:
    """The setting that most likely forbids user namespaces, named for the person who can change it."""
    for path, bad, fix in (
        ("/proc/sys/kernel/apparmor_restrict_unprivileged_userns", "1",
         "kernel.apparmor_restrict_unprivileged_userns=1, as on Ubuntu 24.04: set it to 0 or give pktlab's "
         "Python an AppArmor profile that allows userns"),
        ("/proc/sys/kernel/unprivileged_userns_clone", "0", "kernel.unprivileged_userns_clone=0: set it to 1"),
        ("/proc/sys/user/max_user_namespaces", "0", "user.max_user_namespaces=0: raise it"),
        ("/proc/sys/user/max_net_namespaces", "0", "user.max_net_namespaces=0: raise it"),
    ):  # fmt: skip
        try:
            with open(path) as f:
                if f.read().strip() == bad:
                    return fix
        except OSError:
            continue
    return (f"unshare said {stderr!r}; in a container, its seccomp profile or missing CAP_SYS_ADMIN "
            "outside may forbid unshare(CLONE_NEWUSER)")  # fmt: skip


def require_live(action: str) -> Mode:
    """The live mode, or :class:`PrivilegeError` saying why there is none and what works instead."""
    mode = current()
    if not mode.live:
        raise PrivilegeError(
            f"to {action} pktlab needs root or user namespaces, and {mode.reason}; "
            "run `pktlab doctor` for the fix, or use replay mode (pktlab.replay) meanwhile"
        )
    return mode


def require_root(action: str, instead: str) -> None:
    """Refuse ``action`` unless the process is root in the host's namespace (CAP_NET_ADMIN there)."""
    if not has_net_admin() or current().name != "root":
        raise PrivilegeError(f"{action} needs root ({instead})")


def require_place(action: str, netns: str | None) -> None:
    """Refuse ``action`` where this mode cannot act: no live mode at all, or the host's namespace without root."""
    require_live(action)
    if netns is None:
        require_root(
            f"to {action} in the host's own namespace",
            "an ordinary user's live mode works in labs: make one with pktlab.Lab() and attach there "
            "(%pktlab lab up, then %pktlab attach N --on server)",
        )
