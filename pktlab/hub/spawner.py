"""The hub's spawner: each student's server, as that student, with the course notebooks and a bounded share.

:class:`ClassroomSpawner` is JupyterHub's ``LocalProcessSpawner`` (the server runs as the student's Unix user,
from pktlab's shared environment, so its kernels are ordinary users' processes: live mode through user
namespaces) with three things added: on the first start the course notebooks are copied into
``~/pktlab-notebooks`` — as the student, without the assignments' ``grading/`` folders; every start puts the
server in the student's cgroup (:mod:`pktlab.hub.limits`), and every stop ends what is left there and removes it;
each server gets its role's configuration (a student's or the teacher's nbgrader: :mod:`pktlab.hub.classroom`).
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

from jupyterhub.spawner import LocalProcessSpawner
from traitlets import Instance, Unicode, default

from .classroom import Classroom
from .limits import StudentLimits, kill_all

NOTEBOOKS_DIR = "pktlab-notebooks"

_COPY = """
import shutil, sys
shutil.copytree(sys.argv[1], sys.argv[2], ignore=shutil.ignore_patterns("grading", ".ipynb_checkpoints"))
"""


class ClassroomSpawner(LocalProcessSpawner):  # type: ignore[misc]
    """A student's server: the course notebooks on first start, a cgroup of its own (see the module)."""

    course_notebooks = Unicode(help="the folder of the course notebooks given to each student").tag(config=True)
    limits = Instance(StudentLimits, help="CPU and memory bounds per student").tag(config=True)
    classroom = Instance(Classroom, allow_none=True, help="the teacher and nbgrader's exchange").tag(config=True)

    @default("limits")
    def _default_limits(self) -> StudentLimits:
        return StudentLimits()

    def give_notebooks(self) -> None:
        """Copy the course notebooks into the student's ~/pktlab-notebooks, once, as the student."""
        import pwd

        entry = pwd.getpwnam(self.user.name)
        target = Path(entry.pw_dir) / NOTEBOOKS_DIR
        if not self.course_notebooks or os.path.lexists(target):
            return
        proc = subprocess.run(
            ["runuser", "-u", self.user.name, "--", sys.executable, "-I", "-c", _COPY, self.course_notebooks,
             str(target)], capture_output=True, text=True, timeout=60, cwd="/", check=False,
        )  # fmt: skip
        if proc.returncode != 0:
            self.log.warning("pktlab: the notebooks were not copied for %s: %s", self.user.name, proc.stderr[-300:])

    def get_env(self) -> dict[str, str]:
        env = super().get_env()
        if self.classroom is not None:
            env.update(self.classroom.environment(self.user.name))
        return env

    async def start(self) -> Any:
        self.give_notebooks()
        url = await super().start()
        try:
            self.log.info("pktlab: %s", self.limits.apply(self.user.name, self.pid))
        except OSError as exc:
            self.log.warning("pktlab: %s's server runs unbounded: its cgroup could not be made (%s)",
                             self.user.name, exc)  # fmt: skip
        return url

    async def stop(self, now: bool = False) -> None:
        await super().stop(now=now)
        left = kill_all(self.limits, self.user.name)
        if left:
            self.log.info("pktlab: ended %d process(es) %s's server left running", len(left), self.user.name)
        for _ in range(50):  # the killed processes leave their cgroup as they are reaped
            if not self.limits.pids(self.user.name):
                break
            await asyncio.sleep(0.1)
        try:
            self.limits.remove(self.user.name)
        except OSError as exc:
            self.log.warning("pktlab: %s", exc)
