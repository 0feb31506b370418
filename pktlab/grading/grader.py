"""Grade a student notebook: extract the solution, run every check in a worker, report."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import PktlabError
from .assignments import ASSIGNMENTS, Assignment, LiveCheck

REPLAY_TIMEOUT = 30.0  # seconds a replay check may take, student code included
LIVE_TIMEOUT = 60.0


@dataclass
class CheckResult:
    name: str
    points: int
    passed: bool
    reason: str

    @property
    def score(self) -> int:
        return self.points if self.passed else 0


@dataclass
class GradeReport:
    notebook: str
    assignment: str
    results: list[CheckResult] = field(default_factory=list)

    @property
    def score(self) -> int:
        return sum(r.score for r in self.results)

    @property
    def total(self) -> int:
        return sum(r.points for r in self.results)

    def __str__(self) -> str:
        lines = [f"{self.notebook}: assignment {self.assignment}"]
        for r in self.results:
            mark = "PASS" if r.passed else "FAIL"
            lines.append(f"  {mark} {r.score}/{r.points}  {r.name}" + ("" if r.passed else f": {r.reason}"))
        lines.append(f"  score {self.score}/{self.total}")
        return "\n".join(lines)

    def as_dict(self) -> dict[str, Any]:
        return {
            "notebook": self.notebook,
            "assignment": self.assignment,
            "score": self.score,
            "total": self.total,
            "checks": [r.__dict__ for r in self.results],
        }


def extract_solution(path: str | os.PathLike[str]) -> tuple[str, str]:
    """The assignment name and the student's code: cells tagged ``solution`` and ``%%pktlab handler`` cells."""
    import nbformat

    from ..magic import handler_source

    try:
        nb = nbformat.read(str(path), as_version=4)
    except Exception as exc:
        raise PktlabError(f"{path} is not a notebook nbformat can read ({exc})") from None
    name = nb.metadata.get("pktlab", {}).get("assignment")
    if name not in ASSIGNMENTS:
        raise PktlabError(
            f"{Path(path).name} names no known assignment (metadata pktlab.assignment = {name!r}); "
            f"the assignments are {', '.join(ASSIGNMENTS)}"
        )
    parts = []
    for cell in nb.cells:
        if cell.cell_type != "code":
            continue
        src = cell.source
        if src.lstrip().startswith("%%pktlab handler"):
            first, _, body = src.lstrip().partition("\n")
            parts.append(handler_source(first.split()[2], body))
        elif "solution" in cell.metadata.get("tags", []):
            parts.append("\n".join(line for line in src.splitlines() if not line.lstrip().startswith(("%", "!"))))
    return name, "\n\n".join(parts) + "\n"


def _python() -> list[str]:
    return [sys.executable, "-m", "pktlab.grading.worker"]


def _unprivileged() -> list[str]:
    """Drop to nobody without capabilities for replay checks, when we can."""
    if os.geteuid() == 0 and shutil.which("setpriv"):
        return ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", "--inh-caps=-all",
                "--bounding-set=-all", "--"]  # fmt: skip
    return []


def _result_of(out: str) -> dict[str, Any] | None:
    for line in reversed(out.splitlines()):
        if line.startswith("RESULT "):
            return json.loads(line[7:])
    return None


def _run_replay(a: Assignment, i: int, src: Path) -> tuple[bool, str]:
    try:
        proc = subprocess.run(
            [*_unprivileged(), *_python(), "replay", a.name, str(i), str(src)],
            capture_output=True, text=True, timeout=REPLAY_TIMEOUT, cwd=src.parent,
        )  # fmt: skip
    except subprocess.TimeoutExpired:
        return False, f"the check did not finish within {REPLAY_TIMEOUT:g} s (does the solution loop forever?)"
    r = _result_of(proc.stdout)
    if r is None:
        return False, f"the solution ended the check's process (exit code {proc.returncode}) without a result"
    return bool(r["passed"]), str(r["reason"])


def _run_live(a: Assignment, i: int, check: LiveCheck, src: Path) -> tuple[bool, str]:
    from ..lab import Lab
    from ..netns import argv_in

    with Lab("router") as lab:
        worker = subprocess.Popen(
            argv_in(lab.router.netns, [*_python(), "live", a.name, str(i), str(src)]),
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=src.parent,
        )  # fmt: skip
        try:
            assert worker.stdout is not None and worker.stdin is not None
            seen = _wait_ready(worker, 30.0)
            if seen is not None:
                out, _ = _finish(worker)
                r = _result_of(seen + "\n" + out)
                return False, str(r.get("reason", "the solution did not start")) if r else "the solution did not start"
            try:
                passed, reason = check.traffic(lab)
            except Exception as exc:  # the traffic itself failed (a flow that never completed)
                passed, reason = False, f"the lab traffic failed: {exc}"
            out, _ = _finish(worker)  # closes the worker's stdin: it detaches and reports
        finally:
            if worker.poll() is None:
                worker.kill()
                worker.wait(5)
    r = _result_of(out)
    if r is None:
        return False, "the solution's process ended without a report"
    if r.get("left_netns"):
        return False, "a handler moved a thread out of the lab's network namespace; that is not allowed"
    # code that raises or does not return on the graded traffic fails the check, whatever the traffic did
    if r.get("crashed"):
        return False, str(r.get("reason"))
    if r.get("stuck") or r.get("rescued"):
        return False, f"handler {(r.get('stuck') or ['?'])[0]} did not return in time on {r.get('rescued')} packet(s)"
    if r.get("errors"):
        return False, f"the handler raised: {r['errors'][0]}"
    return passed, reason


def _wait_ready(proc: subprocess.Popen[str], timeout: float) -> str | None:
    """None once the worker said ``ready``; else what it printed before ending or the timeout."""
    import select
    import time

    assert proc.stdout is not None
    lines: list[str] = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        ready, _, _ = select.select([proc.stdout], [], [], max(0.0, deadline - time.monotonic()))
        if not ready:
            break
        line = proc.stdout.readline()
        if not line:
            break  # the worker ended
        if line.strip() == "ready":
            return None
        lines.append(line.strip())
    return "\n".join(lines)


def _finish(proc: subprocess.Popen[str]) -> tuple[str, str]:
    try:
        return proc.communicate(timeout=LIVE_TIMEOUT)
    except subprocess.TimeoutExpired:
        proc.kill()
        return proc.communicate(timeout=5)


def grade(path: str | os.PathLike[str], *, live: bool | None = None) -> GradeReport:
    """Grade one student notebook; ``live=None`` runs live checks where this machine allows them."""
    from ..doctor import mode

    name, code = extract_solution(path)
    a = ASSIGNMENTS[name]
    if not a.heldback.exists():
        raise PktlabError(f"the held-back capture {a.heldback} is missing; run scripts/make_grading_data.py")
    run_live = mode() == "live" if live is None else live
    report = GradeReport(Path(path).name, name)
    with tempfile.TemporaryDirectory(prefix="pktlab-grade-") as tmp:
        os.chmod(tmp, 0o755)  # the unprivileged replay worker reads the solution from here
        src = Path(tmp) / "solution.py"
        src.write_text(code)
        src.chmod(0o644)
        for i, check in enumerate(a.checks):
            if isinstance(check, LiveCheck):
                if not run_live:
                    passed, reason = False, "live check not run: this machine has no live mode (pktlab doctor)"
                else:
                    passed, reason = _run_live(a, i, check, src)
            else:
                passed, reason = _run_replay(a, i, src)
            report.results.append(CheckResult(check.name, check.points, passed, reason))
    return report
