"""bpftrace scripts run as managed child processes: attached or refused at start, stopped by PID, losses counted.

This kernel has tracepoints with BPF and BTF but no kprobes; Debian's
``bpftrace`` compiles a script at run time (no compiler needed at install
time) and prints one line per event, which pktlab reads in a thread.  When
the kernel's per-CPU event buffers fill faster than bpftrace empties them the
kernel drops events and bpftrace says how many ("Lost N events"):
:attr:`BpftraceProcess.lost` counts them so that a result can say what it
misses.
"""

from __future__ import annotations

import atexit
import os
import re
import shutil
import signal
import subprocess
import threading
import time
from collections.abc import Callable

from ..errors import MissingToolError, PktlabError

TRACEFS = "/sys/kernel/tracing"
_LOST = re.compile(r"Lost (\d+) events")
READY_MARK = 0x50AD1E  # skb->mark of the datagram that proves skb:kfree_skb is attached (see probe_drop)
READY_LINE = "pktlab-ready"


def probe_drop() -> None:
    """Send one loopback datagram marked READY_MARK to a closed port: the kernel drops it (NO_SOCKET) in skb:kfree_skb.

    bpftrace prints "Attaching N probes..." before it attaches them, so that line is no proof; a
    script whose kfree_skb probe prints :data:`READY_LINE` once it
    sees a drop of an skb marked :data:`READY_MARK` (and reports it as nothing else), which only an attached
    probe can.
    """
    import socket

    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as closed:
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]  # closed again when this block ends: nobody listens there
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_MARK, READY_MARK)
        s.sendto(b"pktlab: is bpftrace attached?", ("127.0.0.1", port))
_SYMBOL = re.compile(r"\{\s*(\d+),\s*\"(\w+)\"\s*\}")


def ensure_tracefs(event: str = "skb/kfree_skb") -> None:
    """Mount tracefs at /sys/kernel/tracing if it is not (root only), or say why tracing cannot work."""
    if os.path.exists(f"{TRACEFS}/events/{event}/format"):
        return
    proc = subprocess.run(["mount", "-t", "tracefs", "nodev", TRACEFS], capture_output=True, text=True, check=False)
    if proc.returncode != 0 or not os.path.exists(f"{TRACEFS}/events/{event}/format"):
        raise PktlabError(
            f"the kernel's tracepoints are not readable ({proc.stderr.strip() or f'no {event} event'}); "
            f"run as root with tracefs mounted (mount -t tracefs nodev {TRACEFS}) on a kernel with tracepoints"
        )


def drop_reasons() -> dict[int, str]:
    """The kernel's drop reasons by number, from ``skb:kfree_skb``'s own format (this kernel's list)."""
    ensure_tracefs()
    with open(f"{TRACEFS}/events/skb/kfree_skb/format") as f:
        text = f.read()
    return {int(n): name for n, name in _SYMBOL.findall(text)}


def unescape(text: str) -> bytes:
    r"""bpftrace's ``%r`` of a buffer: printable bytes as themselves, the others as ``\xHH``."""
    out = bytearray()
    i = 0
    while i < len(text):
        if text[i] == "\\" and text[i + 1 : i + 2] == "x" and re.fullmatch(r"[0-9a-fA-F]{2}", text[i + 2 : i + 4]):
            out.append(int(text[i + 2 : i + 4], 16))
            i += 4
        else:
            out += text[i].encode("latin-1", "replace")
            i += 1
    return bytes(out)


def require() -> str:
    """The bpftrace executable's path, or an error naming the fix (not installed, or not root)."""
    from .privilege import require_root

    require_root(
        "reading the kernel's tracepoints (pktlab.trace's kernel times, pktlab.drops)",
        "an ordinary user cannot attach BPF programs; a session's record (s.df) says what its handlers decided, "
        "and `iptables-save -c` in a lab host (host.run) counts what each rule dropped",
    )
    path = shutil.which("bpftrace")
    if path is None:
        raise MissingToolError("bpftrace is not installed; run `make setup` (apt-get install bpftrace)")
    return path


def wall_minus_monotonic() -> float:
    """Wall-clock time minus the kernel's monotonic clock (s), from the closest of a few paired readings.

    bpftrace's ``nsecs`` is CLOCK_MONOTONIC, as is Python's ``time.monotonic_ns()``.
    """
    best = None
    for _ in range(5):
        a = time.monotonic_ns()
        w = time.time()
        b = time.monotonic_ns()
        if best is None or b - a < best[0]:
            best = (b - a, w - (a + b) / 2e9)
    assert best is not None
    return best[1]


class BpftraceProcess:
    """One bpftrace script; every line it prints goes to ``on_line`` (from a reading thread)."""

    def __init__(
        self, script: str, on_line: Callable[[str], None], what: str, env: dict[str, str] | None = None
    ) -> None:
        self.script = script
        self.on_line = on_line
        self.what = what  # for messages: "skb:kfree_skb", "the timeline's tracepoints"
        self.env = env or {}
        self.lost = 0
        self._proc: subprocess.Popen[str] | None = None
        self._thread: threading.Thread | None = None
        self._ready = threading.Event()
        self._proven: threading.Event | None = None
        self._err: list[str] = []

    def start(self, timeout: float = 20.0, prove: Callable[[], None] | None = None) -> BpftraceProcess:
        """Start bpftrace and wait until its probes are attached; raise with bpftrace's reason if they are not.

        ``prove``: a function that makes an event the script answers with :data:`READY_LINE`
        (:func:`probe_drop` for a kfree_skb script that answers a drop marked :data:`READY_MARK`); it is
        called every 50 ms after bpftrace says it attaches, until the line comes.  Without it,
        "Attaching" is taken as ready.
        """
        self._proc = subprocess.Popen(
            [require(), "-B", "line", "-e", self.script],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            errors="replace",
            bufsize=1,
            env={**os.environ, **self.env},
        )
        self._thread = threading.Thread(target=self._read, name="pktlab-bpftrace", daemon=True)
        self._thread.start()
        end = time.monotonic() + timeout
        attached = self._ready.wait(timeout)  # "Attaching N probes...": printed before it attaches them
        if attached and prove is not None:
            self._proven = threading.Event()
            while not self._proven.is_set() and time.monotonic() < end and self._proc.poll() is None:
                prove()
                self._proven.wait(0.05)
            attached = self._proven.is_set()
        if not attached or self._proc.poll() is not None:
            err = self.stop()
            raise PktlabError(f"bpftrace did not attach to {self.what} ({err or 'no output'}); see `pktlab doctor`")
        atexit.register(self.stop)
        return self

    def _read(self) -> None:
        assert self._proc is not None and self._proc.stdout is not None
        for line in self._proc.stdout:
            if line.startswith("Attaching"):
                self._ready.set()
                continue
            if line.rstrip("\n") == READY_LINE:
                if self._proven is not None:
                    self._proven.set()
                continue
            m = _LOST.search(line)
            if m:
                self.lost += int(m.group(1))
                continue
            self.on_line(line.rstrip("\n"))

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def stop(self) -> str:
        """Stop bpftrace (its probes are detached) and give what it wrote on stderr, if anything."""
        atexit.unregister(self.stop)
        p = self._proc
        if p is not None and p.poll() is None:
            os.kill(p.pid, signal.SIGINT)  # our own child, by PID: bpftrace detaches its probes
            try:
                p.wait(5)
            except subprocess.TimeoutExpired:
                os.kill(p.pid, signal.SIGKILL)
                p.wait(5)
        if p is not None and p.stderr is not None and not p.stderr.closed:
            for line in p.stderr.read().splitlines():
                m = _LOST.search(line)
                if m:
                    self.lost += int(m.group(1))
                elif "RLIMIT_MEMLOCK" not in line and line.strip():
                    self._err.append(line.strip())
            p.stderr.close()
        if self._thread is not None:
            self._thread.join(5)
        return " ".join(self._err)[-300:]
