"""Grading in the hub: the teacher's course, nbgrader's exchange, and what each role's server is configured with.

The hub runs every server in a mount namespace where the repository's ``grading/`` folders (held-back captures,
reference solutions) are hidden, so the teacher cannot grade from the repository there.  :meth:`Classroom.prepare`
(run by ``scripts/hub.sh`` as root before the hub starts, where those folders are whole) gives the teacher:

- ``~/pktlab-assignments``: a copy of the assignments *with* their grading folders, the teacher's own (homes are
  ``0700``), which the teacher's server grades from (``PKTLAB_ASSIGNMENTS``); it is replaced on every start, so it
  follows the repository;
- ``~/course``: an nbgrader course of every assignment (``pktlab course``), made once and then the teacher's;
- nbgrader's exchange, ``SHARED/exchange``, with the course's folder in it made by the teacher before any student
  could take the name.

Each server gets ``JUPYTER_CONFIG_PATH`` of its role (:meth:`Classroom.environment`): students see nbgrader's
*Assignments* tab (fetch, validate, submit, fetch feedback) and not the formgrader; the teacher's nbgrader
configuration is the course's own (checks graded outside the student's kernel, the kernel contained) plus the
exchange.  Grading then runs in the teacher's server as the teacher, an ordinary user: the live checks' labs in
user namespaces, like the students' own.
"""

from __future__ import annotations

import json
import os
import pwd
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from ..errors import PktlabError

COURSE_ID = "pktlab"  # the course's id in nbgrader (pktlab.grading.nbgrader's configuration)
COURSE_DIR = "course"
ASSIGNMENTS_DIR = "pktlab-assignments"
# nbgrader's instructor parts; a student's server leaves them out (they would find no course to manage anyway)
TEACHER_ONLY_SERVER = ("nbgrader.server_extensions.formgrader", "nbgrader.server_extensions.course_list")
TEACHER_ONLY_LAB = ("@jupyter/nbgrader:formgrader", "@jupyter/nbgrader:create-assignment",
                    "@jupyter/nbgrader:course-list")  # fmt: skip

_REPLACE_COPY = """
import shutil, sys
from pathlib import Path
target = Path(sys.argv[2])
if target.exists():
    shutil.rmtree(target)
shutil.copytree(sys.argv[1], target, ignore=shutil.ignore_patterns(".ipynb_checkpoints", "__pycache__"))
"""


@dataclass(frozen=True)
class Classroom:
    """The hub's grading set-up: ``shared`` (root's, readable by all: configuration and exchange) and the teacher."""

    shared: Path
    teacher: str

    @property
    def exchange(self) -> Path:
        return self.shared / "exchange"

    def home(self, user: str) -> Path:
        return Path(pwd.getpwnam(user).pw_dir)

    def config_dir(self, user: str) -> Path:
        """The Jupyter configuration folder of ``user``'s role."""
        return self.shared / "jupyter" / ("teacher" if user == self.teacher else "students")

    def environment(self, user: str) -> dict[str, str]:
        """What ``user``'s server adds to its environment."""
        env = {"JUPYTER_CONFIG_PATH": str(self.config_dir(user))}
        if user == self.teacher:
            env["PKTLAB_ASSIGNMENTS"] = str(self.home(user) / ASSIGNMENTS_DIR)
        return env

    def prepare(self, assignments: Path) -> list[str]:
        """Set up (idempotently) what the module's docstring lists; returns what it did, one line each."""
        if os.geteuid() != 0:
            raise PktlabError("preparing the classroom needs root: it writes into the teacher's home as the teacher")
        home = self.home(self.teacher)
        done = []
        self.shared.mkdir(parents=True, exist_ok=True)
        self.shared.chmod(0o755)
        # nbgrader wants its exchange writable by all; sticky, so that no one removes what another made in it
        self.exchange.mkdir(exist_ok=True)
        self.exchange.chmod(0o1777)
        course_box = self.exchange / COURSE_ID
        if course_box.exists() and course_box.stat().st_uid != pwd.getpwnam(self.teacher).pw_uid:
            raise PktlabError(f"{course_box} belongs to someone other than the teacher {self.teacher}: remove it "
                              "(a student may have taken the course's name in the exchange) and start the hub again")
        self._as_teacher([sys.executable, "-I", "-c", "import os, sys; os.makedirs(sys.argv[1], 0o755, exist_ok=True)",
                          str(course_box)])  # fmt: skip
        self._write_configs(home)
        self._as_teacher([sys.executable, "-I", "-c", _REPLACE_COPY, str(assignments), str(home / ASSIGNMENTS_DIR)])
        done.append(f"the teacher's copy of the assignments (grading folders included): {home / ASSIGNMENTS_DIR}")
        course = home / COURSE_DIR
        if not course.exists():
            pktlab = Path(sys.executable).with_name("pktlab")
            self._as_teacher(["env", f"PKTLAB_ASSIGNMENTS={home / ASSIGNMENTS_DIR}", str(pktlab), "course",
                              str(course)])  # fmt: skip
            done.append(f"the teacher's nbgrader course: {course}")
        else:
            done.append(f"the teacher's nbgrader course (kept as it is): {course}")
        done.append(f"nbgrader's exchange: {self.exchange}")
        return done

    def _as_teacher(self, argv: list[str]) -> None:
        """Run ``argv`` as the teacher: root writes nothing in a user's home itself (no link there can redirect it)."""
        proc = subprocess.run(["runuser", "-u", self.teacher, "--", *argv], capture_output=True, text=True,
                              timeout=300, cwd="/", check=False)  # fmt: skip
        if proc.returncode != 0:
            raise PktlabError(f"setting up the teacher's course failed ({' '.join(argv[:3])} ...): "
                              f"{proc.stderr.strip()[-500:]}")  # fmt: skip

    def _write_configs(self, home: Path) -> None:
        exchange = f"c.Exchange.root = {str(self.exchange)!r}\n"
        students = self.shared / "jupyter" / "students"
        (students / "labconfig").mkdir(parents=True, exist_ok=True)
        (students / "nbgrader_config.py").write_text(
            "# a student's nbgrader: the course's assignments from the hub's exchange (pktlab.hub.classroom)\n"
            f"c = get_config()  # noqa: F821\n{exchange}c.CourseDirectory.course_id = {COURSE_ID!r}\n"
        )
        (students / "jupyter_server_config.json").write_text(json.dumps(
            {"ServerApp": {"jpserver_extensions": dict.fromkeys(TEACHER_ONLY_SERVER, False)}}, indent=1))
        (students / "labconfig" / "page_config.json").write_text(json.dumps(
            {"disabledExtensions": dict.fromkeys(TEACHER_ONLY_LAB, True)}, indent=1))  # fmt: skip
        teacher = self.shared / "jupyter" / "teacher"
        teacher.mkdir(parents=True, exist_ok=True)
        (teacher / "nbgrader_config.py").write_text(
            "# the teacher's nbgrader: the course in ~/course with its own configuration, and the hub's exchange\n"
            f"c = get_config()  # noqa: F821\n{exchange}"
            f"load_subconfig({str(home / COURSE_DIR / 'nbgrader_config.py')!r})  # noqa: F821\n"
        )
        for path in (students, students / "labconfig", teacher):
            path.chmod(0o755)
        for path in [*students.rglob("*.*"), *teacher.glob("*.py")]:
            path.chmod(0o644)


def main(argv: list[str] | None = None) -> int:
    """``python -m pktlab.hub.classroom SHARED TEACHER ASSIGNMENTS`` (scripts/hub.sh runs it as root)."""
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 3:
        print("usage: python -m pktlab.hub.classroom SHARED TEACHER ASSIGNMENTS", file=sys.stderr)
        return 2
    try:
        for line in Classroom(Path(args[0]), args[1]).prepare(Path(args[2])):
            print(f"hub: {line}")
    except (PktlabError, KeyError) as exc:
        print(f"hub: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
