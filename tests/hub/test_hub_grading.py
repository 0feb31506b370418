"""Grading in the hub (scripts/hub.sh): the teacher releases an assignment from nbgrader's formgrader, two students
fetch it in their servers, write a solution and submit it, the teacher collects, autogrades (the live checks run
in the teacher's server, as the teacher: an ordinary user) and releases feedback, and each student fetches theirs.

Every step goes through the hub with the logged-in browser session of whoever does it (the HTTP calls nbgrader's
Assignments tab and formgrader make), so it exercises the configuration the hub gives each role.
"""

from __future__ import annotations

import json
import pwd
import shutil
import subprocess
from pathlib import Path
from typing import Any

from pktlab.grading.assignments import ASSIGNMENTS
from pktlab.hub.limits import StudentLimits
from tests.grading.test_grader import BUGGY
from tests.hub.test_hub import PREFIX, TEACHER, _login, pytestmark, running_as, running_hub  # noqa: F401 - the same marks

REFERENCE = (ASSIGNMENTS["firewall"].heldback.parent / "reference.py").read_text()
TOTAL = sum(c.points for c in ASSIGNMENTS["firewall"].checks)


def _call(page, base: str, user: str, method: str, path: str, **kw: Any) -> Any:  # type: ignore[no-untyped-def]
    """One request to ``user``'s server with their browser session (cookie and XSRF token), its JSON answer."""
    token = next(c["value"] for c in page.context.cookies()
                 if c["name"] == "_xsrf" and c["path"].startswith(f"/user/{user}"))  # fmt: skip
    r = page.request.fetch(f"{base}/user/{user}/{path}", method=method, headers={"X-XSRFToken": token},
                           timeout=600_000, **kw)  # fmt: skip
    assert r.ok, f"{user}: {method} {path}: {r.status} {r.text()[-2000:]}"
    return r.json() if r.text() else None


def _ok(answer: Any, what: str) -> None:
    assert isinstance(answer, dict) and answer.get("success"), f"{what}: {json.dumps(answer)[-3000:]}"


def _write_solution(page, base: str, user: str, code: str) -> None:  # type: ignore[no-untyped-def]
    """What the student's editor does on save: the notebook back through the contents API, the solution in it."""
    path = "api/contents/firewall/firewall.ipynb"
    model = _call(page, base, user, "GET", f"{path}?content=1&type=notebook")
    cell = next(c for c in model["content"]["cells"] if c["metadata"].get("nbgrader", {}).get("solution"))
    cell["source"] = code
    _call(page, base, user, "PUT", path, data={"type": "notebook", "format": "json", "content": model["content"]})


def _as(user: str, *argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["runuser", "-u", user, "--", *argv], capture_output=True, text=True, check=False)


def test_the_teacher_releases_collects_autogrades_and_returns_feedback_in_the_hub() -> None:
    from playwright.sync_api import sync_playwright

    a, b = f"{PREFIX}01", f"{PREFIX}02"
    course = {"course_id": "pktlab", "assignment_id": "firewall"}
    with running_hub(2) as (base, passwords, state), sync_playwright() as p:
        offline = ["--proxy-server=http://127.0.0.1:9", "--proxy-bypass-list=127.0.0.1;localhost"]
        browser = p.chromium.launch(executable_path=shutil.which("chromium"), headless=True,
                                    args=["--no-sandbox", *offline])  # fmt: skip
        try:
            pages = {u: _login(browser.new_context(), base, u, passwords[u]) for u in (TEACHER, a, b)}
            uids = {u: pwd.getpwnam(u).pw_uid for u in pages}  # the accounts go with the hub
            teacher = pages[TEACHER]
            _ok(_call(teacher, base, TEACHER, "POST", "formgrader/api/assignment/firewall/assign"), "generate")
            _ok(_call(teacher, base, TEACHER, "POST", "formgrader/api/assignment/firewall/release"), "release")

            for user, code in ((a, REFERENCE), (b, BUGGY["firewall"])):
                listed = _call(pages[user], base, user, "POST", "assignments/fetch", form=course)
                _ok(listed, f"{user} fetches")
                assert any(x["assignment_id"] == "firewall" and x["status"] == "fetched" for x in listed["value"])
                _write_solution(pages[user], base, user, code)
                listed = _call(pages[user], base, user, "POST", "assignments/submit", form=course)
                _ok(listed, f"{user} submits")
                assert any(x["status"] == "submitted" for x in listed["value"]), listed
            # a student has no formgrader, cannot list the others' submissions nor read the teacher's grading copy
            r = pages[b].request.get(f"{base}/user/{b}/formgrader/api/assignments")
            assert r.status == 404, r.status
            inbound = state / "shared" / "exchange" / "pktlab" / "inbound"
            assert "Permission denied" in _as(b, "ls", str(inbound)).stderr
            teacher_home = Path(pwd.getpwnam(TEACHER).pw_dir)
            heldback = teacher_home / "pktlab-assignments" / "firewall" / "grading" / "heldback.pcap"
            assert heldback.is_file() and "Permission denied" in _as(b, "head", "-c4", str(heldback)).stderr

            _ok(_call(teacher, base, TEACHER, "POST", "formgrader/api/assignment/firewall/collect"), "collect")
            for user in (a, b):  # the live checks run here, in the teacher's server, as the teacher
                _ok(_call(teacher, base, TEACHER, "POST", f"formgrader/api/submission/firewall/{user}/autograde"),
                    f"autograde {user}")  # fmt: skip
            scores = {s["student"]: s["score"] for s in
                      _call(teacher, base, TEACHER, "GET", "formgrader/api/submissions/firewall")}  # fmt: skip
            assert scores[a] == TOTAL and 0 < scores[b] < TOTAL, scores
            assert _as(TEACHER, "id", "-u").stdout.strip() != "0"  # an ordinary user graded it

            _ok(_call(teacher, base, TEACHER, "POST", "formgrader/api/assignment/firewall/generate_feedback"),
                "generate feedback")  # fmt: skip
            _ok(_call(teacher, base, TEACHER, "POST", "formgrader/api/assignment/firewall/release_feedback"),
                "release feedback")  # fmt: skip
            for user in (a, b):
                _ok(_call(pages[user], base, user, "POST", "assignments/fetch_feedback", form=course),
                    f"{user} fetches feedback")  # fmt: skip
            home = {u: Path(pwd.getpwnam(u).pw_dir) for u in (a, b)}
            feedback = {u: list((home[u] / "firewall" / "feedback").glob("*/firewall.html")) for u in (a, b)}
            assert all(len(f) == 1 for f in feedback.values()), feedback
            assert f"Score: {TOTAL:.1f} / {TOTAL:.1f}" in feedback[a][0].read_text()
            assert "a TCP packet of no open connection was accepted: tcp 10.77.1.1" in feedback[b][0].read_text()
        finally:
            browser.close()
    limits = StudentLimits()
    for user, uid in uids.items():  # the hub has stopped: nothing of theirs is left
        assert running_as(uid) == [], f"{user} still runs processes"
        assert not any(d.exists() for d in limits.dirs(user))
