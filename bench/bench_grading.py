"""Grading a class: 30 submissions, one at a time against two at a time, with pktlab grade and nbgrader.

Usage: ``.venv/bin/python bench/bench_grading.py [N]`` (default 30 submissions of the firewall assignment: a third
correct, a third with a seeded bug, a third raising; replay and live checks, as a class would be graded).
(1) ``pktlab.grading.grade_many`` with jobs=1 and jobs=2; (2) ``pktlab autograde firewall --jobs 1`` and
``--jobs 2`` on an nbgrader course of the same submissions (checks graded outside the kernel, the kernel
contained).  Reports the wall time, the time per submission and what 300 students would take; the scores of
both job counts must agree (they are printed).
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from pktlab.grading import grade_many, make_course  # noqa: E402
from tests.grading.test_grader import BUGGY, RAISES, notebook  # noqa: E402
from tests.grading.test_nbgrader import REFERENCE, _nbgrader, _submit  # noqa: E402


def codes(n: int) -> list[tuple[str, str]]:
    kinds = [("correct", REFERENCE["firewall"]), ("buggy", BUGGY["firewall"]), ("raises", RAISES.format(fn="firewall"))]
    return [(f"s{i:03d}-{kinds[i % 3][0]}", kinds[i % 3][1]) for i in range(n)]


def main(n: int) -> None:
    work = Path(tempfile.mkdtemp(prefix="pktlab-bench-grading-"))
    paths = [notebook(work, "firewall", code, label) for label, code in codes(n)]
    rows = []
    scores = {}
    for jobs in (1, 2):
        t0 = time.monotonic()
        got = [(p.name, r.score) for p, r in grade_many(paths, jobs=jobs)]
        rows.append(("pktlab grade", jobs, time.monotonic() - t0))
        scores["pktlab grade", jobs] = got
    course = make_course(work / "course", ["firewall"])
    _nbgrader(course, "generate_assignment", "firewall", "--force")
    for label, code in codes(n):
        _nbgrader(course, "db", "student", "add", label)
        _submit(course, "firewall", label, code)
    for jobs in (1, 2):
        t0 = time.monotonic()
        proc = subprocess.run([sys.executable, "-m", "pktlab", "autograde", "firewall", "--course", str(course),
                               "--jobs", str(jobs)], capture_output=True, text=True, check=False)  # fmt: skip
        rows.append(("nbgrader autograde", jobs, time.monotonic() - t0))
        assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert scores["pktlab grade", 1] == scores["pktlab grade", 2], "a submission's score depended on its neighbours"
    print(f"{n} submissions of the firewall assignment (4 replay and 2 live checks each)\n")
    print("| grader | jobs | wall time (s) | s per submission | 300 students (min) | speed-up |")
    print("|---|---|---|---|---|---|")
    base = {}
    for grader, jobs, seconds in rows:
        base.setdefault(grader, seconds)
        print(f"| {grader} | {jobs} | {seconds:.1f} | {seconds / n:.2f} | {seconds / n * 300 / 60:.1f} | "
              f"{base[grader] / seconds:.2f}x |")  # fmt: skip
    print("\nscores, jobs=1 and jobs=2 alike:", sorted({s for _, s in scores["pktlab grade", 1]}))


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 30)
