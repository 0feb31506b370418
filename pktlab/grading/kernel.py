"""nbgrader's grading kernel, contained: the submission's own cells run in a sandbox of their own.

``nbgrader autograde`` runs every cell of a submission in one kernel, the student's top-level code included,
as the teacher.  A pktlab course (``pktlab course DIR``) has nbgrader start that kernel through
:class:`SandboxedKernelManager`:

- in a new user namespace with no capabilities left (``setpriv``): the teacher's user, and nothing more; no
  rule, route, namespace or process of the machine can be changed from there (live practice cells still make
  labs, in user-namespace mode);
- in a new PID namespace: whatever the cells start ends with the kernel;
- in a new mount namespace where every mount is read-only except the submission's own folder, ``/tmp`` (and
  ``/var/tmp``, ``/dev/shm``) is private and empty, and the course's ``source``, ``release``, ``submitted`` and
  ``feedback`` folders, the other students' graded folders, the gradebook and the assignments' own grading folders
  (held-back captures, references: what the submission's folder, copied into its feedback, must not carry) are
  hidden.

The network namespace stays the machine's; loopback traffic is all it can reach that labs cannot.  The kernel
talks to nbgrader over Unix sockets in a folder of its own (ZeroMQ's ``ipc`` transport), never over TCP: a TCP
kernel's five ports are chosen by its manager and bound by the kernel a second later, and two kernels started at
once (``pktlab autograde --jobs 2``) can be handed the same free port, the second then dying before it ran a cell
(``Kernel died before replying to kernel_info``); no other user of the machine can reach an ``ipc`` kernel either.

Where user namespaces are not allowed the kernel cannot be contained and autograde stops, saying so, instead of
running the submission unsandboxed.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

from jupyter_client import AsyncKernelManager

from ..errors import PrivilegeError
from ..kernel.privilege import userns_unavailable
from .assignments import grading_folders
from .sandbox import private_tmp_script, runs_from

COURSE_ROOT = "PKTLAB_COURSE_ROOT"  # set by the course's nbgrader_config.py


def hidden_paths(course: Path, cwd: Path) -> tuple[list[Path], list[Path]]:
    """(folders, files) of the course that a submission's kernel must not see, given where it runs."""
    folders = [course / n for n in ("source", "release", "submitted", "feedback")] + grading_folders()
    graded = course / "autograded"
    own = cwd.resolve().parent if graded in cwd.resolve().parents else None
    if graded.is_dir():
        folders += [d for d in graded.iterdir() if d.is_dir() and d.resolve() != own]
    files = [course / "gradebook.db", course / "nbgrader_config.py"]
    return [f for f in folders if f.is_dir()], [f for f in files if f.is_file()]


def contained(argv: list[str], cwd: str | None, course: str | None, sockets: str | None = None) -> list[str]:
    """``argv`` (a kernel's command) started in the sandbox described in the module's docstring.

    ``sockets`` is the folder of the kernel's Unix sockets: it stays writable there, like the folder it runs in.
    """
    why = userns_unavailable()
    if why is not None:
        raise PrivilegeError(f"the grading kernel cannot be contained here ({why}); autograde stops rather than "
                             "run a submission unsandboxed")  # fmt: skip
    folders, files = hidden_paths(Path(course), Path(cwd or ".")) if course else (grading_folders(), [])
    work = str(Path(cwd).resolve()) if cwd else ""
    writable = [w for w in (work, str(Path(sockets).resolve()) if sockets else "") if w]
    # folders before the files in them (the connection file is in the sockets' folder): a path already there
    # through a folder bound back before it is not bound again
    keep = "\n".join([*runs_from(), *writable, *(p for p in argv if os.path.isabs(p) and os.path.exists(p))])
    script = (
        # every mount read-only (but /proc, /sys and /dev: labs write their user namespaces' maps there), then the
        # private /tmp, then the submission's folder writable again, then the course's other folders covered
        "awk '{print $2}' /proc/self/mounts | while read -r m; do case \"$m\" in /proc|/proc/*|/sys|/sys/*|/dev|"
        "/dev/*) continue;; esac; mount -o remount,bind,ro \"$m\" 2>/dev/null; done; "
        f"{private_tmp_script('PKTLAB_KERNEL_KEEP')}"
        'printf "%s\\n" "$PKTLAB_KERNEL_RW" | while IFS= read -r w; do [ -n "$w" ] || continue; '
        'mount --bind "$w" "$w" && mount -o remount,bind,rw "$w" || exit 95; done || exit 95; '
        'if [ -n "$PKTLAB_KERNEL_CWD" ]; then cd "$PKTLAB_KERNEL_CWD" || exit 95; fi; '
        'printf "%s\\n" "$PKTLAB_KERNEL_HIDE" | while IFS= read -r h; do [ -n "$h" ] || continue; '
        'if [ -d "$h" ]; then mount -t tmpfs -o size=4k,mode=0 pktlab-hidden "$h" || exit 95; '
        'elif [ -e "$h" ]; then mount --bind /dev/null "$h" || exit 95; fi; done || exit 95; '
        'exec setpriv --inh-caps=-all --bounding-set=-all --no-new-privs -- "$@"'
    )
    env = {
        "PKTLAB_KERNEL_KEEP": keep,
        "PKTLAB_KERNEL_CWD": work,
        "PKTLAB_KERNEL_RW": "\n".join(writable),
        "PKTLAB_KERNEL_HIDE": "\n".join(str(p) for p in [*folders, *files]),
    }
    prefix = ["env", *(f"{k}={v}" for k, v in env.items())]
    ns = ["unshare", "--user", "--map-root-user", "--mount", "--propagation", "private", "--pid", "--fork",
          "--kill-child", "--mount-proc"]  # fmt: skip
    return [*prefix, *ns, "--", "sh", "-c", script, "sh", *argv]


class SandboxedKernelManager(AsyncKernelManager):
    """A kernel manager whose kernels run contained (see the module's docstring); nbgrader's Execute uses it."""

    contained_cwd: str | None = None
    sockets: str | None = None  # the folder of the kernel's Unix sockets, while it runs

    async def start_kernel(self, **kw: Any) -> None:  # type: ignore[override]
        """Start the kernel contained, in the folder nbgrader runs the submission in, reached over Unix sockets."""
        self.contained_cwd = kw.get("cwd")
        env = dict(kw.get("env") or os.environ)
        env.update({"IPYTHONDIR": "/tmp/ipython", "MPLCONFIGDIR": "/tmp/matplotlib"})  # HOME is read-only there
        kw["env"] = env
        if self.sockets is None:
            self.sockets = tempfile.mkdtemp(prefix="pktlab-kernel-")
            self.transport = "ipc"
            self.ip = os.path.join(self.sockets, "k")  # the sockets are k-1 ... k-5
            self.connection_file = os.path.join(self.sockets, "kernel.json")
        try:
            await super().start_kernel(**kw)
        except BaseException:
            self._remove_sockets()
            raise

    def format_kernel_cmd(self, extra_arguments: list[str] | None = None) -> list[str]:
        argv = super().format_kernel_cmd(extra_arguments)
        return contained(argv, self.contained_cwd, os.environ.get(COURSE_ROOT), self.sockets)

    async def _async_cleanup_resources(self, restart: bool = False) -> None:
        """Remove the sockets' folder too, with the connection file in it (both kept for a restart)."""
        await super()._async_cleanup_resources(restart=restart)
        if not restart:
            self._remove_sockets()

    cleanup_resources = _async_cleanup_resources  # what AsyncKernelManager names it

    def _remove_sockets(self) -> None:
        if self.sockets is not None:
            shutil.rmtree(self.sockets, ignore_errors=True)
            self.sockets = None


__all__ = ["SandboxedKernelManager", "contained", "hidden_paths"]
