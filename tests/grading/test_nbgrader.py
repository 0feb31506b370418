"""pktlab's assignments in nbgrader, with the real nbgrader CLI: generate, autograde, gradebook, feedback.

Submissions that are correct, wrong, crashing, hanging and malicious go through ``nbgrader autograde`` with the
course's configuration (checks graded outside the kernel, the kernel contained); the gradebook holds the scores
``pktlab grade`` gives the same notebooks, and nothing the malicious one tried changed anything.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest

from pktlab.grading import grade_many, make_course
from pktlab.grading.assignments import ASSIGNMENTS
from tests.conftest import needs_live, pktlab_rules
from tests.grading.test_grader import BUGGY, LOOPS, RAISES, _running_with_cmdline

BIN = Path(sys.executable).parent
REFERENCE = {a: (ASSIGNMENTS[a].heldback.parent / "reference.py").read_text() for a in ASSIGNMENTS}


def _nbgrader(course: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PATH": f"{BIN}:{os.environ.get('PATH', '/usr/bin:/bin')}"}  # nbgrader runs alembic
    proc = subprocess.run([str(BIN / "nbgrader"), *args], cwd=course, env=env, capture_output=True, text=True,
                          timeout=900, check=False)  # fmt: skip
    assert proc.returncode == 0, f"nbgrader {' '.join(args)} failed:\n{proc.stderr[-4000:]}"
    return proc


def _malicious(marker: str, course: Path, teacher_file: Path) -> str:
    """Top-level code that tries what a student should not manage, then a handler that accepts everything."""
    return (
        "import os, subprocess\n"
        "import pktlab.grading\n"
        "pktlab.grading.check = lambda *a, **k: print('PASS (forged)')  # fake every hidden test\n"
        "try:\n"
        f"    SECRET = open({str(course / 'source' / 'firewall' / 'firewall.ipynb')!r}).read()\n"
        "    print('HIDDEN TESTS:', SECRET[SECRET.find('BEGIN HIDDEN'):][:200])\n"
        "except OSError as exc:\n    print('could not read the hidden tests:', exc)\n"
        "try:\n"
        f"    open({str(ASSIGNMENTS['firewall'].heldback)!r}, 'rb').read(4)\n"
        "    print('HELD-BACK CAPTURE READ')\n"
        "except OSError as exc:\n    print('could not read the held-back capture:', exc)\n"
        "try:\n"
        f"    os.remove({str(teacher_file)!r})\n"
        "except OSError as exc:\n    print('could not delete:', exc)\n"
        "subprocess.run(['iptables', '-I', 'INPUT', '-p', 'udp', '--dport', '9', '-m', 'comment', '--comment',\n"
        "                'pktlab-malicious', '-j', 'DROP'], capture_output=True)\n"
        "if os.fork() == 0:\n"
        f"    os.execvp('sleep', ['sleep', '{marker}'])\n"
        "def firewall(pkt):\n    return None\n"
    )


def _submit(course: Path, assignment: str, student: str, code: str) -> Path:
    nb = nbformat.read(course / "release" / assignment / f"{assignment}.ipynb", as_version=4)
    cell = next(c for c in nb.cells if c.metadata.get("nbgrader", {}).get("solution"))
    cell.source = code
    folder = course / "submitted" / student / assignment
    folder.mkdir(parents=True, exist_ok=True)
    nbformat.write(nb, folder / f"{assignment}.ipynb")
    return folder / f"{assignment}.ipynb"


@needs_live
def test_nbgrader_generates_autogrades_and_gives_feedback_with_pktlabs_reasons(tmp_path: Path) -> None:
    from nbgrader.api import Gradebook

    course = make_course(tmp_path / "course")
    teacher_file = course / "teacher-notes.txt"
    teacher_file.write_text("grade boundaries\n")
    teacher_file.chmod(0o666)  # even a file anyone may write
    rules_before = pktlab_rules(None)
    marker = f"76.{os.getpid()}"
    for a in ASSIGNMENTS:
        _nbgrader(course, "generate_assignment", a, "--force")

    # what students get: no solution, no hidden test, no held-back capture or reference
    released = [p for p in (course / "release").rglob("*") if p.is_file()]
    assert sorted(p.name for p in released) == sorted(f"{a}.ipynb" for a in ASSIGNMENTS)
    for p in released:
        text = p.read_text()
        assert "BEGIN HIDDEN" not in text and "check(" not in text and "BEGIN SOLUTION" not in text, p
        a = p.stem
        given = nbformat.read(ASSIGNMENTS[a].heldback.parents[1] / "student.ipynb", as_version=4)
        skeleton = {line.strip() for c in given.cells for line in c.source.splitlines()}
        answer = {line.strip() for line in REFERENCE[a].splitlines() if len(line.strip()) > 30} - skeleton
        assert answer and not [line for line in answer if line in text], p

    submissions = {
        ("firewall", "correct"): REFERENCE["firewall"],
        ("firewall", "wrong"): BUGGY["firewall"],
        ("firewall", "crashing"): RAISES.format(fn="firewall"),
        ("firewall", "hanging"): LOOPS.format(fn="firewall"),
        ("firewall", "malicious"): _malicious(marker, course, teacher_file),
        ("dns-rewriter", "correct"): REFERENCE["dns-rewriter"],
        ("dns-rewriter", "wrong"): BUGGY["dns-rewriter"],
        ("nat", "correct"): REFERENCE["nat"],
        ("nat", "wrong"): BUGGY["nat"],
        ("policer", "correct"): REFERENCE["policer"],
        ("policer", "wrong"): BUGGY["policer"],
    }
    students = course / "students.csv"  # one nbgrader process for all of them (each takes over a second)
    students.write_text("id\n" + "".join(f"{s}\n" for s in sorted({s for _, s in submissions})))
    _nbgrader(course, "db", "student", "import", str(students))
    paths = {key: _submit(course, *key, code) for key, code in submissions.items()}
    try:
        for a in ASSIGNMENTS:  # two students at a time, each in its own nbgrader process (one gradebook)
            proc = subprocess.run([sys.executable, "-m", "pktlab", "autograde", a, "--course", str(course), "--jobs",
                                   "2"], capture_output=True, text=True, timeout=900, check=False)  # fmt: skip
            assert proc.returncode == 0, proc.stdout + proc.stderr[-3000:]  # a failed student's whole nbgrader log
    finally:
        leftover = _running_with_cmdline(f"sleep\0{marker}\0")
        added = [r for r in pktlab_rules(None) if r not in rules_before]
        subprocess.run(["iptables", "-D", "INPUT", "-p", "udp", "--dport", "9", "-m", "comment", "--comment",
                        "pktlab-malicious", "-j", "DROP"], capture_output=True, check=False)  # fmt: skip
    assert leftover == [], "a process the submission started outlived autograde"
    assert added == [] and teacher_file.read_text() == "grade boundaries\n"
    own = subprocess.run(["iptables", "-S", "INPUT"], capture_output=True, text=True, check=False).stdout
    assert "pktlab-malicious" not in own

    with Gradebook(f"sqlite:///{course / 'gradebook.db'}", "pktlab") as gb:
        scores = {(a, s): gb.find_submission(a, s).score for a, s in submissions}
    totals = {a: sum(c.points for c in ASSIGNMENTS[a].checks) for a in ASSIGNMENTS}
    for a in ASSIGNMENTS:
        assert scores[a, "correct"] == totals[a], (a, scores)
        assert 0 < scores[a, "wrong"] < totals[a], (a, scores)
    for key in (("firewall", "crashing"), ("firewall", "hanging"), ("firewall", "malicious")):
        assert scores[key] == 0, (key, scores)
    # the same notebooks through pktlab grade (two at a time, as autograde ran them): the same scores
    keys = list(paths)
    for key, (_, report) in zip(keys, grade_many([paths[k] for k in keys], jobs=2), strict=True):
        assert not isinstance(report, str), (key, report)
        assert report.score == scores[key], (key, report.score, scores[key])

    # the malicious kernel saw no hidden test; its forged "PASS" lines were replaced by pktlab's own results
    graded = nbformat.read(course / "autograded" / "malicious" / "firewall" / "firewall.ipynb", as_version=4)
    outputs = json.dumps([c.get("outputs", []) for c in graded.cells])
    assert "HIDDEN TESTS:" not in outputs and "could not read the hidden tests" in outputs
    assert "HELD-BACK CAPTURE READ" not in outputs and "could not read the held-back capture" in outputs
    assert "forged" not in outputs and "started a process that outlived the check" in outputs

    _nbgrader(course, "generate_feedback", "firewall", "--force")
    html = (course / "feedback" / "wrong" / "firewall" / "firewall.html").read_text()
    assert "a TCP packet of no open connection was accepted: tcp 10.77.1.1" in html
    _nbgrader(course, "generate_feedback", "nat", "--force")
    html = (course / "feedback" / "wrong" / "nat" / "nat.html").read_text()
    assert "an inbound packet of no flow was let in" in html and "is the port of a TCP flow, not of a UDP one" in html
    shutil.rmtree(course / "autograded", ignore_errors=True)


def test_the_source_notebooks_hold_the_reference_and_one_hidden_test_per_check() -> None:
    from pktlab.grading.nbgrader import check_calls, source_notebook

    for name, a in ASSIGNMENTS.items():
        nb = source_notebook(name)
        solution = [c for c in nb.cells if c.metadata.get("nbgrader", {}).get("solution")]
        assert len(solution) == 1 and "### BEGIN SOLUTION" in solution[0].source
        tests = [c for c in nb.cells if c.metadata.get("nbgrader", {}).get("grade")]
        assert [check_calls(c.source) for c in tests] == [[(name, c.name)] for c in a.checks]
        assert [c.metadata.nbgrader["points"] for c in tests] == [c.points for c in a.checks]
        assert all(c.metadata.nbgrader["locked"] for c in nb.cells if c.cell_type == "markdown")


def test_check_raises_with_the_reason_pktlab_grade_gives(tmp_path: Path) -> None:
    from pktlab.grading import CheckFailed, check

    stray = "a TCP packet outside any connection is dropped"
    with pytest.raises(CheckFailed, match="a TCP packet of no open connection was accepted: tcp 10.77.1.1"):
        check("firewall", stray, code=BUGGY["firewall"])
    assert check("firewall", stray, code=REFERENCE["firewall"]).passed
    with pytest.raises(Exception, match="has no check 'nonsense'; its checks are"):
        check("firewall", "nonsense", code=REFERENCE["firewall"])
