"""Student code in a sandbox: a process of its own that sees packets and returns verdicts.

The grader keeps everything privileged (the lab, the queue, the rules, the held-back
capture) and runs each check's chain in its own process; every handler of the chain
is a proxy that sends the packet to the sandbox and applies what comes back (verdict,
rewritten bytes, mark).  The sandbox is started by ``unshare`` in new PID, network and
mount namespaces:

- as root it then drops to ``nobody`` with no capabilities and ``no_new_privs``;
  without root it runs in a new user namespace too, as the grader's own user with
  no capabilities outside it, and every mount it sees is read-only (the grader's
  files are that user's: the solution may read them, but change none);
- the assignments' grading folders (held-back captures, reference solutions) are
  covered by an empty tmpfs;
- ``/tmp``, ``/var/tmp`` and ``/dev/shm`` are its own, empty when it starts (16 MiB each):
  nothing one check writes there is seen by the next, or by another student's;
- its network namespace is empty (loopback down): it reaches no network, and the
  firewall, routes and namespaces it could change are its own empty ones;
- it is process 1 of its PID namespace: when it ends, the kernel ends everything it
  started; before that the grader counts what is still running there, so a solution
  that forked is told so.

The sandbox's side is ``python -m pktlab.grading.sandbox``: it reads the solution,
runs it, and answers one message per handler call on its standard input and output.
"""

from __future__ import annotations

import json
import os
import select
import shutil
import signal
import struct
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from ..errors import MissingToolError, PktlabError

LOAD, CALL = 1, 2
NONE, VERDICT, OTHER, RAISED = 0, 1, 2, 3
_HEAD = struct.Struct("!BI")  # message type, body length
_CALL = struct.Struct("!HIBId")  # handler index, packet id, hook, mark, time
_REPLY = struct.Struct("!BBq")  # kind, verdict code, mark (-1: unchanged)
MAX_MESSAGE = 1 << 20
NOBODY = 65534
PRIVATE_TMP_BYTES = 16 << 20  # each check's own /tmp: enough for a solution's scratch files, bounded


class SandboxError(PktlabError):
    """The solution in the sandbox broke the check: it ended, hung, or answered garbage."""


def _unshare_argv(hidden: Sequence[Path]) -> list[str]:
    """The command that starts the sandbox's Python, isolated; see the module docstring."""
    for tool in ("unshare", "setpriv", "mount"):
        if shutil.which(tool) is None:
            raise MissingToolError(
                f"{tool} is not installed; the grader's sandbox needs util-linux (apt-get install util-linux)"
            )
    root = os.geteuid() == 0
    ns = ["--fork", "--pid", "--kill-child", "--net", "--mount", "--mount-proc", "--propagation", "private"]
    if not root:
        ns = ["--user", "--map-root-user", *ns]
    drop = ["setpriv", "--inh-caps=-all", "--bounding-set=-all", "--no-new-privs"]
    if root:
        drop[1:1] = [f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups"]
    # sh makes the sandbox's mounts (below), then becomes the sandbox's Python (-I: no user site, no PYTHON*
    # variables, no current directory on the path)
    # without root the solution runs as the grader's own user (root of its user namespace): every mount it sees is
    # made read-only, so that it can change none of that user's files either
    readonly = "" if root else (
        "awk '{print $2}' /proc/self/mounts | while read -r m; do mount -o remount,bind,ro \"$m\" 2>/dev/null; done; "
    )
    # a private, empty /tmp (and /var/tmp, /dev/shm): what one check writes there no other check sees, and it
    # goes with the sandbox's mount namespace; mounted after the read-only pass, so the solution may write there.
    # What the sandbox itself runs from may live there (a venv or a checkout under /tmp): that is bound back,
    # read-only, reached through /mnt of the sandbox's own mount namespace meanwhile.  The hidden folders are
    # covered last, so that a folder under a path bound back is covered where the solution sees it.
    script = (
        f"{readonly}{private_tmp_script('PKTLAB_SANDBOX_KEEP')}"
        'for d in "$@"; do mount -t tmpfs -o size=4k,mode=0 pktlab-hidden "$d" || exit 97; done; '
        f'exec {" ".join(drop)} -- "$PKTLAB_SANDBOX_PYTHON" -I -m pktlab.grading.sandbox'
    )
    return ["unshare", *ns, "--", "sh", "-c", script, "sh", *[str(p) for p in hidden if p.is_dir()]]


def private_tmp_script(keep_variable: str) -> str:
    """sh that gives a fresh mount namespace its own empty /tmp, /var/tmp and /dev/shm (tmpfs, exit 96 on failure).

    The paths (folders or files) listed one per line in the environment variable ``keep_variable`` that lie under
    them are bound back, read-only (what the process runs from); the originals are reached through /mnt meanwhile.
    Binds are recursive: a folder that holds mounts made in a more privileged namespace (a hub's hidden grading
    folders in a checkout under /tmp) cannot be bound without them, and its mounts stay as they were.
    """
    return (
        "for t in /tmp /var/tmp /dev/shm; do [ -d \"$t\" ] || continue; "
        'mount --rbind "$t" /mnt || exit 96; '
        f'mount -t tmpfs -o size={PRIVATE_TMP_BYTES},mode=1777,nosuid,nodev pktlab-tmp "$t" || exit 96; '
        f'printf "%s\\n" "${keep_variable}" | while IFS= read -r k; do case "$k" in "$t"/*) r=${{k#"$t"/}}; '
        '[ -e "$t/$r" ] && continue; '  # already there, through a folder bound back before it
        'if [ -d "/mnt/$r" ]; then mkdir -p "$t/$r"; else mkdir -p "$(dirname "$t/$r")" && : > "$t/$r"; fi && '
        'mount --rbind "/mnt/$r" "$t/$r" && mount -o remount,bind,ro "$t/$r" || exit 96;; '
        'esac; done || exit 96; umount -l /mnt || exit 96; done; '
    )


def runs_from() -> list[str]:
    """What the sandbox's Python needs to see: its environment and base installation, and pktlab's files."""
    package = Path(__file__).resolve().parents[1]  # pktlab/, from here: grading/ is one of its folders
    paths = {sys.prefix, sys.base_prefix, str(package.parent)}
    paths |= {os.path.realpath(p) for p in paths}  # a venv's python may be a link into another tree
    return sorted(paths)


class Sandbox:
    """One solution, loaded once in an isolated process; :meth:`handler` gives proxies for a chain.

    ``timeout`` bounds every call (a handler that does not answer in time fails, and the
    sandbox is then considered stuck: later calls fail at once).  :meth:`close` reports
    processes the solution left running and ends them all.
    """

    def __init__(self, source: str, names: Sequence[str], *, hidden: Sequence[Path] = (), timeout: float = 1.0) -> None:
        self.names = list(names)
        self.timeout = timeout
        self.stuck: str | None = None
        self.calls = 0
        self._calling = threading.Lock()
        env = {"PATH": "/usr/bin:/bin:/usr/sbin:/sbin", "HOME": "/nonexistent", "LANG": "C.UTF-8",
               "PKTLAB_SANDBOX_PYTHON": sys.executable, "PKTLAB_SANDBOX_KEEP": "\n".join(runs_from())}  # fmt: skip
        # what the solution prints goes to a file: a pipe nobody reads would fill up and stall it mid-packet
        self._log = tempfile.TemporaryFile()  # noqa: SIM115 - closed by close(), with the process
        self._proc = subprocess.Popen(
            _unshare_argv(hidden), stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self._log,
            cwd="/", env=env, start_new_session=True, preexec_fn=_die_with_parent,
        )  # fmt: skip
        assert self._proc.stdin is not None and self._proc.stdout is not None
        self._in, self._out = self._proc.stdin.fileno(), self._proc.stdout.fileno()
        self._send(LOAD, json.dumps({"source": source, "names": self.names}).encode())
        kind, _, _, text, _ = self._reply(max(10.0, timeout), "loading the solution")
        if kind != NONE:
            raise SandboxError(f"the solution failed to load: {text}")

    # -- the wire ------------------------------------------------------------------
    def _send(self, kind: int, body: bytes) -> None:
        try:
            os.write(self._in, _HEAD.pack(kind, len(body)) + body)
        except (BrokenPipeError, OSError):
            raise SandboxError(self._ended()) from None

    def _read(self, n: int, deadline: float, doing: str) -> bytes:
        out = bytearray()
        while len(out) < n:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([self._out], [], [], left)[0]:
                raise TimeoutError(f"{doing} did not return within {self.timeout:g} s")
            chunk = os.read(self._out, n - len(out))
            if not chunk:
                raise SandboxError(self._ended())
            out += chunk
        return bytes(out)

    def _reply(self, timeout: float, doing: str) -> tuple[int, int, int, str, bytes]:
        deadline = time.monotonic() + timeout
        try:
            head = self._read(_REPLY.size + 8, deadline, doing)
            kind, code, mark = _REPLY.unpack_from(head)
            tlen, blen = struct.unpack_from("!II", head, _REPLY.size)
            if tlen > MAX_MESSAGE or blen > MAX_MESSAGE or kind > RAISED:
                raise SandboxError("the solution's process answered garbage (did it write to the grader's pipe?)")
            text = self._read(tlen, deadline, doing).decode(errors="replace")
            data = self._read(blen, deadline, doing)
        except TimeoutError:
            self.stuck = doing
            raise
        return kind, code, mark, text, data

    def _ended(self) -> str:
        code = self._proc.wait(5) if self._proc.poll() is None else self._proc.returncode
        err = self.printed()[-300:]
        if code in (96, 97):  # a hidden folder (97) or the private /tmp (96) could not be mounted
            return f"the sandbox could not be set up: {err}"
        return f"the solution ended the check's process (exit code {code})" + (f": {err}" if err else "")

    def printed(self) -> str:
        """What the solution wrote to its standard output and error so far (the last 64 KiB)."""
        self._log.seek(0, os.SEEK_END)
        self._log.seek(max(0, self._log.tell() - 65536))
        return self._log.read().decode(errors="replace").strip()

    # -- handler calls -------------------------------------------------------------
    def call(self, index: int, pkt: Any) -> Any:
        """Run handler ``index`` on ``pkt`` in the sandbox; apply its rewrite and mark; return its verdict.

        Sessions on several hooks may call at once, each from its own thread: one call at a time goes through.
        """
        from ..packet.model import HOOK_NAMES

        ip = pkt.eth.payload if pkt.eth is not None else bytes(pkt)
        hook = HOOK_NAMES.index(pkt.hook) if pkt.hook in HOOK_NAMES else 1
        head = _CALL.pack(index, pkt.id & 0xFFFFFFFF, hook, (pkt.mark or 0) & 0xFFFFFFFF, pkt.time)
        with self._calling:
            if self.stuck is not None:
                raise TimeoutError(
                    f"{self.stuck} did not return; the solution is stuck, so this packet was not handled"
                )
            self.calls += 1
            self._send(CALL, head + ip)
            kind, code, mark, text, data = self._reply(self.timeout, f"handler {self.names[index]}")
        if kind == RAISED:
            raise HandlerRaised(text)
        if data:
            pkt.set_payload(data)
        if mark >= 0:
            pkt.set_mark(mark)
        if kind == VERDICT:
            from ..packet.verdicts import Verdict

            return next(v for v in Verdict.all() if v.code == code)
        if kind == OTHER:  # not a verdict: the chain judges it as it would the value itself
            return text[4:] if text.startswith("str:") else _Returned(text)
        return None

    def handler(self, index: int) -> Callable[[Any], Any]:
        """A handler that runs the solution's handler ``index`` in the sandbox."""

        def proxy(pkt: Any) -> Any:
            return self.call(index, pkt)

        proxy.__name__ = proxy.__qualname__ = self.names[index]
        return proxy

    # -- the end ---------------------------------------------------------------------
    def leftovers(self) -> list[str]:
        """Processes still running in the sandbox's PID namespace besides the sandbox itself."""
        init = _child_of(self._proc.pid)
        if init is None:
            return []
        try:
            ns = os.readlink(f"/proc/{init}/ns/pid")
        except OSError:
            return []
        out = []
        for pid in filter(str.isdigit, os.listdir("/proc")):
            if int(pid) == init:
                continue
            try:
                if os.readlink(f"/proc/{pid}/ns/pid") != ns:
                    continue
                with open(f"/proc/{pid}/stat") as f:
                    stat = f.read()
            except OSError:
                continue
            if stat.rpartition(")")[2].split()[0] != "Z":  # a zombie has ended
                out.append(f"{pid} ({stat[stat.find('(') + 1 : stat.rfind(')')]})")
        return out

    def close(self) -> list[str]:
        """End the sandbox and everything it started; return the processes the solution had left running."""
        left = self.leftovers() if self._proc.poll() is None else []
        init = _child_of(self._proc.pid)
        if init is not None:
            try:
                os.kill(init, signal.SIGKILL)  # process 1 of its PID namespace: the kernel ends the rest
            except ProcessLookupError:
                pass
        # unshare ends once it has reaped process 1, whose exit waits until every other process of the
        # namespace is gone: so wait for unshare, and kill it only if it does not end (killing it at once
        # would return before the namespace's processes are gone)
        try:
            self._proc.wait(10)
        except subprocess.TimeoutExpired:
            self._proc.kill()
            self._proc.wait(10)
        for f in (self._proc.stdin, self._proc.stdout):
            if f is not None:
                f.close()
        self._log.close()
        return left

    def __enter__(self) -> Sandbox:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class _Returned:
    """Stands for a value a sandboxed handler returned that is not a verdict (shown by its repr)."""

    def __init__(self, text: str) -> None:
        self.text = text

    def __repr__(self) -> str:
        return self.text


class HandlerRaised(Exception):
    """The solution's handler raised in the sandbox; the message is its exception, as ``Type: message``."""


def _die_with_parent() -> None:
    """In the forked ``unshare``, before exec: be killed when the grader's thread ends, however it ends.

    ``unshare --kill-child`` then kills the sandbox's process 1, and the kernel the rest of its
    PID namespace: a grader killed mid-check leaves no solution running (one stuck in a loop included).
    """
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(1, signal.SIGKILL, 0, 0, 0)  # PR_SET_PDEATHSIG


def _child_of(pid: int) -> int | None:
    """The process ``unshare --fork`` started (the sandbox's process 1), by its host PID."""
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as f:
            kids = f.read().split()
        if kids:
            return int(kids[0])
    except OSError:
        pass
    for p in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{p}/stat") as f:
                if int(f.read().rpartition(")")[2].split()[1]) == pid:
                    return int(p)
        except (OSError, ValueError, IndexError):
            continue
    return None


# -- the sandbox's side: python -m pktlab.grading.sandbox ------------------------------------------
def _serve() -> int:
    import ctypes
    import io

    # die with unshare, our parent (it dies with the grader): setpriv's change of user cleared the
    # parent-death signal that unshare --kill-child had set, so set it again, as the user we now are
    ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL, 0, 0, 0)  # PR_SET_PDEATHSIG

    wire_in = os.fdopen(os.dup(0), "rb", buffering=0)
    wire_out = os.dup(1)
    null = os.open(os.devnull, os.O_RDONLY)
    os.dup2(null, 0)  # the solution's print() and input() never touch the grader's pipe
    os.dup2(2, 1)
    sys.stdout = io.TextIOWrapper(os.fdopen(1, "wb", buffering=0), write_through=True)

    def read(n: int) -> bytes:
        out = bytearray()
        while len(out) < n:
            chunk = wire_in.read(n - len(out))
            if not chunk:
                raise EOFError
            out += chunk
        return bytes(out)

    def reply(kind: int, code: int = 0, mark: int = -1, text: str = "", data: bytes = b"") -> None:
        t = text.encode()[:4096]
        msg = _REPLY.pack(kind, code, mark) + struct.pack("!II", len(t), len(data)) + t + data
        while msg:
            msg = msg[os.write(wire_out, msg) :]

    kind, n = _HEAD.unpack(read(_HEAD.size))
    req = json.loads(read(n))
    ns: dict[str, Any] = {"__name__": "student"}
    try:
        exec(compile(req["source"], "<student solution>", "exec"), ns)
        fns = []
        for name in req["names"]:
            fn = ns.get(name)
            if not callable(fn):
                raise LookupError(f"the solution defines no function {name}(pkt); write it in the handler cell")
            fns.append(fn)
    except BaseException as exc:  # the solution itself failed: say how
        reply(RAISED, text=f"{type(exc).__name__}: {exc}")
        return 0
    reply(NONE)

    from ..packet.model import Packet
    from ..packet.verdicts import Verdict
    from ..pipeline._capture import CapturedPacket
    from ..pipeline.flows import FlowTable

    flows = FlowTable()  # pkt.flow in the sandbox: derived from the packets this solution sees, as in a session
    counted: list[Any] = [None, None]  # the packet id last counted and its flow

    while True:
        try:
            kind, n = _HEAD.unpack(read(_HEAD.size))
            body = read(n)
        except EOFError:
            return 0
        index, pid, hook, mark, t = _CALL.unpack_from(body)
        data = body[_CALL.size :]
        pkt = Packet(CapturedPacket(pid, hook, data, t, False, 0, None, mark), data, t)
        # as the dispatcher does: counted (once per packet, whichever handlers of the chain see it)
        # from the first time a handler asks for a flow on
        if flows.enabled and (hook, pid) != counted[0]:  # two queues (hooks) number their packets apart
            counted[:] = [(hook, pid), flows.observe(pkt)]
        pkt._flow = counted[1] if flows.enabled else flows
        try:
            v = fns[index](pkt)
        except BaseException as exc:
            reply(RAISED, text=f"{type(exc).__name__}: {exc}")
            continue
        data = bytes(pkt) if pkt.modified else b""
        new_mark = pkt.mark if pkt.mark != mark else -1
        if v is None:
            reply(NONE, mark=new_mark, data=data)
        elif isinstance(v, Verdict):
            reply(VERDICT, v.code, new_mark, data=data)
        else:
            reply(OTHER, mark=new_mark, text=("str:" + v) if isinstance(v, str) else repr(v), data=data)


if __name__ == "__main__":
    sys.exit(_serve())
