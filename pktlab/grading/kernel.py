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

The network namespace stays the machine's (the kernel talks to nbgrader over local sockets); loopback traffic is
all it can reach that labs cannot.  Where user namespaces are not allowed the kernel cannot be contained and
autograde stops, saying so, instead of running the submission unsandboxed.
"""

from __future__ import annotations

import os
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


def contained(argv: list[str], cwd: str | None, course: str | None) -> list[str]:
    """``argv`` (a kernel's command) started in the sandbox described in the module's docstring."""
    why = userns_unavailable()
    if why is not None:
        raise PrivilegeError(f"the grading kernel cannot be contained here ({why}); autograde stops rather than "
                             "run a submission unsandboxed")  # fmt: skip
    folders, files = hidden_paths(Path(course), Path(cwd or ".")) if course else (grading_folders(), [])
    work = str(Path(cwd).resolve()) if cwd else ""
    keep = "\n".join([*runs_from(), *(p for p in argv if os.path.isabs(p) and os.path.exists(p)), work])
    script = (
        # every mount read-only (but /proc, /sys and /dev: labs write their user namespaces' maps there), then the
        # private /tmp, then the submission's folder writable again, then the course's other folders covered
        "awk '{print $2}' /proc/self/mounts | while read -r m; do case \"$m\" in /proc|/proc/*|/sys|/sys/*|/dev|"
        "/dev/*) continue;; esac; mount -o remount,bind,ro \"$m\" 2>/dev/null; done; "
        f"{private_tmp_script('PKTLAB_KERNEL_KEEP')}"
        'if [ -n "$PKTLAB_KERNEL_CWD" ]; then mount --bind "$PKTLAB_KERNEL_CWD" "$PKTLAB_KERNEL_CWD" && '
        'mount -o remount,bind,rw "$PKTLAB_KERNEL_CWD" && cd "$PKTLAB_KERNEL_CWD" || exit 95; fi; '
        'printf "%s\\n" "$PKTLAB_KERNEL_HIDE" | while IFS= read -r h; do [ -n "$h" ] || continue; '
        'if [ -d "$h" ]; then mount -t tmpfs -o size=4k,mode=0 pktlab-hidden "$h" || exit 95; '
        'elif [ -e "$h" ]; then mount --bind /dev/null "$h" || exit 95; fi; done || exit 95; '
        'exec setpriv --inh-caps=-all --bounding-set=-all --no-new-privs -- "$@"'
    )
    env = {
        "PKTLAB_KERNEL_KEEP": keep,
        "PKTLAB_KERNEL_CWD": work,
        "PKTLAB_KERNEL_HIDE": "\n".join(str(p) for p in [*folders, *files]),
    }
    prefix = ["env", *(f"{k}={v}" for k, v in env.items())]
    ns = ["unshare", "--user", "--map-root-user", "--mount", "--propagation", "private", "--pid", "--fork",
          "--kill-child", "--mount-proc"]  # fmt: skip
    return [*prefix, *ns, "--", "sh", "-c", script, "sh", *argv]


class SandboxedKernelManager(AsyncKernelManager):
    """A kernel manager whose kernels run contained (see the module's docstring); nbgrader's Execute uses it."""

    contained_cwd: str | None = None

    async def start_kernel(self, **kw: Any) -> None:  # type: ignore[override]
        """Start the kernel contained, in the folder nbgrader runs the submission in."""
        self.contained_cwd = kw.get("cwd")
        env = dict(kw.get("env") or os.environ)
        env.update({"IPYTHONDIR": "/tmp/ipython", "MPLCONFIGDIR": "/tmp/matplotlib"})  # HOME is read-only there
        kw["env"] = env
        await super().start_kernel(**kw)

    def format_kernel_cmd(self, extra_arguments: list[str] | None = None) -> list[str]:
        argv = super().format_kernel_cmd(extra_arguments)
        return contained(argv, self.contained_cwd, os.environ.get(COURSE_ROOT))


__all__ = ["SandboxedKernelManager", "contained", "hidden_paths"]
