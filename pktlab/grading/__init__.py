"""Course assignments and their grader: ``pktlab grade STUDENT.ipynb``.

An assignment (``pktlab.grading.assignments``) names the handlers a student
writes and the checks that grade them: replay checks run the handlers on a
held-back capture, live checks on a lab.  Every check runs student code in a
separate worker process (:mod:`pktlab.grading.worker`) with a time limit, so
code that raises, loops forever or exits makes that check fail with a reason
instead of stopping the grader.  Replay workers run without any privilege
(``setpriv`` to ``nobody``) when the grader is root; live workers run inside
the lab's router namespace, and a worker whose threads left that namespace
fails its check.
"""

from .grader import CheckResult, GradeReport, extract_solution, grade

__all__ = ["CheckResult", "GradeReport", "extract_solution", "grade"]
