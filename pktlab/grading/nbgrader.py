"""pktlab's assignments in nbgrader: source notebooks, a course folder, and checks graded outside the kernel.

A teacher who runs nbgrader gets each assignment as an nbgrader source notebook (:func:`source_notebook`): the
instructions locked, the reference solution between ``### BEGIN SOLUTION`` / ``### END SOLUTION`` in the
handler cell (the cell tagged ``solution``, which ``pktlab grade`` reads too), and one autograder test cell per
check, worth the check's points, whose hidden test calls :func:`check`.  :func:`make_course` lays out a course
folder (``pktlab course DIR``) with those notebooks under ``source/`` and an ``nbgrader_config.py``.

Why outside the kernel: nbgrader's autograde runs the whole submission in one kernel, the student's top-level
code included, and scores a test cell by whether its output shows an error; code in that kernel can replace
``check`` or swallow every error.  So the course's configuration adds :class:`GradeChecks` to autograde's
preprocessors, right after the notebook ran: for every test cell that calls :func:`check` (recognised by its
source, which nbgrader restores from its gradebook), it runs the check in pktlab's grader — the solution cells
in pktlab's sandbox, the lab and the held-back capture kept by the grader — and writes the result as the cell's
output, the check's reason in the error; what the kernel printed there is discarded.  The in-kernel
:func:`check` then has nothing to do during autograde and says so.  What still runs unsandboxed, as the teacher:
the submission's top-level cells during ``nbgrader autograde`` (nbgrader's own design); run autograde as an
ordinary user with no access to anything but the course (live checks need no root).
"""

from __future__ import annotations

import ast
import functools
import os
from pathlib import Path
from typing import Any

from ..errors import PktlabError
from .assignments import ASSIGNMENTS, ROOT, LiveCheck
from .grader import CheckResult, extract_cells, run_check

OUT_OF_BAND = "PKTLAB_CHECKS_OUT_OF_BAND"  # set by the course's nbgrader_config.py when GradeChecks runs
SCHEMA = 3  # nbgrader's cell metadata schema


class CheckFailed(AssertionError, PktlabError):
    """A check of an assignment failed; the message is its reason (the sentence ``pktlab grade`` prints)."""


def check(assignment: str, name: str, *, code: str | None = None, notebook: str | os.PathLike[str] | None = None,
          live: bool | None = None) -> CheckResult | None:  # fmt: skip
    """Run one check of ``assignment`` on the student's solution; raise :class:`CheckFailed` with its reason.

    The solution is ``code``, else the solution cells of ``notebook``, else of the one notebook in the current
    folder that names the assignment (``metadata.pktlab.assignment``) — where nbgrader runs a submission.
    Under ``nbgrader autograde`` with the course's configuration, pktlab grades the check outside the kernel
    (see the module's docstring) and this call only says so.
    """
    if os.environ.get("NBGRADER_EXECUTION") == "autograde" and os.environ.get(OUT_OF_BAND):
        print(f"pktlab: {name!r} is graded outside this kernel (pktlab's nbgrader preprocessor)")
        return None
    if code is None:
        code = _solution_of(assignment, notebook)
    result = run_check(assignment, name, code, live=live)
    if result.skipped or not result.passed:
        raise CheckFailed(result.reason)
    print(f"PASS {result.points}/{result.points}  {name}")
    return result


def _solution_of(assignment: str, notebook: str | os.PathLike[str] | None) -> str:
    import nbformat

    if notebook is not None:
        found = [Path(notebook)]
    else:
        found = []
        for path in sorted(Path.cwd().glob("*.ipynb")):
            try:
                meta = nbformat.read(path, as_version=4).metadata
            except Exception:  # not a notebook nbformat reads: not the submission
                continue
            if meta.get("pktlab", {}).get("assignment") == assignment:
                found.append(path)
    if len(found) != 1:
        raise PktlabError(
            f"check() needs the student's solution: give code= or notebook=, or run it in the folder of the one "
            f"notebook of assignment {assignment!r} (found {len(found)} in {Path.cwd()})"
        )
    name, code = extract_cells(nbformat.read(found[0], as_version=4), found[0].name)
    if name != assignment:
        raise PktlabError(f"{found[0].name} is a notebook of assignment {name!r}, not {assignment!r}")
    return code


# -- the source notebooks and the course folder ------------------------------------------
def _locked(cell: Any, grade_id: str) -> Any:
    cell.metadata["nbgrader"] = {"grade": False, "grade_id": grade_id, "locked": True, "schema_version": SCHEMA,
                                 "solution": False, "task": False}  # fmt: skip
    return cell


def source_notebook(assignment: str) -> Any:
    """The nbgrader source notebook of a pktlab assignment, made from its student notebook and reference."""
    import nbformat
    from nbformat.v4 import new_code_cell, new_markdown_cell

    a = ASSIGNMENTS[assignment]
    nb = nbformat.read(ROOT / assignment / "student.ipynb", as_version=4)
    reference = (a.heldback.parent / "reference.py").read_text().strip()
    cells = []
    for i, cell in enumerate(nb.cells):
        if cell.cell_type == "markdown":
            cells.append(_locked(cell, f"instructions-{i}"))
        elif "solution" in cell.metadata.get("tags", []):
            cell.source = f"### BEGIN SOLUTION\n{reference}\n### END SOLUTION"
            cell.metadata["nbgrader"] = {"grade": False, "grade_id": "solution", "locked": False,
                                         "schema_version": SCHEMA, "solution": True, "task": False}  # fmt: skip
            cells.append(cell)
        else:
            cells.append(cell)
    cells.append(_locked(new_markdown_cell(
        "## Autograder tests\nEach cell below is one check of your handler, worth its points. They are hidden: the "
        "grader runs them on a capture you have not seen and in a lab, with your handler in a sandbox."
    ), "tests-heading"))  # fmt: skip
    for i, c in enumerate(a.checks, 1):
        how = "live, in a client-router-server lab" if isinstance(c, LiveCheck) else "on the held-back capture"
        cell = new_code_cell(
            f"# check {i}: {c.name} ({c.points} point{'s' if c.points != 1 else ''}; graded {how})\n"
            "from pktlab.grading import check\n"
            f"### BEGIN HIDDEN TESTS\ncheck({assignment!r}, {c.name!r})\n### END HIDDEN TESTS"
        )
        cell.metadata["nbgrader"] = {"grade": True, "grade_id": f"check-{i}", "locked": True, "points": c.points,
                                     "schema_version": SCHEMA, "solution": False, "task": False}  # fmt: skip
        cells.append(cell)
    nb.cells = cells
    nb.metadata["pktlab"] = {"assignment": assignment}
    return nb


CONFIG = '''\
# nbgrader's configuration of a pktlab course (made by `pktlab course`): the course folder is this one, and
# autograde grades pktlab's checks outside the student's kernel (pktlab.grading.nbgrader.GradeChecks).
import os

from pktlab.grading.nbgrader import OUT_OF_BAND, autograde_preprocessors

c = get_config()  # noqa: F821 - nbgrader's config loader defines it
c.CourseDirectory.root = os.path.dirname(os.path.abspath(__file__))
c.CourseDirectory.course_id = "pktlab"
c.Autograde.autograde_preprocessors = autograde_preprocessors()
c.Execute.timeout = 300  # a cell (a practice lab) may take a while; a check's own time is bounded by the grader
# the submission's own cells run in a contained kernel (pktlab.grading.kernel): no privilege, no course files
c.Execute.kernel_manager_class = "pktlab.grading.kernel.SandboxedKernelManager"
os.environ[OUT_OF_BAND] = "1"  # the kernel's check() leaves the grading to GradeChecks
os.environ["PKTLAB_COURSE_ROOT"] = c.CourseDirectory.root  # what the contained kernel hides
'''


def make_course(root: str | os.PathLike[str], assignments: list[str] | None = None) -> Path:
    """An nbgrader course folder: ``nbgrader_config.py`` and ``source/NAME/NAME.ipynb`` per assignment."""
    import nbformat

    names = list(ASSIGNMENTS) if assignments is None else assignments
    unknown = [n for n in names if n not in ASSIGNMENTS]
    if unknown:
        raise PktlabError(f"no assignment {', '.join(unknown)}; the assignments are {', '.join(ASSIGNMENTS)}")
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    (root / "nbgrader_config.py").write_text(CONFIG)
    for name in names:
        folder = root / "source" / name
        folder.mkdir(parents=True, exist_ok=True)
        nbformat.write(source_notebook(name), folder / f"{name}.ipynb")
    return root


# -- grading outside the kernel ----------------------------------------------------------
def check_calls(source: str) -> list[tuple[str, str]]:
    """The ``check("assignment", "name")`` calls of a cell's source (literal arguments only)."""
    try:
        tree = ast.parse(source)
    except SyntaxError:
        return []
    out = []
    for node in ast.walk(tree):
        if (isinstance(node, ast.Call) and len(node.args) >= 2
                and (getattr(node.func, "id", None) == "check" or getattr(node.func, "attr", None) == "check")
                and all(isinstance(a, ast.Constant) and isinstance(a.value, str) for a in node.args[:2])):  # fmt: skip
            out.append((node.args[0].value, node.args[1].value))
    return out


def _grade_checks(nb: Any, label: str) -> None:
    """Replace the outputs of every test cell that calls check() by the result pktlab's grader gives."""
    from nbformat.v4 import new_output

    code: dict[str, str] = {}
    for cell in nb.cells:
        meta = cell.metadata.get("nbgrader", {})
        if cell.cell_type != "code" or not meta.get("grade"):
            continue
        calls = check_calls(cell.source)
        if not calls:
            continue
        outputs: list[Any] = []
        for assignment, name in calls:
            try:
                if assignment not in code:
                    found, code[assignment] = extract_cells(nb, label)
                    if found != assignment:
                        raise PktlabError(f"{label} is a notebook of assignment {found!r}, not {assignment!r}")
                result = run_check(assignment, name, code[assignment])
                failed = result.reason if result.skipped or not result.passed else None
            except PktlabError as exc:
                failed = str(exc)
            if failed is not None:
                outputs = [new_output("error", ename="CheckFailed", evalue=failed,
                                      traceback=[f"CheckFailed: {name}: {failed}"])]  # fmt: skip
                break
            outputs.append(new_output("stream", name="stdout", text=f"PASS {name}\n"))
        cell.outputs = outputs


@functools.cache
def _preprocessor_class() -> type:
    from nbconvert.preprocessors import Preprocessor

    class GradeChecks(Preprocessor):
        """nbgrader autograde's step that grades pktlab's checks outside the student's kernel."""

        enabled = True  # nbconvert's preprocessors are off unless told; this one is the grading

        def preprocess(self, nb: Any, resources: dict[str, Any]) -> tuple[Any, dict[str, Any]]:
            label = resources.get("nbgrader", {}).get("notebook", "the submission")
            _grade_checks(nb, str(label))
            return nb, resources

    return GradeChecks


def autograde_preprocessors() -> list[type]:
    """nbgrader's autograde steps with :class:`GradeChecks` right after the notebook ran."""
    from nbgrader.converters.autograde import Autograde
    from nbgrader.preprocessors import Execute

    steps = list(Autograde.class_traits()["autograde_preprocessors"].default())
    steps.insert(steps.index(Execute) + 1, _preprocessor_class())
    return steps


def __getattr__(name: str) -> Any:
    """``GradeChecks`` is made when first asked for (nbconvert is imported only then)."""
    if name == "GradeChecks":
        return _preprocessor_class()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
