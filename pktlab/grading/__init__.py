"""Course assignments and their grader: ``pktlab grade STUDENT.ipynb``.

An assignment (``pktlab.grading.assignments``) names the handlers a student
writes and the checks that grade them: replay checks run the handlers on a
held-back capture, live checks on a lab.  The grader keeps everything
privileged (the lab, the queue, the capture) to itself; the student's code runs
in a sandbox process (:mod:`pktlab.grading.sandbox`: nobody, no capabilities,
new PID, network and mount namespaces, the grading folders hidden) that gets
each packet and answers with a verdict, a fresh one per check.  Code that
raises, hangs, exits, forks or reaches outside makes that check fail with a
reason instead of stopping the grader.

In nbgrader (:mod:`pktlab.grading.nbgrader`): ``pktlab course DIR`` makes a course folder whose source
notebooks' hidden tests call :func:`check`, and autograde grades those checks outside the student's kernel.
"""

from .grader import CheckResult, GradeReport, extract_solution, grade, grade_many, run_check
from .nbgrader import CheckFailed, check, make_course

__all__ = ["CheckFailed", "CheckResult", "GradeReport", "check", "extract_solution", "grade", "grade_many",
           "make_course", "run_check"]  # fmt: skip
