"""The grader: full marks for the reference, partial for a seeded bug, zero (no crash) for code that fails."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import nbformat
import pytest

from pktlab.grading import extract_solution, grade
from pktlab.grading.assignments import ASSIGNMENTS
from tests.conftest import _is_root, my_namespaces, needs_live, pktlab_rules

ROOT = Path(__file__).resolve().parents[2] / "notebooks" / "assignments"

BUGGY = {
    # stateless: lets through what goes *to* port 9001 only, so replies die and a stray ACK passes
    "firewall": "def firewall(pkt):\n    if pkt.tcp is None:\n        return None\n"
    "    return pkt.accept() if pkt.tcp.dport == 9001 else pkt.drop()\n",
    # rewrites every answer, whatever the name
    "dns-rewriter": "def rewrite_dns(pkt):\n    d = pkt.dns\n    if d is not None and d.qr:\n"
    "        for rr in d.answers:\n            rr.address = '10.77.2.99'\n        return pkt.accept()\n",
    # replies found by port alone: a datagram to a TCP flow's port is let in (everything else is right)
    "nat": (ROOT / "nat" / "grading" / "reference.py").read_text()
    .replace("if (pkt.proto, port) not in back:", "if not any(p == port for _, p in back):")
    .replace("back[pkt.proto, port]", "next(v for (_, p), v in back.items() if p == port)"),
    # the wall clock instead of the packets' time: right live, where they are about the same, wrong in a replay
    "policer": "import time\n"
    + (ROOT / "policer" / "grading" / "reference.py").read_text().replace("pkt.time", "time.time()"),
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
    assert all(r.skipped and "skipped" in r.reason for r in report.results if r.name.startswith("live"))
    replayed = sum(c.points for c in ASSIGNMENTS[assignment].checks if not c.name.startswith("live"))
    assert report.total == replayed and "SKIP" in str(report)


@needs_live
@pytest.mark.parametrize("assignment", sorted(ASSIGNMENTS))
def test_reference_gets_full_marks_and_a_seeded_bug_partial(tmp_path: Path, assignment: str) -> None:
    ref = (ROOT / assignment / "grading" / "reference.py").read_text()
    full = grade(notebook(tmp_path, assignment, ref, "ref"))
    assert full.score == full.total == sum(c.points for c in ASSIGNMENTS[assignment].checks), str(full)
    bug = grade(notebook(tmp_path, assignment, BUGGY[assignment], "bug"))
    assert 0 < bug.score < bug.total, str(bug)
    assert all(r.reason for r in bug.results if not r.passed)


@needs_live
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


# -- the sandbox: what a hostile or careless solution cannot do (each failed before the sandbox) -------------
def _running_with_cmdline(cmdline: str) -> list[str]:
    """PIDs of running (not zombie) processes with exactly this command line."""
    out = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/cmdline") as f:
                cmd = f.read()
            with open(f"/proc/{pid}/stat") as f:
                running = f.read().rpartition(")")[2].split()[0] != "Z"  # a zombie has ended (init reaps it)
        except OSError:
            continue
        if running and cmd == cmdline:
            out.append(pid)
    return out


@needs_live
def test_a_solution_cannot_touch_the_teachers_files(tmp_path: Path) -> None:
    # in the teacher's home, not under /tmp: the sandbox has a /tmp of its own, where this folder would not even be
    victim = Path(tempfile.mkdtemp(prefix="pktlab-victim-", dir=Path.home()))
    try:
        for i in range(3):
            (victim / f"grades-{i}.csv").write_text("alice,10\n")
        victim.chmod(0o777)  # even a folder anyone may write
        code = (
            f"import os\nVICTIM = {str(victim)!r}\n"
            "[os.remove(os.path.join(VICTIM, f)) for f in os.listdir(VICTIM)]\n"
            "def firewall(pkt):\n    return None\n"
        )
        report = grade(notebook(tmp_path, "firewall", code, "victim"))
        assert sorted(p.name for p in victim.iterdir()) == [f"grades-{i}.csv" for i in range(3)]
        assert report.score == 0 and "tried to reach outside its sandbox" in str(report), str(report)
    finally:
        shutil.rmtree(victim)


def test_notebooks_graded_in_parallel_get_what_they_get_one_by_one(tmp_path: Path) -> None:
    from pktlab.grading import grade_many

    codes = {"ref": (ROOT / "firewall" / "grading" / "reference.py").read_text(), "buggy": BUGGY["firewall"],
             "raises": RAISES.format(fn="firewall"), "exits": EXITS}  # fmt: skip
    paths = [notebook(tmp_path, "firewall", code, label) for label, code in codes.items()]
    paths.append(tmp_path / "not-a-notebook.ipynb")
    paths[-1].write_text("{")
    one = [(p.name, r if isinstance(r, str) else str(r)) for p, r in grade_many(paths, live=False, jobs=1)]
    two = [(p.name, r if isinstance(r, str) else str(r)) for p, r in grade_many(paths, live=False, jobs=2)]
    assert one == two, (one, two)  # the same reports, in the order given, whatever ran beside them
    assert "score 7/7" in one[0][1] and "score 0/7" in one[2][1] and "not a notebook" in one[-1][1]


def test_each_check_has_a_private_empty_tmp(tmp_path: Path) -> None:
    # a solution that leaves a file in /tmp during one check and looks for it in the next: each check's sandbox
    # starts with an empty /tmp of its own, and the machine's /tmp never sees the file
    marker = f"pktlab-tmp-{os.getpid()}"
    code = (
        f"import os\nSEEN = os.path.exists('/tmp/{marker}')\nopen('/tmp/{marker}', 'w').write('x')\n"
        "def firewall(pkt):\n"
        "    if SEEN:\n        raise RuntimeError('found the file an earlier check left in /tmp')\n"
        "    return pkt.accept() if pkt.tcp is None or pkt.tcp.dport == 9001 else pkt.drop()\n"
    )
    report = grade(notebook(tmp_path, "firewall", code, "tmp"), live=False)
    assert len(report.results) >= 2 and "found" not in str(report), str(report)
    assert not Path(f"/tmp/{marker}").exists() and not Path(f"/var/tmp/{marker}").exists()


@needs_live
def test_a_solution_cannot_read_the_reference_or_the_heldback_capture(tmp_path: Path) -> None:
    code = (
        "import pktlab.grading.assignments as A\nexec(open(A.ROOT / 'firewall' / 'grading' / 'reference.py').read())\n"
    )
    report = grade(notebook(tmp_path, "firewall", code, "copy"), live=False)
    assert report.score == 0 and "tried to reach outside its sandbox" in str(report), str(report)
    peek = "import pktlab.grading.assignments as A\nopen(A.ASSIGNMENTS['firewall'].heldback, 'rb').read()\n"
    report = grade(notebook(tmp_path, "firewall", peek + BUGGY["firewall"], "peek"), live=False)
    assert report.score == 0 and "PermissionError" in str(report), str(report)


@needs_live
def test_a_solution_cannot_change_the_firewall(tmp_path: Path) -> None:
    code = (
        "import subprocess\n"
        "subprocess.run(['iptables', '-I', 'FORWARD', '-p', 'tcp', '--dport', '9002', '-j', 'DROP'])\n"
        "def firewall(pkt):\n    return None\n"
    )
    report = grade(notebook(tmp_path, "firewall", code, "iptables"))
    blocked = next(r for r in report.results if "9002 is blocked" in r.name)
    assert not blocked.passed, str(report)  # the rule went nowhere: the SYN crossed the router
    assert my_namespaces() == [] and pktlab_rules(None) == []


@needs_live
def test_a_solution_cannot_reach_the_network(tmp_path: Path) -> None:
    import socket
    import threading

    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    listener.settimeout(0.2)
    accepted: list[object] = []
    stop = threading.Event()

    def accept() -> None:
        while not stop.is_set():
            try:
                accepted.append(listener.accept())
            except TimeoutError:
                continue

    t = threading.Thread(target=accept, daemon=True)
    t.start()
    code = (
        f"import socket\nsocket.create_connection(('127.0.0.1', {port}), timeout=2).sendall(b'answers?')\n"
        "def firewall(pkt):\n    return None\n"
    )
    try:
        report = grade(notebook(tmp_path, "firewall", code, "net"), live=False)
    finally:
        stop.set()
        t.join(2)
        listener.close()
    assert accepted == [] and report.score == 0, str(report)
    assert "network" in str(report) or "outside its sandbox" in str(report), str(report)


@needs_live
def test_a_solution_that_forks_is_told_so_and_leaves_nothing(tmp_path: Path) -> None:
    ref = (ROOT / "firewall" / "grading" / "reference.py").read_text()
    marker = f"75.{os.getpid()}"  # a command line no other process has (other graders may run as nobody too)
    code = f"import os\nif os.fork() == 0:\n    os.execvp('sleep', ['sleep', '{marker}'])\n" + ref
    report = grade(notebook(tmp_path, "firewall", code, "fork"))
    assert report.score == 0, str(report)
    assert all("started a process that outlived the check" in r.reason for r in report.results), str(report)
    assert _running_with_cmdline(f"sleep\0{marker}\0") == [], "a sandboxed process outlived the grader"
    assert my_namespaces() == [] and pktlab_rules(None) == []


def test_a_nameless_handler_cell_is_reported_and_the_folder_graded(tmp_path: Path) -> None:
    nb = nbformat.read(ROOT / "firewall" / "student.ipynb", as_version=4)
    nb.cells.append(nbformat.v4.new_code_cell("%%pktlab handler\nreturn None"))
    nbformat.write(nb, tmp_path / "a-nameless.ipynb")
    ref = (ROOT / "dns-rewriter" / "grading" / "reference.py").read_text()
    notebook(tmp_path, "dns-rewriter", ref, "ref")
    out = subprocess.run([sys.executable, "-m", "pktlab.cli", "grade", str(tmp_path), "--json", "--no-live"],
                         capture_output=True, text=True, timeout=300)  # fmt: skip
    lines = [json.loads(x) for x in out.stdout.splitlines()]
    assert lines[0]["notebook"] == "a-nameless.ipynb" and "no valid handler name" in lines[0]["error"], out.stderr
    assert lines[1]["notebook"] == "dns-rewriter-ref.ipynb" and lines[1]["score"] == lines[1]["total"] == 7


def test_a_solution_that_prints_a_lot_is_graded_like_a_quiet_one(tmp_path: Path) -> None:
    ref = (ROOT / "firewall" / "grading" / "reference.py").read_text()
    chatty = ref.replace("def firewall(pkt):\n", "def firewall(pkt):\n    print('packet', pkt, 'x' * 2000)\n")
    assert chatty != ref
    report = grade(notebook(tmp_path, "firewall", chatty, "chatty"), live=False)
    assert report.score == report.total == 7, str(report)  # no pipe fills up and stalls it


@needs_live
def test_a_grader_killed_mid_check_leaves_no_solution_running() -> None:
    import time

    marker = f"76.{os.getpid()}"
    code = (
        "import pktlab\nfrom pktlab.grading.sandbox import Sandbox\n"
        f'src = \'import os\\nif os.fork() == 0:\\n    os.execvp("sleep", ["sleep", "{marker}"])\\n'
        "def firewall(pkt):\\n    while True:\\n        pass\\n'\n"
        "box = Sandbox(src, ['firewall'])\n"
        "print('loaded', flush=True)\n"
        "box.call(0, pktlab.Packet(None, bytes(20)))\n"
    )
    grader = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    assert grader.stdout is not None and grader.stdout.readline().strip() == "loaded"
    started = time.monotonic() + 10
    while not _running_with_cmdline(f"sleep\0{marker}\0") and time.monotonic() < started:
        time.sleep(0.02)
    assert _running_with_cmdline(f"sleep\0{marker}\0"), "the solution's child did not start"
    grader.kill()  # kill -9 while the solution spins in its handler
    grader.wait(10)
    deadline = time.monotonic() + 10
    while _running_with_cmdline(f"sleep\0{marker}\0") and time.monotonic() < deadline:
        time.sleep(0.05)
    assert _running_with_cmdline(f"sleep\0{marker}\0") == [], "the sandbox outlived its grader"


# the stateful firewall of docs/how-to/tcp.md, with pkt.flow (issue 15): a few lines, no bookkeeping of its own
FLOW_FIREWALL = (
    "def firewall(pkt):\n"
    "    t = pkt.tcp\n"
    "    if t is None:\n"
    "        return None\n"
    "    if t.flags.syn and not t.flags.ack:\n"
    "        pkt.flow.state['open'] = t.dport == 9001\n"
    "    return pkt.accept() if pkt.flow.state.get('open') else pkt.drop()\n"
)


@needs_live
def test_a_firewall_written_with_pkt_flow_gets_full_marks(tmp_path: Path) -> None:
    report = grade(notebook(tmp_path, "firewall", FLOW_FIREWALL, "flow"))
    assert report.score == report.total == 10, str(report)


def test_a_nat_that_numbers_flows_its_own_way_is_told_the_rule(tmp_path: Path) -> None:
    ref = (ROOT / "nat" / "grading" / "reference.py").read_text()
    report = grade(notebook(tmp_path, "nat", ref.replace("next_port = 40000", "next_port = 50000"), "ports"),
                   live=False)  # fmt: skip
    results = {r.name: r for r in report.results}
    assert results["outbound packets leave from the router's address, one port per flow"].passed
    reason = results["replies are translated back to the client"].reason
    assert "numbers flows from 40000 in the order they start" in reason and "your NAT gave it 50000" in reason, reason


def test_a_policer_with_one_bucket_for_all_flows_is_told_each_needs_its_own(tmp_path: Path) -> None:
    shared = (
        "RATE, BURST = 50_000, 5_000\nbucket = {'tokens': BURST, 'last': None}\n"
        "def police(pkt):\n"
        "    if bucket['last'] is not None:\n"
        "        bucket['tokens'] = min(BURST, bucket['tokens'] + RATE * (pkt.time - bucket['last']))\n"
        "    bucket['last'] = pkt.time\n"
        "    if len(pkt) <= bucket['tokens']:\n"
        "        bucket['tokens'] -= len(pkt)\n        return pkt.accept()\n"
        "    return pkt.drop()\n"
    )
    report = grade(notebook(tmp_path, "policer", shared, "shared"), live=False)
    results = {r.name: r for r in report.results}
    slow = results["a flow under the rate loses nothing beside one over it"]
    assert not slow.passed and "each flow needs a bucket of its own" in slow.reason
