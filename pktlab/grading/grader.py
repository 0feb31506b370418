"""Grade a student notebook: extract the solution, run every check with it in a sandbox, report."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import PktlabError
from .assignments import ASSIGNMENTS, Assignment, LiveCheck, ReplayCheck, grading_folders
from .sandbox import Sandbox, SandboxError


@dataclass
class CheckResult:
    name: str
    points: int
    passed: bool
    reason: str
    skipped: bool = False  # not run (live checks with --no-live or without live mode): counts neither way

    @property
    def score(self) -> int:
        return self.points if self.passed and not self.skipped else 0


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
        """Points of the checks that ran (skipped checks do not count)."""
        return sum(r.points for r in self.results if not r.skipped)

    def __str__(self) -> str:
        lines = [f"{self.notebook}: assignment {self.assignment}"]
        for r in self.results:
            if r.skipped:
                lines.append(f"  SKIP {r.name}: {r.reason}")
                continue
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
    """The assignment name and the student's code: cells tagged ``solution`` (or nbgrader's solution cells) and
    ``%%pktlab handler`` cells."""
    import nbformat

    try:
        nb = nbformat.read(str(path), as_version=4)
    except Exception as exc:
        raise PktlabError(f"{path} is not a notebook nbformat can read ({exc})") from None
    return extract_cells(nb, Path(path).name)


def extract_cells(nb: Any, label: str) -> tuple[str, str]:
    """:func:`extract_solution` of a notebook already read (``label`` names it in errors)."""
    from ..notebook.magic import handler_source

    name = nb.metadata.get("pktlab", {}).get("assignment")
    if name not in ASSIGNMENTS:
        raise PktlabError(
            f"{label} names no known assignment (metadata pktlab.assignment = {name!r}); "
            f"the assignments are {', '.join(ASSIGNMENTS)}"
        )
    parts = []
    for cell in nb.cells:
        if cell.cell_type != "code":
            continue
        src = cell.source
        if src.lstrip().startswith("%%pktlab handler"):
            first, _, body = src.lstrip().partition("\n")
            words = first.split()
            if len(words) < 3 or not words[2].isidentifier():
                raise PktlabError(
                    f"{label}: a %%pktlab handler cell has no valid handler name ({first.strip()!r}); "
                    "the cell must start with %%pktlab handler NAME"
                )
            parts.append(handler_source(words[2], body))
        elif "solution" in cell.metadata.get("tags", []) or cell.metadata.get("nbgrader", {}).get("solution"):
            parts.append("\n".join(line for line in src.splitlines() if not line.lstrip().startswith(("%", "!"))))
    return name, "\n\n".join(parts) + "\n"


CALL_TIMEOUT = 1.0  # seconds one handler call in the sandbox may take


def _explain(text: str) -> str:
    """A solution's failure in the words of what it tried."""
    if "PermissionError" in text or "Read-only file system" in text or "Operation not permitted" in text:
        return f"the solution tried to reach outside its sandbox ({text})"
    if "Network is unreachable" in text or "Cannot assign requested address" in text:
        return f"the solution tried to use the network, which its sandbox does not have ({text})"
    return text


def _handler_failures(s: Any) -> str | None:
    """Why the chain failed on the graded traffic (raised, stuck, answered garbage), or None."""
    if not s.errors:
        return None
    first = str(s.errors[0])
    if "did not return" in first:
        return f"{first} (does the solution loop forever?)"
    return _explain(f"the handler failed on {s.record.errors} packet(s), first: {first}")


def _sandboxed(a: Assignment, code: str, run: Callable[[Sandbox], tuple[bool, str]]) -> tuple[bool, str]:
    """Load the solution in a fresh sandbox, run one check with it, and judge what the solution did."""
    try:
        box = Sandbox(code, a.handlers, hidden=grading_folders(), timeout=CALL_TIMEOUT)
    except SandboxError as exc:
        return False, _explain(str(exc))
    except TimeoutError:
        return False, "the solution did not finish loading within 10 s (does it loop at module level?)"
    try:
        passed, reason = run(box)
    finally:
        left = box.close()
    if left:
        return False, f"the solution started a process that outlived the check ({', '.join(left)}); it was killed"
    return passed, reason


def _run_replay(a: Assignment, check: ReplayCheck, code: str) -> tuple[bool, str]:
    from ..pipeline.replay import replay

    def run(box: Sandbox) -> tuple[bool, str]:
        s = replay(a.heldback, deadline=None)  # each sandbox call has its own time limit
        s.say_failures = False  # the grade reports failures itself
        for i, name in enumerate(a.handlers):
            s.add_handler(box.handler(i), name)
        s.run(stop_on_error=True)
        failed = _handler_failures(s)
        if failed is not None:
            return False, failed
        return check.judge(s)

    return _sandboxed(a, code, run)


def _run_live(a: Assignment, check: LiveCheck, code: str) -> tuple[bool, str]:
    from ..lab.network import Lab
    from ..pipeline.session import attach

    def run(box: Sandbox) -> tuple[bool, str]:
        with Lab("router") as lab:
            sessions = []
            try:
                # one queue per hook the check names, the same chain on each (one sandbox: the solution's state
                # is shared, as one handler cell's would be on two sessions)
                for q, (hook, rule) in enumerate(check.queues, 7):
                    s = attach(q, rule=rule, hook=hook, netns=lab.router, deadline=None, name=f"grader-{q}")
                    sessions.append(s)
                    s.say_failures = False  # the grade reports failures itself
                    for i, name in enumerate(a.handlers):
                        s.add_handler(box.handler(i), name)
                try:
                    passed, reason = check.traffic(lab)
                except Exception as exc:  # the traffic itself failed (a flow that never completed)
                    passed, reason = False, f"the lab traffic failed: {exc}"
            finally:
                for s in sessions:
                    s.detach()
            # code that raises or does not return on the graded traffic fails the check, whatever the traffic did
            for s in sessions:
                failed = _handler_failures(s)
                if failed is not None:
                    return False, failed
            return passed, reason

    return _sandboxed(a, code, run)


def run_check(assignment: str, check_name: str, code: str, *, live: bool | None = None) -> CheckResult:
    """Run one check of ``assignment`` with the solution ``code`` in a fresh sandbox (and lab, for a live one).

    ``live=None``: a live check runs where this machine has live mode, else it is reported as skipped.
    """
    from ..doctor import mode

    a = ASSIGNMENTS.get(assignment)
    if a is None:
        raise PktlabError(f"no assignment {assignment!r}; the assignments are {', '.join(ASSIGNMENTS)}")
    check = next((c for c in a.checks if c.name == check_name), None)
    if check is None:
        names = "; ".join(c.name for c in a.checks)
        raise PktlabError(f"assignment {assignment} has no check {check_name!r}; its checks are: {names}")
    if not a.heldback.exists():
        raise PktlabError(f"the held-back capture {a.heldback} is missing; run scripts/make_grading_data.py")
    if isinstance(check, LiveCheck):
        run_live = mode() == "live" if live is None else live
        if not run_live:
            why = ("live checks were turned off (--no-live)" if live is False
                   else "this machine has no live mode (pktlab doctor says why)")  # fmt: skip
            return CheckResult(check.name, check.points, False, f"skipped: {why}", skipped=True)
        passed, reason = _run_live(a, check, code)
    else:
        passed, reason = _run_replay(a, check, code)
    return CheckResult(check.name, check.points, passed, reason)


def grade(path: str | os.PathLike[str], *, live: bool | None = None) -> GradeReport:
    """Grade one student notebook; ``live=None`` runs live checks where this machine allows them."""
    name, code = extract_solution(path)
    a = ASSIGNMENTS[name]
    if not a.heldback.exists():
        raise PktlabError(f"the held-back capture {a.heldback} is missing; run scripts/make_grading_data.py")
    report = GradeReport(Path(path).name, name)
    for check in a.checks:
        report.results.append(run_check(name, check.name, code, live=live))
    return report


def _grade_one(path: str, live: bool | None) -> tuple[GradeReport | None, str | None]:
    """A worker's job: one notebook's report, or why it could not be graded (never raises)."""
    try:
        return grade(path, live=live), None
    except PktlabError as exc:
        return None, str(exc)


def grade_many(paths: list[Path], *, live: bool | None = None, jobs: int = 1) -> Iterator[tuple[Path, Any]]:
    """Grade notebooks ``jobs`` at a time, each in a process of its own (its own sandboxes and labs).

    Yields ``(path, GradeReport)`` or ``(path, reason it could not be graded)`` in the order of ``paths``; one
    notebook's crash, hang or failure costs only its own checks.
    """
    if not isinstance(jobs, int) or isinstance(jobs, bool) or not 1 <= jobs <= 64:
        raise PktlabError(f"jobs={jobs!r}: grade 1 to 64 notebooks at a time")
    if jobs == 1:
        for p in paths:
            report, error = _grade_one(str(p), live)
            yield p, report if error is None else error
        return
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    # spawn: a fresh interpreter per worker (the grader's process may run threads; forking those is unsafe)
    with ProcessPoolExecutor(max_workers=jobs, mp_context=multiprocessing.get_context("spawn")) as pool:
        futures = [pool.submit(_grade_one, str(p), live) for p in paths]
        for p, f in zip(paths, futures, strict=True):
            report, error = f.result()
            yield p, report if error is None else error
