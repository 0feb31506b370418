"""One check of one solution, in a process of its own: ``python -m pktlab.grading.worker``.

Replay check: load the student's code, run the held-back capture through its
handlers, judge, print one JSON line ``{"passed": ..., "reason": ...}``.

Live check (started by the grader inside the lab's router namespace): load the
code, attach a queue on this namespace's FORWARD hook with the handlers, print
``ready``, wait until the grader closes standard input (it runs the traffic
meanwhile), detach, and print what the session saw and whether any thread of
this process left the namespace it started in.
"""

from __future__ import annotations

import argparse
import ctypes
import json
import os
import sys
from typing import Any


def load_handlers(source: str, names: tuple[str, ...]) -> list[tuple[str, Any]]:
    """Execute the student's code and return its handler functions, in chain order."""
    ns: dict[str, Any] = {"__name__": "student"}
    exec(compile(source, "<student solution>", "exec"), ns)
    out = []
    for name in names:
        fn = ns.get(name)
        if not callable(fn):
            raise LookupError(f"the solution defines no function {name}(pkt); write it in the handler cell")
        out.append((name, fn))
    return out


CAP_SYS_ADMIN = 21
PR_CAPBSET_DROP = 24


class _CapHeader(ctypes.Structure):
    _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]


def drop_sys_admin() -> None:
    """Give up CAP_SYS_ADMIN for good (bounding, effective, permitted): no setns() out of the lab, no mounts.

    CAP_NET_ADMIN stays, so the session can still talk to its queue and remove its rule.
    """
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_CAPBSET_DROP, CAP_SYS_ADMIN, 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_CAPBSET_DROP, CAP_SYS_ADMIN) failed")
    header = _CapHeader(0x20080522, 0)  # _LINUX_CAPABILITY_VERSION_3
    data = (ctypes.c_uint32 * 6)()  # two {effective, permitted, inheritable} words
    if libc.capget(ctypes.byref(header), data) != 0:
        raise OSError(ctypes.get_errno(), "capget failed")
    for i in (0, 1, 2):  # word 0 holds capabilities 0..31
        data[i] &= ~(1 << CAP_SYS_ADMIN)
    if libc.capset(ctypes.byref(header), data) != 0:
        raise OSError(ctypes.get_errno(), "capset failed")


def _netns_of_threads() -> set[str]:
    out = set()
    for tid in os.listdir("/proc/self/task"):
        try:
            out.add(os.readlink(f"/proc/self/task/{tid}/ns/net"))
        except OSError:
            continue
    return out


def replay_check(assignment: str, index: int, source: str) -> dict[str, Any]:
    from pktlab.replayer import replay

    from .assignments import ASSIGNMENTS

    a = ASSIGNMENTS[assignment]
    check = a.checks[index]
    handlers = load_handlers(source, a.handlers)
    s = replay(a.heldback, deadline=1.0)
    for name, fn in handlers:
        s.add_handler(fn, name)
    s.run(stop_on_error=True)
    if s.errors:  # code that raises (or never returns) on the graded traffic fails the check
        n = s.record.errors
        return {"passed": False, "reason": f"the handler failed on {n} packet(s), first: {s.errors[0]}"}
    passed, reason = check.judge(s)  # type: ignore[union-attr]
    return {"passed": bool(passed), "reason": reason}


def live_check(assignment: str, index: int, source: str) -> dict[str, Any]:
    import pktlab

    from .assignments import ASSIGNMENTS

    a = ASSIGNMENTS[assignment]
    check = a.checks[index]
    start_ns = os.readlink("/proc/self/ns/net")
    s = pktlab.attach(7, rule=check.rule, hook="FORWARD", allow_host=True, name="grader")  # type: ignore[union-attr]
    try:
        drop_sys_admin()  # before any student code runs, module level included
        handlers = load_handlers(source, a.handlers)
        for name, fn in handlers:
            s.add_handler(fn, name)
        print("ready", flush=True)
        sys.stdin.read()  # the grader runs the traffic, then closes our stdin
    finally:
        s.detach()
    left = sorted(_netns_of_threads() - {start_ns})
    return {
        "packets": s.record.n,
        "errors": [str(f) for f in s.errors[:3]],
        "stuck": [h.name for h in s.stuck],
        "rescued": s.status().rescued,
        "left_netns": left,
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m pktlab.grading.worker")
    p.add_argument("kind", choices=["replay", "live"])
    p.add_argument("assignment")
    p.add_argument("index", type=int)
    p.add_argument("source", help="file with the student's code")
    a = p.parse_args(argv)
    with open(a.source) as f:
        source = f.read()
    try:
        out = (replay_check if a.kind == "replay" else live_check)(a.assignment, a.index, source)
    except BaseException as exc:  # the student's code failed to load or broke the check: say why
        out = {"passed": False, "reason": f"the solution raised {type(exc).__name__}: {exc}", "crashed": True}
    print("RESULT " + json.dumps(out), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
