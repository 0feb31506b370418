"""The ``pktlab`` command: the same API as the notebook, from a terminal."""

from __future__ import annotations

import os
import sys

from .errors import PktlabError
from .options import DeclaredParser


def demo(count: int = 2000) -> int:
    """A headless end-to-end run: lab up, attach, hot-swap handlers under traffic, tear down."""
    from .kernel import netns as _netns
    from .kernel import rules
    from .lab.network import Lab
    from .pipeline.session import attach

    with Lab() as lab:
        print(f"lab up: {lab}")
        s = attach(1, rule="-p udp --dport 9000", netns=lab.server)
        print(f"attached: {s.rule.describe()}")

        r = lab.udp(count, rate=10000)
        print(f"1. no handler:           sent {r.sent}, received {r.unique} (missing {r.missing_count})")

        @s.handler(name="filter")  # one slot in the chain, hot-swapped three times below
        def drop_odd(pkt):  # type: ignore[no-untyped-def]
            if pkt.udp and int.from_bytes(pkt.udp.payload[:4], "big") % 2:
                return pkt.drop()
            return None

        r = lab.udp(count, rate=10000)
        print(f"2. filter = drop_odd:    sent {r.sent}, received {r.unique} (expected {count // 2})")

        @s.handler(name="filter")
        def stamp(pkt):  # type: ignore[no-untyped-def]
            if pkt.udp:
                pkt.udp.payload = pkt.udp.payload[:4] + b"pktlab was here"
            return pkt.accept()

        r = lab.udp(5, keep=1)
        print(f"3. filter = stamp:       received {r.unique}, payload {r.payloads[0][4:]!r} (checksums fixed)")

        @s.handler(name="filter")
        def flaky(pkt):  # type: ignore[no-untyped-def]
            if pkt.id % 10 == 0:
                raise ValueError("every tenth packet")
            return None

        r = lab.udp(count, rate=10000)
        print(
            f"4. filter = flaky:       received {r.unique} of {r.sent}; {len(s.errors)} errors kept, e.g. {s.errors[0]}"
        )
        print(s.status())
        df = s.df
        by = df.assign(handler=df["handler"].fillna("(default verdict)"))  # no handler decided them
        print(by.groupby(["handler", "verdict"]).size().to_string())
        s.detach()
        left = [r for r in rules.saved_rules(lab.server.netns) if "pktlab" in " ".join(r.tokens)]
        print(f"detached: {len(left)} pktlab rules left in {lab.server.netns}")
        names = [h.netns for h in lab.hosts.values()]
    still = [n for n in names if n in _netns.list_names()]
    print(f"lab down: {len(still)} namespaces left")
    return 0 if not left and not still else 1


def doctor(clean: bool) -> int:
    """Say whether live mode works here and why not; with ``clean``, remove leftovers of dead processes."""
    from . import doctor as _doctor

    report = _doctor.run(clean=clean)
    print(report)
    if clean and not report.cleaned:
        print("cleaned: nothing was left behind")
    return 0 if report.live else 1


def grade(paths: list[str], *, as_json: bool, live: bool | None, jobs: int = 1) -> int:
    """Grade each notebook (folders: every .ipynb in them); a notebook that cannot be graded is reported, not fatal."""
    import json
    from pathlib import Path

    from .grading import grade_many

    notebooks: list[Path] = []
    for p in map(Path, paths):
        notebooks += sorted(p.glob("*.ipynb")) if p.is_dir() else [p]
    failed = 0
    for nb, report in grade_many(notebooks, live=live, jobs=jobs):
        if isinstance(report, str):
            failed += 1
            err = {"notebook": nb.name, "error": report}
            print(json.dumps(err) if as_json else f"{nb.name}: cannot grade: {report}", flush=True)
            continue
        print(json.dumps(report.as_dict()) if as_json else report, flush=True)
    return 1 if failed else 0


def autograde(assignment: str, folder: str, jobs: int) -> int:
    """nbgrader autograde of every submission of ``assignment``, ``jobs`` students at a time."""
    import shutil
    import subprocess
    import sys
    import time
    from concurrent.futures import ThreadPoolExecutor
    from pathlib import Path

    root = Path(folder)
    students = sorted(p.parent.name for p in root.glob(f"submitted/*/{assignment}") if p.is_dir())
    if not students:
        raise PktlabError(f"no submissions of {assignment} in {root / 'submitted'} (submitted/STUDENT/{assignment}/)")
    nbgrader = shutil.which("nbgrader", path=f"{Path(sys.executable).parent}:{os.environ.get('PATH', '')}")
    if nbgrader is None:
        raise PktlabError("nbgrader is not installed; pip install 'pktlab[grading]'")
    env = {**os.environ, "PATH": f"{Path(nbgrader).parent}:{os.environ.get('PATH', '')}"}

    def one(student: str) -> tuple[str, int, float, str]:
        t0 = time.monotonic()
        proc = subprocess.run([nbgrader, "autograde", assignment, "--student", student, "--force"], cwd=root,
                              env=env, capture_output=True, text=True, check=False)  # fmt: skip
        return student, proc.returncode, time.monotonic() - t0, proc.stderr  # whole: a kernel says why early on

    failed = 0
    t0 = time.monotonic()
    with ThreadPoolExecutor(max_workers=jobs) as pool:  # each nbgrader is a process of its own
        for student, code, seconds, err in pool.map(one, students):
            failed += code != 0
            print(f"{student}: {'graded' if code == 0 else 'FAILED'} in {seconds:.1f} s"
                  + ("" if code == 0 else f"\n{err}"), flush=True)  # fmt: skip
    print(f"pktlab: {len(students)} submission(s) of {assignment} in {time.monotonic() - t0:.1f} s, {jobs} at a time")
    return 1 if failed else 0


def course(folder: str, assignments: list[str] | None) -> int:
    from .grading.nbgrader import make_course

    root = make_course(folder, assignments)
    names = sorted(p.name for p in (root / "source").iterdir())
    print(f"pktlab: an nbgrader course in {root}: {', '.join(names)}")
    print(f"  next, in {root}: nbgrader generate_assignment NAME, students' work in submitted/STUDENT/NAME/, then "
          "nbgrader autograde NAME and nbgrader generate_feedback NAME")
    return 0


def make_parser() -> DeclaredParser:
    """The ``pktlab`` command line (the docs' reference of it is made from this parser)."""
    p = DeclaredParser(prog="pktlab", description="a Jupyter-first interactive packet lab")
    sub = p.add_subparsers(dest="cmd", required=True, metavar="COMMAND")
    d = p.add_command(sub, "demo", help="headless end-to-end demo on a lab (live mode: root, or an ordinary user "
                       "where user namespaces are allowed)")  # fmt: skip
    d.add_argument("--count", type=int, default=2000, help="datagrams the demo sends")
    doc = p.add_command(sub, "doctor", help="check what this machine allows; --clean removes leftovers")
    doc.add_argument("--clean", action="store_true", help="remove namespaces and rules left by dead pktlab processes")
    g = p.add_command(sub, "grade", help="grade student notebooks of a pktlab assignment")
    g.add_argument("notebooks", nargs="+", help="student notebooks, or folders of them")
    g.add_argument("--json", action="store_true", help="one JSON object per notebook instead of text")
    g.add_argument("--no-live", action="store_true", help="skip the live checks (replay checks only)")
    g.add_argument("--jobs", type=int, default=1, help="notebooks graded at a time, each in a process of its own")
    c = p.add_command(sub, "course", help="make an nbgrader course folder with pktlab's assignments (source "
                      "notebooks with hidden tests, and a configuration that grades them outside the student's kernel)")
    c.add_argument("folder", help="the course folder to make (nbgrader's course root)")
    c.add_argument("--assignment", action="append", dest="assignments", default=None,
                   help="only this assignment (again for more); default: all of them")  # fmt: skip
    au = p.add_command(sub, "autograde", help="nbgrader autograde of every submission of an assignment, several "
                       "students at a time (each in its own nbgrader process, kernel, sandboxes and labs)")
    au.add_argument("assignment", help="the assignment's name in the course")
    au.add_argument("--course", default=".", help="the course folder (default: the current one)")
    au.add_argument("--jobs", type=int, default=2, help="students graded at a time")
    return p


def main(argv: list[str] | None = None) -> int:
    p = make_parser()
    a = p.parse_args(argv)
    try:
        if a.cmd == "demo":
            return demo(a.count)
        if a.cmd == "grade":
            return grade(a.notebooks, as_json=a.json, live=False if a.no_live else None, jobs=a.jobs)
        if a.cmd == "autograde":
            return autograde(a.assignment, a.course, a.jobs)
        if a.cmd == "course":
            return course(a.folder, a.assignments)
        return doctor(a.clean)
    except PktlabError as exc:
        print(f"pktlab: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
