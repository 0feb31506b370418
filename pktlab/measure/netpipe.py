"""NetPIPE-style throughput between two lab hosts, with the queue in and out of the path.

``pktlab.netpipe(lab, through=[None, s])`` measures a TCP ping-pong from the
lab's client to its server the way NetPIPE (NPtcp) does: block sizes from 1
byte up, the increment doubling every other step, each size also perturbed
by ±3 bytes, and for every size the fastest of three trials (NetPIPE's
TRIALS as Debian builds NPtcp), each of as many round trips as NPtcp makes (its RUNTM rule,
:func:`trial_round_trips`), all on one connection; the one-way time of a block is half a round
trip.  It stops at ``max_bytes`` or when a transfer takes more than a second.

Steal time: on a virtual machine the host may take a CPU away for milliseconds (the
guest's ``steal`` in /proc/stat).  A trial during which the host stole time from the CPUs
of the two ends (more than 5 % of the trial's time; /proc/stat counts in 10 ms ticks, so in
a trial shorter than 200 ms any steal) measures the host's scheduling, not the network path:
such a trial is set aside and another run in its place (at most ``3 * trials`` in all), and the point keeps the
fastest steal-free trial (``Point.stolen`` counts the trials set aside; ``Point.clean`` is
False when every trial had steal, and the point is then the fastest of them).  Measured on
this project's 2-CPU VM (issue 21): trials of 262,144-byte blocks with steal ran at a median
of 5.6 Gbps, those without at 18.5 Gbps, and a third of all trials had steal.

Each entry of ``through`` is a configuration: ``None`` (no queue: every
session given, and every session attached in the lab, is taken out of the
path), or a :class:`~pktlab.Session` (that session in the path, the others
out).  Taking a session out of the path
removes its iptables rules and puts them back afterwards; the reader stays
bound, so nothing is lost.  The timed loop runs in C on both ends
(``pktlab.measure._pingpong``), in processes started inside the lab's namespaces,
on page-aligned buffers as NPtcp's (on an AMD EPYC, the kernel's copies to and from a
buffer 16 bytes into a page, where glibc puts a big block, ran at a third of the speed).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import LabError, MissingToolError, SessionError

if TYPE_CHECKING:
    from ..lab.network import Lab
    from ..pipeline.session import Session

PERTURBATION = 3
STOP_SECONDS = 1.0  # NetPIPE's STOPTM: a transfer this slow ends the run
RUNTM = 0.10  # NetPIPE's RUNTM as Debian builds NPtcp (Linux): sets a trial's round trips (see round_trips)
QUICK_RUNTM = 0.01  # netpipe(quick=True): trials ten times shorter
TRIALS = 3  # NetPIPE's TRIALS (Linux): the fastest of three trials is the point
WARMUP = 100  # NetPIPE's first round trips, of the first size: the first point's one-way time
MAX_ROUND_TRIPS = 1_000_000  # a bound on one trial whatever the clock said
STEAL_BUDGET = 3  # at most this many times `trials` trials per point when the host steals CPU time
STEAL_SHARE = 0.05  # a trial is disturbed when the host took more than this share of its time
TICKS_PER_SECOND = os.sysconf("SC_CLK_TCK")  # /proc/stat's unit
PORT = 5201 + 100


def steps(max_bytes: int, start: int = 1, perturbation: int = PERTURBATION) -> list[tuple[int, int]]:
    """NetPIPE's block sizes up to ``max_bytes``, each with the increment of its step (which sets its round trips).

    The increment doubles every other step, each size ±perturbation; perturbed points appear once the
    increment exceeds ``perturbation + 1`` (as in NetPIPE 3.7).
    """
    if max_bytes < start or start < 1:
        raise ValueError(f"max_bytes ({max_bytes}) must be at least start ({start}), which is at least 1")
    out: list[tuple[int, int]] = []
    inc = start // 2 if start > 1 else 1
    nq = 1 if start > 1 else 0
    n = start
    while n <= max_bytes:
        if nq > 2:
            inc = inc + inc if nq % 2 else inc
        points = (n - perturbation, n, n + perturbation) if inc > perturbation + 1 else (n,)
        for p in points:
            if 1 <= p <= max_bytes and (not out or p > out[-1][0]):
                out.append((p, inc))
        n += inc
        nq += 1
    return out


def schedule(max_bytes: int, start: int = 1, perturbation: int = PERTURBATION) -> list[int]:
    """NetPIPE's block sizes up to ``max_bytes`` (see :func:`steps`)."""
    return [size for size, _ in steps(max_bytes, start, perturbation)]


def trial_round_trips(runtm: float, previous: int, inc: int, one_way: float, trials: int = TRIALS) -> int:
    """NPtcp's round trips per trial: ``RUNTM`` over the previous block's one-way time, scaled by the step.

    ``nrepeat = MAX(RUNTM / ((bufflen / (bufflen - inc + 1)) * tlast), TRIALS)`` in NetPIPE 3.7's
    ``netpipe.c``, ``bufflen`` being the previous block's size and ``tlast`` its one-way time: a
    trial lasts about ``2 * RUNTM`` divided by that scale (0.07-0.2 s with RUNTM 0.1).
    """
    scale = previous / (previous - inc + 1.0)
    return int(min(MAX_ROUND_TRIPS, max(runtm / (scale * max(one_way, 1e-9)), trials)))


@dataclass
class Point:
    """One block size of one configuration."""

    config: str
    bytes: int
    repeats: int
    seconds: float  # one-way time of one block (half the fastest trial's mean round trip)
    stolen: int = 0  # trials set aside because the host stole CPU time from the ends during them
    clean: bool = True  # False: every trial had steal time (the point is the fastest of them)

    @property
    def usec(self) -> float:
        return self.seconds * 1e6

    @property
    def mbps(self) -> float:
        return self.bytes * 8 / self.seconds / 1e6 if self.seconds > 0 else 0.0


def saturation_point(points: Sequence[tuple[int, float]], fraction: float = 0.9) -> int | None:
    """The smallest block size whose throughput reaches ``fraction`` of the maximum.

    ``points`` are (bytes, Mbps) in increasing block size.  Past it, NetPIPE's saturation
    graph (time against block size) runs straight: more bytes cost proportionally more time.
    """
    if not points:
        return None
    top = max(m for _, m in points)
    if top <= 0:
        return None
    return next(size for size, mbps in points if mbps >= fraction * top)


@dataclass
class NetpipeResult:
    """Points of every configuration; ``df``, ``summary()``, ``plot()``, ``to_netpipe()``."""

    points: list[Point] = field(default_factory=list)
    configs: list[str] = field(default_factory=list)

    def __add__(self, other: NetpipeResult) -> NetpipeResult:
        """Both results in one (configurations measured in separate runs, compared in one table and plot)."""
        return NetpipeResult(self.points + other.points, self.configs + [c for c in other.configs
                                                                          if c not in self.configs])  # fmt: skip

    def relabel(self, names: dict[str, str]) -> NetpipeResult:
        """The same points with configurations renamed (``{"no queue": "kernel NAT"}``)."""
        pts = [replace(p, config=names.get(p.config, p.config)) for p in self.points]
        return NetpipeResult(pts, [names.get(c, c) for c in self.configs])

    def _repr_html_(self) -> str:
        from html import escape

        n = len(self.points)
        return (f"<div>NetPIPE: {n} points, configurations {escape(', '.join(self.configs))}; "
                f".plot() draws the three graphs, .df has every point</div>" + self.summary().to_html())  # fmt: skip

    def of(self, config: str) -> list[Point]:
        return [p for p in self.points if p.config == config]

    @property
    def df(self) -> Any:
        import pandas as pd

        rows = [{"config": p.config, "bytes": p.bytes, "repeats": p.repeats, "seconds": p.seconds,
                 "usec": p.usec, "Mbps": p.mbps, "stolen": p.stolen, "clean": p.clean}
                for p in self.points]  # fmt: skip
        cols = ["config", "bytes", "repeats", "seconds", "usec", "Mbps", "stolen", "clean"]
        return pd.DataFrame(rows, columns=cols)

    def summary(self) -> Any:
        """Per configuration: max throughput, latency (the smallest block's one-way time), saturation point."""
        import pandas as pd

        rows = []
        for c in self.configs:
            pts = self.of(c)
            if not pts:
                continue
            rows.append(
                {
                    "config": c,
                    "max Mbps": round(max(p.mbps for p in pts), 1),
                    "latency us": round(pts[0].usec, 1),
                    "saturation bytes": saturation_point([(p.bytes, p.mbps) for p in pts]),
                    "largest block": pts[-1].bytes,
                }
            )
        return pd.DataFrame(rows)

    def to_netpipe(self, path: str | os.PathLike[str], config: str | None = None) -> int:
        """Write one configuration in NetPIPE's own output format (np.out: bytes, Mbps, seconds); return lines."""
        config = config or (self.configs[0] if self.configs else None)
        pts = self.of(config) if config else []
        if not pts:
            raise SessionError(f"no points for configuration {config!r}; the result has {self.configs}")
        with open(path, "w") as f:
            for p in pts:
                f.write(f"{p.bytes:8d} {p.mbps:f} {p.seconds:12.8f}\n")
        return len(pts)

    def plot(self) -> Any:
        """NetPIPE's three graphs side by side: throughput, signature and saturation, one line per configuration."""
        from bokeh.layouts import row
        from bokeh.models import ColumnDataSource, HoverTool
        from bokeh.palettes import Category10_10
        from bokeh.plotting import figure

        kw: dict[str, Any] = {"width": 380, "height": 330, "tools": "pan,wheel_zoom,box_zoom,reset,save"}
        # log y: configurations three decades apart (a Python handler against the kernel) stay readable together
        thr = figure(title="throughput", x_axis_type="log", y_axis_type="log", x_axis_label="block size (bytes)",
                     y_axis_label="Mbps", **kw)  # fmt: skip
        sig = figure(title="signature", x_axis_type="log", y_axis_type="log", x_axis_label="time (s)",
                     y_axis_label="Mbps", **kw)  # fmt: skip
        sat = figure(title="saturation", x_axis_type="log", y_axis_type="log", x_axis_label="block size (bytes)",
                     y_axis_label="time (s)", **kw)  # fmt: skip
        for i, c in enumerate(self.configs):
            pts = self.of(c)
            src = ColumnDataSource({"bytes": [p.bytes for p in pts], "mbps": [p.mbps for p in pts],
                                    "t": [p.seconds for p in pts], "usec": [p.usec for p in pts]})  # fmt: skip
            colour = Category10_10[i % 10]
            for fig, x, y in ((thr, "bytes", "mbps"), (sig, "t", "mbps"), (sat, "bytes", "t")):
                fig.line(x, y, source=src, color=colour, legend_label=c)
                fig.scatter(x, y, source=src, color=colour, size=4)
        for fig in (thr, sig, sat):
            fig.add_tools(HoverTool(tooltips=[("bytes", "@bytes"), ("Mbps", "@mbps{0.00}"), ("time", "@usec{0.0} µs")]))
            legend = fig.legend[0]  # under the plot: over it, it hid a curve
            legend.click_policy = "hide"
            fig.add_layout(legend, "below")
        return row(thr, sig, sat)


# -- running ---------------------------------------------------------------------------
def _label(c: Session | None) -> str:
    if c is None:
        return "no queue"
    handlers = ", ".join(c.handlers) or "no handler"
    return f"queue {c.queue} ({handlers})"


@contextmanager
def _out_of_path(sessions: Iterable[Session]) -> Iterator[None]:
    with ExitStack() as stack:
        for s in sessions:
            stack.enter_context(s.out_of_path())
        yield


def _progress(total: int, label: str) -> Callable[[int, Point], None]:
    """A progress bar in a notebook, a line in a terminal."""
    try:
        from IPython import get_ipython

        shell = get_ipython()
    except ImportError:
        shell = None
    if shell is not None and type(shell).__name__ == "ZMQInteractiveShell":
        import ipywidgets as w
        from IPython.display import display

        bar = w.IntProgress(min=0, max=total, description=label[:20])
        text = w.Label()
        display(w.HBox([bar, text]))

        def update(i: int, p: Point) -> None:
            bar.value = i
            text.value = f"{p.bytes} bytes: {p.mbps:.1f} Mbps, {p.usec:.1f} µs"

        return update

    def text(i: int, p: Point) -> str:
        return f"{label}: {i}/{total} points, {p.bytes} bytes {p.mbps:9.1f} Mbps {p.usec:9.1f} µs"

    if sys.stderr.isatty():

        def line(i: int, p: Point) -> None:  # one line, redrawn in place
            print("\r" + text(i, p), end="\n" if i == total else "", file=sys.stderr, flush=True)

        return line
    every = max(1, total // 8)  # logs, CI, a pipe: whole lines, about eight per configuration

    def logged(i: int, p: Point) -> None:
        if i == 1 or i == total or i % every == 0:
            print(text(i, p), file=sys.stderr, flush=True)

    return logged


def _cpu_args(cpu: int | None) -> list[str]:
    return [] if cpu is None else ["--cpu", str(cpu)]


def _measure(
    lab: Lab,
    sizes: list[tuple[int, int]],
    label: str,
    runtm: float,
    trials: int,
    pin: tuple[int, int] | None,
    repeats: int | None,
    to: str | None,
    proto: str,
) -> list[Point]:
    from ..lab.network import wait_ready

    cpus = sorted(os.sched_getaffinity(0))
    c_cpu, s_cpu = (cpus[pin[0]], cpus[pin[1]]) if pin is not None else (None, None)
    server = lab.server.popen([sys.executable, "-m", "pktlab.measure.netpipe", "serve", "--port", str(PORT),
                               "--proto", proto, *_cpu_args(s_cpu)])  # fmt: skip
    try:
        wait_ready(server, "ping-pong server in the lab server")
        args = ["run", "--host", to or lab.server.addr, "--port", str(PORT),
                "--sizes", ",".join(f"{n}:{i}" for n, i in sizes),
                "--runtm", str(runtm), "--trials", str(trials), *_cpu_args(c_cpu),
                *(["--steal-cpus", f"{c_cpu},{s_cpu}"] if pin is not None else []),
                *(["--repeats", str(repeats)] if repeats else []), "--proto", proto]  # fmt: skip
        client = lab.client.popen([sys.executable, "-m", "pktlab.measure.netpipe", *args])
        progress = _progress(len(sizes), label)
        points: list[Point] = []
        assert client.stdout is not None
        for line in client.stdout:
            if not line.startswith("{"):
                continue
            d = json.loads(line)
            points.append(Point(label, d["bytes"], d["repeats"], d["seconds"], d["stolen"], d["clean"]))
            progress(len(points), points[-1])
        client.wait(30)
        if client.returncode != 0 and not points:
            err = client.stderr.read() if client.stderr else ""
            raise LabError(f"the ping-pong client failed: {err.strip()[-300:]}")
        return points
    finally:
        if server.poll() is None:
            server.kill()
        server.wait(5)


def netpipe(
    lab: Lab,
    through: Sequence[Session | None] = (None,),
    *,
    max_bytes: int = 1 << 20,
    start: int = 1,
    quick: bool = False,
    runtm: float | None = None,
    trials: int = TRIALS,
    pin: tuple[int, int] | None = (0, -1),
    repeats: int | None = None,
    to: str | None = None,
    proto: str = "tcp",
) -> NetpipeResult:
    """Measure every configuration of ``through`` between the lab's client and server; see the module docstring.

    ``proto="udp"`` ping-pongs single datagrams instead (blocks up to 65,507 bytes; a lost
    datagram ends the run with an error).  ``to`` is the address the client connects to
    (a NAT's, say; default: the server's).
    Block sizes run from ``start`` to ``max_bytes`` (NPtcp's ``-l`` and ``-u``).  Each trial's round
    trips follow NPtcp's rule (:func:`trial_round_trips`: ``runtm``, default NetPIPE's RUNTM of 0.1 s, over
    the previous block's one-way time), so a trial lasts 0.1-0.2 s and a run up to 1 MiB about a minute per
    configuration, and the figures are NPtcp's.  ``quick=True`` makes trials ten times shorter (a run in
    about 10 s), which reads lower from ~128 KiB on: a connection whose blocks are few and far between
    does not reach the pace of a sustained one.  ``repeats`` fixes the round trips per trial (NPtcp's
    ``-n``) instead.  ``pin`` puts the client and the server on these CPUs (indexes
    into the CPUs this process may use; the default: first and last), so a run does not
    depend on where the scheduler puts
    them — on a machine with few CPUs, waking a process on another CPU costs more than the
    network path.  ``None`` leaves them to the scheduler.
    """
    if proto not in ("tcp", "udp"):
        raise SessionError(f"proto must be 'tcp' or 'udp', not {proto!r}")
    if not isinstance(max_bytes, int) or isinstance(max_bytes, bool) or max_bytes < 1:
        raise SessionError(f"max_bytes {max_bytes!r} must be a block size of at least 1 byte (default 1 MiB)")
    if proto == "udp" and max_bytes > UDP_MAX:
        max_bytes = UDP_MAX  # one datagram per message
    if not isinstance(start, int) or isinstance(start, bool) or not 1 <= start <= max_bytes:
        raise SessionError(f"start {start!r} must be a block size from 1 to max_bytes ({max_bytes})")
    if runtm is not None and not runtm > 0:
        raise SessionError(f"runtm {runtm!r} must be a positive number of seconds (NetPIPE's RUNTM is 0.1)")
    sizes = steps(max_bytes, start)
    runtm = runtm if runtm is not None else QUICK_RUNTM if quick else RUNTM
    sessions = [s for s in through if s is not None]
    sessions += [s for s in getattr(lab, "sessions", []) if s not in sessions and s.attached]  # the lab's own
    for s in sessions:
        if not s.attached:
            raise SessionError(f"session {s.name} is not attached; attach it before measuring through it")
    result = NetpipeResult()
    for c in through:
        label = _label(c)
        with _out_of_path(s for s in sessions if s is not c):
            result.points += _measure(lab, sizes, label, runtm, trials, pin, repeats, to, proto)
        result.configs.append(label)
    return result


NPTCP_PORT = 5002  # NPtcp's default


def nptcp(
    lab: Lab,
    *,
    max_bytes: int = 1 << 20,
    start: int = 1,
    repeats: int | None = None,
    pin: tuple[int, int] | None = (0, -1),
    to: str | None = None,
    label: str = "NPtcp",
    timeout: float = 300.0,
) -> NetpipeResult:
    """Debian's NPtcp from the lab's client to its server, pinned as :func:`netpipe` pins its own ends.

    The reference ``netpipe`` is checked against: the same block sizes (NetPIPE's schedule from
    ``start``, ``-l``, to ``max_bytes``, ``-u``), its own round trips per trial (or ``repeats``,
    ``-n``), the fastest of its trials; ``to`` is the address it connects to (default: the server's).
    The client starts once the server's socket listens (no fixed sleep).
    """
    from ..lab.network import wait_until

    if shutil.which("NPtcp") is None:
        raise MissingToolError("NPtcp is not installed; run `make setup` (or apt-get install netpipe-tcp)")
    cpus = sorted(os.sched_getaffinity(0))
    c_cpu, s_cpu = (cpus[pin[0]], cpus[pin[1]]) if pin is not None else (None, None)

    def taskset(cpu: int | None) -> list[str]:
        return [] if cpu is None else ["taskset", "-c", str(cpu)]

    def listening() -> bool:
        out = lab.server.run(["ss", "-Hltn", f"sport = :{NPTCP_PORT}"], timeout=10).stdout
        return bool(out.strip())

    with tempfile.TemporaryDirectory(prefix="pktlab-nptcp-") as d:
        out = Path(d) / "np.out"
        # the receiver runs the same schedule: it must start where the transmitter starts
        server = lab.server.popen([*taskset(s_cpu), "NPtcp", "-l", str(start), "-u", str(max_bytes)],
                                  stdout=subprocess.DEVNULL)  # fmt: skip
        try:
            if not wait_until(lambda: listening() or server.poll() is not None, timeout=10) or server.poll():
                raise LabError("NPtcp's server did not start listening in the lab server within 10 s")
            argv = [*taskset(c_cpu), "NPtcp", "-h", to or lab.server.addr, "-o", str(out), "-l", str(start),
                    "-u", str(max_bytes)]  # fmt: skip
            done = lab.client.run([*argv, *(["-n", str(repeats)] if repeats else [])], timeout=timeout)
            server.wait(10)
        finally:
            if server.poll() is None:
                server.kill()
                server.wait(5)
        # its progress on stderr names each point's round trips per trial: "  7:      12 bytes  4166 times -->"
        trips = {int(m[1]): int(m[2]) for m in re.finditer(r"^\s*\d+:\s+(\d+) bytes\s+(\d+) times", done.stderr, re.M)}
        points = []
        for line in out.read_text().splitlines():
            size, _mbps, secs, *_ = line.split()
            if int(size) <= max_bytes:  # NPtcp also runs the +3 perturbation of its last size
                points.append(Point(label, int(size), trips.get(int(size), repeats or 0), float(secs)))
    return NetpipeResult(points, [label])


def compare_runs(ours: Sequence[NetpipeResult], reference: Sequence[NetpipeResult], above: int = 64 * 1024) -> Any:
    """Per block size above ``above``: how one tool's interleaved runs compare with another's (pktlab against NPtcp).

    ``ours[i]`` and ``reference[i]`` are runs made one after the other (run i of each).  Columns:
    the median Mbps of each, the ratio of the medians, the ratio of the fastest runs, the median
    and range of the per-run ratios, and ``collapsed``: below half the reference both in the
    fastest run and in the median of the per-run ratios.  Both at once: a busy host (steal time)
    drops either tool to a slow mode in single runs, which moves one of the two statistics but
    not both; a measurement that is itself slow at a size (issue 21) moves both.
    """
    import statistics

    import pandas as pd

    if len(ours) != len(reference) or not ours:
        raise ValueError(f"need the same number of runs of each, at least one (got {len(ours)} and {len(reference)})")
    mine = [{p.bytes: p.mbps for p in r.points} for r in ours]
    ref = [{p.bytes: p.mbps for p in r.points} for r in reference]
    sizes = sorted(set.intersection(*(set(d) for d in mine + ref)))
    rows = []
    for b in sizes:
        if b <= above:
            continue
        o, r = [d[b] for d in mine], [d[b] for d in ref]
        per_run = [x / y for x, y in zip(o, r, strict=True)]
        fastest, middle = max(o) / max(r), statistics.median(per_run)
        rows.append({"bytes": b, "reference Mbps": statistics.median(r), "ours Mbps": statistics.median(o),
                     "ratio of medians": statistics.median(o) / statistics.median(r), "ratio of fastest": fastest,
                     "median run ratio": middle, "min run ratio": min(per_run), "max run ratio": max(per_run),
                     "collapsed": fastest < 0.5 and middle < 0.5})  # fmt: skip
    return pd.DataFrame(rows)


# -- the two ends, run inside lab namespaces: python -m pktlab.measure.netpipe serve|run ----------------
UDP_MAX = 65507  # the largest UDP payload over IPv4


def _blocking_with_timeout(sock: Any, seconds: float) -> None:
    """A blocking socket whose receives give up after ``seconds`` (SO_RCVTIMEO).

    Python's own ``settimeout`` makes the descriptor non-blocking and waits in Python,
    which the C loops of ``pktlab.measure._pingpong`` would see as an immediate EAGAIN.
    """
    import socket
    import struct

    sock.settimeout(None)
    whole = int(seconds)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, struct.pack("ll", whole, int((seconds - whole) * 1e6)))


def serve(port: int, proto: str) -> None:
    """The server end (run in the lab's server): echo each block back, until a block of size 0."""
    import socket
    import struct

    from ._pingpong import echo, echo_dgram

    if proto == "udp":
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sock.bind(("0.0.0.0", port))
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
        sock.settimeout(30)
        print("ready", flush=True)
        while True:
            head, peer = sock.recvfrom(16)
            sock.connect(peer)
            size, count = struct.unpack("!QQ", head[:16])
            if size == 0:
                return
            sock.send(b"ok")
            _blocking_with_timeout(sock, 5.0)  # echo_dgram waits in C: SO_RCVTIMEO bounds each wait
            echo_dgram(sock.fileno(), size, count)
            sock.settimeout(30)
        return
    ls = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    ls.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    ls.bind(("0.0.0.0", port))
    ls.listen(1)
    ls.settimeout(30)
    print("ready", flush=True)
    conn, _ = ls.accept()
    conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    conn.settimeout(None)
    while True:
        head = conn.recv(16, socket.MSG_WAITALL)
        if len(head) < 16:
            return
        size, count = struct.unpack("!QQ", head)
        if size == 0:
            return
        echo(conn.fileno(), size, count)


def steal_ticks(cpus: Sequence[int] | None = None) -> int:
    """The host's steal time so far (/proc/stat, in clock ticks) on these CPUs (None: all of them together).

    0 where the kernel reports none (bare metal, or no steal accounting).
    """
    wanted = {"cpu"} if cpus is None else {f"cpu{c}" for c in cpus}
    total = 0
    with open("/proc/stat") as f:
        for line in f:
            if not line.startswith("cpu"):
                break
            fields = line.split()
            if fields[0] in wanted and len(fields) > 8:
                total += int(fields[8])  # user nice system idle iowait irq softirq steal
    return total


def run_client(
    host: str,
    port: int,
    sizes: list[tuple[int, int]],
    runtm: float,
    trials: int,
    fixed: int | None,
    proto: str,
    steal_cpus: list[int] | None = None,
) -> None:
    """The client end (run in the lab's client): NetPIPE's trials for each size, one result line per size."""
    import socket
    import struct

    from ._pingpong import round_trips, round_trips_dgram

    if proto == "udp":
        conn = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        conn.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
        conn.connect((host, port))
        _blocking_with_timeout(conn, 2.0)  # a lost datagram ends the run instead of hanging it
        trip = round_trips_dgram
    else:
        conn = socket.create_connection((host, port), timeout=10)
        conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        conn.settimeout(None)
        trip = round_trips
    fd = conn.fileno()

    def trial(size: int, count: int) -> float:
        conn.sendall(struct.pack("!QQ", size, count))
        if proto == "udp":
            conn.recv(16)  # the server is ready for this trial
        return trip(fd, size, count)

    previous = sizes[0][0]
    one_way = trial(previous, WARMUP) / WARMUP / 2  # NetPIPE: tlast for the first point
    for size, inc in sizes:
        repeats = fixed or trial_round_trips(runtm, previous, inc, one_way, trials)
        clean: list[float] = []
        stolen: list[float] = []
        while len(clean) < trials and len(clean) + len(stolen) < STEAL_BUDGET * trials:
            before = steal_ticks(steal_cpus)
            seconds = trial(size, repeats)
            took = (steal_ticks(steal_cpus) - before) / TICKS_PER_SECOND
            # disturbed: the host took more than STEAL_SHARE of the trial's time (a tick's change is 10 ms
            # at most, so in a trial shorter than 200 ms any change counts)
            (stolen if took > STEAL_SHARE * seconds else clean).append(seconds / repeats)
        one_way = min(clean or stolen) / 2
        previous = size
        print(json.dumps({"bytes": size, "repeats": repeats, "seconds": one_way, "stolen": len(stolen),
                          "clean": bool(clean)}), flush=True)  # fmt: skip
        if one_way > STOP_SECONDS:
            break
    conn.sendall(struct.pack("!QQ", 0, 0))
    conn.close()


def main(argv: list[str] | None = None) -> int:
    import argparse

    p = argparse.ArgumentParser(prog="python -m pktlab.measure.netpipe")
    sub = p.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("serve")
    s.add_argument("--port", type=int, default=PORT)
    s.add_argument("--proto", choices=["tcp", "udp"], default="tcp")
    r = sub.add_parser("run")
    r.add_argument("--host", required=True)
    r.add_argument("--port", type=int, default=PORT)
    r.add_argument("--sizes", required=True, help="SIZE:INCREMENT,... (see steps())")
    r.add_argument("--runtm", type=float, default=RUNTM)
    r.add_argument("--trials", type=int, default=TRIALS)
    r.add_argument("--repeats", type=int, default=None)
    r.add_argument("--proto", choices=["tcp", "udp"], default="tcp")
    r.add_argument("--steal-cpus", default=None, help="CPUs of the two ends, whose steal time disturbs a trial")
    for q in (s, r):
        q.add_argument("--cpu", type=int, default=None)
    a = p.parse_args(argv)
    if a.cpu is not None:
        os.sched_setaffinity(0, {a.cpu})
    if a.cmd == "serve":
        serve(a.port, a.proto)
    else:
        steal = [int(c) for c in a.steal_cpus.split(",")] if a.steal_cpus else None
        sizes = [(int(size), int(inc)) for size, inc in (x.split(":") for x in a.sizes.split(","))]
        run_client(a.host, a.port, sizes, a.runtm, a.trials, a.repeats, a.proto, steal)
    return 0


if __name__ == "__main__":
    sys.exit(main())
