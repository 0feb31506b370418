"""The grader: full marks for the reference, partial for a seeded bug, zero (no crash) for code that fails."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest

from pktlab.grading import extract_solution, grade
from pktlab.grading.assignments import ASSIGNMENTS
from tests.conftest import _is_root, my_namespaces, needs_root, pktlab_rules

ROOT = Path(__file__).resolve().parents[2] / "notebooks" / "assignments"

BUGGY = {
    # stateless: lets through what goes *to* port 9001 only, so replies die and a stray ACK passes
    "firewall": "def firewall(pkt):\n    if pkt.tcp is None:\n        return None\n"
    "    return pkt.accept() if pkt.tcp.dport == 9001 else pkt.drop()\n",
    # rewrites every answer, whatever the name
    "dns-rewriter": "def rewrite_dns(pkt):\n    d = pkt.dns\n    if d is not None and d.qr:\n"
    "        for rr in d.answers:\n            rr.address = '10.77.2.99'\n        return pkt.accept()\n",
}
RAISES = "def {fn}(pkt):\n    raise RuntimeError('not written yet')\n"
LOOPS = "def {fn}(pkt):\n    while True:\n        pass\n"
ESCAPES = (
    "import ctypes, os\n_libc = ctypes.CDLL(None, use_errno=True)\n"
    "def {fn}(pkt):\n    fd = os.open('/proc/1/ns/net', os.O_RDONLY)\n"
    "    if _libc.setns(fd, 0x40000000) != 0:\n        raise PermissionError('setns refused')\n"
    "    return pkt.accept()\n"
)
EXITS = "import os\nos._exit(3)\n"


def notebook(tmp_path: Path, assignment: str, code: str, label: str) -> Path:
    nb = nbformat.read(ROOT / assignment / "student.ipynb", as_version=4)
    cell = next(c for c in nb.cells if "solution" in c.metadata.get("tags", []))
    cell.source = code
    path = tmp_path / f"{assignment}-{label}.ipynb"
    nbformat.write(nb, path)
    return path


def fn_of(assignment: str) -> str:
    return ASSIGNMENTS[assignment].handlers[0]


def test_extract_takes_the_solution_cell_and_handler_cells(tmp_path: Path) -> None:
    nb = nbformat.read(ROOT / "firewall" / "student.ipynb", as_version=4)
    nb.cells.append(nbformat.v4.new_code_cell("%%pktlab handler helper\nreturn None"))
    path = tmp_path / "x.ipynb"
    nbformat.write(nb, path)
    name, code = extract_solution(path)
    assert name == "firewall" and "def firewall(pkt):" in code and "def helper(pkt):" in code
    assert "s = pktlab.replay" not in code  # practice cells are not graded


@pytest.mark.parametrize("assignment", sorted(ASSIGNMENTS))
def test_replay_checks_without_root(tmp_path: Path, assignment: str) -> None:
    ref = (ROOT / assignment / "grading" / "reference.py").read_text()
    report = grade(notebook(tmp_path, assignment, ref, "ref"), live=False)
    replay = [r for r in report.results if not r.name.startswith("live")]
    assert all(r.passed for r in replay), str(report)
    assert all("live check not run" in r.reason for r in report.results if r.name.startswith("live"))


@needs_root
@pytest.mark.parametrize("assignment", sorted(ASSIGNMENTS))
def test_reference_gets_full_marks_and_a_seeded_bug_partial(tmp_path: Path, assignment: str) -> None:
    ref = (ROOT / assignment / "grading" / "reference.py").read_text()
    full = grade(notebook(tmp_path, assignment, ref, "ref"))
    assert full.score == full.total == 10, str(full)
    bug = grade(notebook(tmp_path, assignment, BUGGY[assignment], "bug"))
    assert 0 < bug.score < bug.total, str(bug)
    assert all(r.reason for r in bug.results if not r.passed)


@needs_root
@pytest.mark.parametrize("kind", ["raises", "loops", "escapes", "exits"])
def test_failing_solutions_get_zero_and_a_reason(tmp_path: Path, kind: str) -> None:
    assignment = "firewall"
    code = {"raises": RAISES, "loops": LOOPS, "escapes": ESCAPES, "exits": EXITS}[kind].format(fn=fn_of(assignment))
    report = grade(notebook(tmp_path, assignment, code, kind))
    assert report.score == 0, str(report)
    text = str(report)
    expected = {
        "raises": "RuntimeError: not written yet",
        "loops": "did not return",
        "escapes": "PermissionError",  # the worker holds no CAP_SYS_ADMIN: the way out is refused
        "exits": "ended the check's process",
    }[kind]
    assert expected in text, text
    assert my_namespaces() == [] and pktlab_rules(None) == []


def test_cli_grades_a_folder_and_reports_notebooks_it_cannot_grade(tmp_path: Path) -> None:
    ref = (ROOT / "dns-rewriter" / "grading" / "reference.py").read_text()
    notebook(tmp_path, "dns-rewriter", ref, "ref")
    (tmp_path / "broken.ipynb").write_text("{not json")
    live = [] if _is_root() else ["--no-live"]
    out = subprocess.run([sys.executable, "-m", "pktlab.cli", "grade", str(tmp_path), "--json", *live],
                         capture_output=True, text=True, timeout=300)  # fmt: skip
    lines = [json.loads(x) for x in out.stdout.splitlines()]
    assert out.returncode == 1
    assert lines[0]["notebook"] == "broken.ipynb" and "not a notebook" in lines[0]["error"]
    assert lines[1]["notebook"] == "dns-rewriter-ref.ipynb"
    assert lines[1]["score"] == (10 if _is_root() else 7)
