"""``%pktlab`` and ``%%pktlab handler``: a thin parser over the Python API.

Everything here calls the public API; the magic only keeps a name → object
map of the labs and sessions it made, and which ones are current.  Errors
become IPython ``UsageError``s: one sentence, no traceback.
"""

from __future__ import annotations

import argparse
import linecache
import shlex
import textwrap
from typing import Any

from ..errors import PktlabError
from ..lab.network import TOPOLOGIES, Lab
from ..options import ATTACH, REPLAY, DeclaredParser, add_options
from ..packet.model import PacketRepr
from ..pipeline.session import Session, attach
from ..teardown import Teardown


class _Parser(DeclaredParser):
    def error(self, message: str) -> Any:  # never sys.exit() inside a kernel
        raise PktlabError(f"{self.prog}: {message}; run %pktlab help for the syntax")


def make_parsers() -> dict[str, _Parser]:
    """Every ``%pktlab`` command's parser, in the order ``%pktlab help`` lists them: the one declaration of the
    magic's syntax, from which its help and the docs' reference of the magics are made."""

    def cmd(name: str, what: str, prog: str | None = None) -> _Parser:
        parser = _Parser(prog=prog or f"%pktlab {name}", description=what, add_help=False)
        parsers[name] = parser
        return parser

    def session_arg(parser: _Parser, name: str = "--session") -> None:
        if name.startswith("-"):
            parser.add_argument(name, default=None, help="the session's name (default: the current session)")
        else:
            parser.add_argument(name, nargs="?", default=None, help="the session's name (default: the current session)")

    def lab_arg(parser: _Parser) -> None:
        parser.add_argument("--lab", default=None, help="the lab's name (default: the current lab)")

    parsers: dict[str, _Parser] = {}
    lab = cmd("lab", "makes a lab (up), tears one down, detaching its sessions first (down), or lists each lab's "
              "hosts, addresses, namespaces, link conditions and sessions (status)")  # fmt: skip
    lab.add_argument("action", choices=["up", "down", "status"], help="what to do")
    lab.add_argument("name", nargs="?", help="the lab's name (up: default 'lab'; down: default the current lab)")
    lab.add_argument("--topology", choices=TOPOLOGIES, default="pair",
                     help="pair: client - server; router: client - router - server")  # fmt: skip
    lab.add_argument("--name", dest="name_opt", metavar="NAME", help="the lab's name, as an option")

    ln = cmd("link", "sets the conditions of the link between two lab hosts, or with no option shows them")
    ln.add_argument("a", help="a lab host (client, router, server)")
    ln.add_argument("b", help="the host at the other end of the link")
    ln.add_argument("--delay", default=None, help="e.g. 20ms (0: none)")
    ln.add_argument("--jitter", default=None, help="e.g. 5ms, ± around the delay")
    ln.add_argument("--loss", default=None, help="e.g. 1%% or 0.01")
    ln.add_argument("--rate", default=None, help="e.g. 10mbit (0: no limit)")
    ln.add_argument("--direction", default="both", choices=["both", "a>b", "b>a"],
                    help="both directions, or only from the first host named (a>b) or to it (b>a)")  # fmt: skip
    ln.add_argument("--clear", action="store_true", help="remove every condition of the link")
    lab_arg(ln)

    att = cmd("attach", "binds an NFQUEUE in a lab host (default: the current lab's server) and returns the session")
    att.add_argument("queue", type=int, help="the NFQUEUE number, 0-65535")
    add_options(att, ATTACH)  # declared once, in pktlab.options
    # what only the magic has: where to attach, and one switch for both fail-open settings
    att.add_argument("--on", default="server", help="lab host to attach in (client, router, server)")
    lab_arg(att)
    att.add_argument(
        "--fail-closed", action="store_true", help="drop instead of pass when no reader is bound or the queue is full"
    )

    off = cmd("offload", "gives matching packets a verdict in the kernel, before the queue (again with the same "
              "filter: swapped atomically); 'offload list', 'offload remove \"EXPR\"'")  # fmt: skip
    off.add_argument("expr", help="tcpdump filter, or 'remove'/'list'")
    off.add_argument("verdict", nargs="?", default=None, help="accept, drop or mark (after remove: the filter)")
    off.add_argument("--mark", type=lambda x: int(x, 0), default=None, help="the mark to set (mark, or accept)")
    session_arg(off)

    tr = cmd("trace", "follows packets step by step through the lab's hosts, with the kernel's times (root only)")
    tr.add_argument("--filter", default="", help="tcpdump filter of the packets to trace")
    tr.add_argument("--count", type=int, default=5, help="packets to trace")
    tr.add_argument("--timeout", type=float, default=10.0, help="seconds before the trace ends anyway")
    tr.add_argument("--on", default=None, help="comma-separated lab hosts (default: all)")
    lab_arg(tr)
    tr.add_argument("--background", action="store_true", help="return at once; .wait() gives the trace")

    dr = cmd("drops", "prints every packet the lab's kernels drop as it happens, with the kernel's reason, and "
             "returns them (root only)")  # fmt: skip
    dr.add_argument("--filter", default="", help="tcpdump filter of the packets to report")
    dr.add_argument("--seconds", type=float, default=10.0, help="how long to watch")
    dr.add_argument("--on", default=None, help="comma-separated lab hosts (default: all)")
    dr.add_argument("--background", action="store_true", help="return once watching; .wait() or .stop() gives them")
    lab_arg(dr)

    bp = cmd("bpf", "the BPF program of a tcpdump expression, listed like tcpdump -d")
    bp.add_argument("expr", help='one quoted tcpdump expression, e.g. "udp and port 53"')

    npp = cmd("netpipe", "NetPIPE from the lab's client to its server, with no queue and then through each of the "
              "lab's sessions")  # fmt: skip
    npp.add_argument("--max", type=int, default=1 << 20, help="largest block, bytes")
    npp.add_argument("--udp", action="store_true", help="ping-pong datagrams instead of TCP")
    npp.add_argument("--to", default=None, help="address the client talks to (default: the server's)")
    npp.add_argument("--quick", action="store_true",
                     help="trials ten times shorter than NPtcp's (~10 s a run; reads lower from ~128 KiB)")
    lab_arg(npp)

    det = cmd("detach", "removes the session's rules, gives every held packet its verdict, unbinds")
    session_arg(det, "name")
    det.add_argument("--all", action="store_true", help="every session of the magic")
    session_arg(cmd("status", "counters from pktlab and from the kernel, rules, handlers, last errors"), "name")
    session_arg(cmd("pause", "stops reading: packets wait in the kernel queue (up to --max-len)"), "name")
    session_arg(cmd("resume", "reads again, oldest first"), "name")
    stp = cmd("step", "while paused: one waiting packet through the handlers, and what became of it")
    session_arg(stp, "name")
    stp.add_argument("--hold", action="store_true",
                     help="hold it instead: returns the packet to inspect, then .accept() or .drop()")  # fmt: skip
    stp.add_argument("--timeout", type=float, default=5.0, help="seconds to wait for a packet")
    session_arg(cmd("dashboard", "live plots of a session (bokeh)"), "name")
    session_arg(cmd("controls", "pause, step and inspect, handler toggles, verdicts (ipywidgets)"), "name")
    doc = cmd("doctor", "what this machine allows (live or replay only, and why), checked for real")
    doc.add_argument("--clean", action="store_true", help="first remove what dead pktlab processes left")

    rp = cmd("replay", "a capture as the current session; its handlers run on it with %pktlab run")
    rp.add_argument("source", help="pcap/pcapng path or dataset name (pktlab.datasets.names())")
    add_options(rp, REPLAY)
    run = cmd("run", "runs the current replay through its handlers")
    run.add_argument("--pace", type=float, default=None, help="1.0 = real time; default: as fast as possible")
    run.add_argument("--limit", type=int, default=None, help="only the first N packets")
    session_arg(run)

    session_arg(cmd("handlers", "a table of the session's handlers (name, on, packets, drops, errors)"), "name")
    hl = cmd("handler", "turns a handler off or on, removes it, or prints its source")
    hl.add_argument("action", choices=["on", "off", "remove", "show"], help="what to do with the handler")
    hl.add_argument("name", help="the handler's name")
    session_arg(hl)
    hd = cmd("handler-cell", "the cell is the body of def NAME(pkt): ...; running it again replaces NAME in place",
             prog="%%pktlab handler")  # fmt: skip
    hd.add_argument("name", help="the handler's name")
    session_arg(hd)
    hd.add_argument("--before", default=None, help="put it before this handler")
    hd.add_argument("--after", default=None, help="put it after this handler")
    hd.add_argument("--kernel", action="store_true", help="compile it into nftables rules that run in the kernel, "
                    "in front of the queue (a replay runs it in Python); the rules are printed")  # fmt: skip
    return parsers


def _value_name(action: argparse.Action) -> str:
    if action.choices:
        return "|".join(str(c) for c in action.choices)
    return (action.metavar or action.dest).upper()


def syntax(parser: DeclaredParser) -> str:
    """One command's syntax as people write it: the command, its positional arguments, then its options."""
    words = [parser.prog]
    for act in parser.arguments:
        if act.option_strings:
            continue
        words.append(f"[{_value_name(act)}]" if act.nargs == "?" else _value_name(act))
    for act in parser.arguments:
        if not act.option_strings:
            continue
        flag = act.option_strings[0]
        words.append(f"[{flag}]" if act.nargs == 0 else f"[{flag} {_value_name(act)}]")
    return " ".join(words)


def usage_text(parsers: dict[str, DeclaredParser]) -> str:
    """``%pktlab help``: each command's syntax and what it does, from its parser."""
    return "\n".join(f"{syntax(p)}\n    {p.description}" for p in parsers.values())


class PktlabMagicState:
    """The labs and sessions made through the magic, by name."""

    def __init__(self, shell: Any) -> None:
        self.shell = shell
        self.labs: dict[str, Lab] = {}
        self.sessions: dict[str, Any] = {}  # Session (a queue or a replay)
        self.current_lab: str | None = None
        self.current_session: str | None = None
        self.parsers = make_parsers()

    # -- lookup ----------------------------------------------------------------
    def lab(self, name: str | None = None) -> Lab:
        key = name or self.current_lab
        if key is None or key not in self.labs:
            raise PktlabError(
                f"no lab named {key!r}; bring one up with %pktlab lab up"
                if name
                else "no lab is up; run %pktlab lab up first (or attach with --host)"
            )
        return self.labs[key]

    def session(self, name: str | None = None) -> Session:
        key = name or self.current_session
        if key is None or key not in self.sessions:
            raise PktlabError(
                f"no session named {key!r}; the sessions are {', '.join(self.sessions) or 'none'}"
                if name
                else "no session is attached; run %pktlab attach N first"
            )
        return self.sessions[key]

    # -- commands ----------------------------------------------------------------
    def run_line(self, line: str) -> Any:
        try:
            argv = shlex.split(line)
        except ValueError as exc:
            raise PktlabError(f"cannot read the arguments ({exc}); check the quotes") from None
        if not argv or argv[0] in ("help", "-h", "--help"):
            print(usage_text(self.parsers))
            return None
        cmd, rest = argv[0], argv[1:]
        if cmd == "lab":
            return self.cmd_lab(self.parsers["lab"].parse_args(rest))
        if cmd == "attach":
            return self.cmd_attach(self.parsers["attach"].parse_args(rest))
        if cmd == "link":
            return self.cmd_link(self.parsers["link"].parse_args(rest))
        if cmd == "drops":
            return self.cmd_drops(self.parsers["drops"].parse_args(rest))
        if cmd == "detach":
            return self.cmd_detach(self.parsers["detach"].parse_args(rest))
        if cmd == "status":
            a = self.parsers["status"].parse_args(rest)
            return self.session(a.name).status()
        if cmd == "offload":
            return self.cmd_offload(self.parsers["offload"].parse_args(rest))
        if cmd == "replay":
            a = self.parsers["replay"].parse_args(rest)
            from ..pipeline.replay import replay

            r = replay(a.source, **{opt.name: getattr(a, opt.name) for opt in REPLAY})
            self.sessions[r.name] = r
            self.current_session = r.name
            return r
        if cmd == "run":
            a = self.parsers["run"].parse_args(rest)
            if a.session is None and self.current_session is None:
                raise PktlabError("no capture to run; load one with %pktlab replay NAME (a dataset or a pcap) first")
            r = self.session(a.session)
            if not r.is_replay:
                raise PktlabError(f"session {r.name} reads a live queue; %pktlab run replays a capture session")
            return r.run(pace=a.pace, limit=a.limit)
        if cmd == "netpipe":
            from ..measure.netpipe import netpipe

            a = self.parsers["netpipe"].parse_args(rest)
            lab = self.lab(a.lab)
            mine = [s for s in lab.sessions if s.attached]
            return netpipe(lab, [None, *mine], max_bytes=a.max, proto="udp" if a.udp else "tcp", to=a.to, quick=a.quick)
        if cmd == "trace":
            return self.cmd_trace(self.parsers["trace"].parse_args(rest))
        if cmd == "bpf":
            from ..kernel import bpf

            return bpf.compile(self.parsers["bpf"].parse_args(rest).expr)
        if cmd == "doctor":
            from .. import doctor

            return doctor.run(clean=self.parsers["doctor"].parse_args(rest).clean)
        if cmd in ("dashboard", "controls"):
            s = self.session(self.parsers[cmd].parse_args(rest).name)
            return s.dashboard() if cmd == "dashboard" else s.controls()
        if cmd in ("pause", "resume"):
            s = self.session(self.parsers[cmd].parse_args(rest).name)
            s.pause() if cmd == "pause" else s.resume()
            return None
        if cmd == "step":
            return self.cmd_step(self.parsers["step"].parse_args(rest))
        if cmd == "handlers":
            return self.session(self.parsers["handlers"].parse_args(rest).name).handler_table()
        if cmd == "handler":
            a = self.parsers["handler"].parse_args(rest)
            s = self.session(a.session)
            if a.action == "show":
                print(s.handler_source(a.name))
                return None
            if a.action == "remove":
                s.remove_handler(a.name)
            else:
                s.enable(a.name, a.action == "on")
            return None
        raise PktlabError(f"unknown command {cmd!r}; try %pktlab help")

    def cmd_step(self, a: argparse.Namespace) -> Any:
        """One packet of a paused session: its verdict said in a line, or (``--hold``) the held packet returned."""
        s = self.session(a.name)
        if not s.paused:
            raise PktlabError(f"session {s.name} is not paused; %pktlab pause it first, then step")
        if s.is_replay and not s.attached:
            s.attach()  # a paused replay's reader waits for the steps
        if a.hold:
            held = s.step_and_hold(a.timeout)
            if held is None:
                print(f"pktlab: no packet came to {s.name} within {a.timeout:g} s")
            return held
        held_before, n = len(s.held), s.record.n
        if not s.step(a.timeout):
            print(f"pktlab: no packet came to {s.name} within {a.timeout:g} s")
        elif len(s.held) > held_before:
            print(f"pktlab: {s.held[len(s.held) - 1].packet.summary()} is held (its hold predicate took it)")
        elif s.record.n > n:
            e = s.record.tail(1)[0]  # (its head: the record's snaplen; its size: the packet's)
            what = PacketRepr(e.id, e.hook, e.size, e.head[:128], bool(e.head) and e.head[0] >> 4 in (4, 6), None,
                              e.modified).summary()  # fmt: skip
            by = f"handler {e.handler}" if e.handler else "the default verdict"
            print(f"pktlab: {what} -> {e.verdict} ({by}" + (f"; {e.error}" if e.error else "") + ")")
        return None

    def cmd_lab(self, a: argparse.Namespace) -> Any:
        name = a.name_opt or a.name
        if a.action == "up":
            name = name or "lab"
            if name in self.labs and not self.labs[name].closed:
                raise PktlabError(f"lab {name!r} is already up; %pktlab lab down {name} first or pick another --name")
            lab = Lab(a.topology)
            self.labs[name] = lab
            self.current_lab = name
            return lab
        if a.action == "down":
            if name is None and self.current_lab is None:
                raise PktlabError("no lab is up; nothing to take down")
            lab = self.lab(name)
            key = name or self.current_lab
            td = Teardown(f"lab {key}")
            for sname, s in list(self.sessions.items()):
                if getattr(s, "lab", None) is lab:
                    td.step(f"detaching session {sname}", s.detach)
                    self._forget_session(sname)
            td.step("removing its namespaces", lab.down)
            del self.labs[key]  # type: ignore[arg-type]
            if self.current_lab == key:
                self.current_lab = next(iter(self.labs), None)
            td.finish("run %pktlab doctor --clean to remove what is left")
            print(f"pktlab: lab {key} is down; its namespaces, rules and traffic programs are gone")
            return None
        if not self.labs:
            print("no lab is up; %pktlab lab up (a client and a server) or %pktlab lab up router")
            return None
        for n, lab in self.labs.items():
            lines = lab.describe()
            print("\n".join([f"{n}{' (current)' if n == self.current_lab else ''}: {lines[0]}", *lines[1:]]))
        return None

    def cmd_link(self, a: argparse.Namespace) -> None:
        link = self.lab(a.lab).link(a.a, a.b)
        if a.clear:
            link.clear()
        changes = {k: getattr(a, k) for k in ("delay", "jitter", "loss", "rate") if getattr(a, k) is not None}
        if changes:
            link.set(direction=a.direction, **changes)
        print("\n".join(link.describe()))

    def cmd_attach(self, a: argparse.Namespace) -> Session:
        netns: Any = None
        if not a.allow_host:
            lab = self.lab(a.lab)
            netns = lab[a.on]
        options = {opt.name: getattr(a, opt.name) for opt in ATTACH if opt.magic}
        s = attach(a.queue, netns=netns, bypass=not a.fail_closed, fail_open=not a.fail_closed, **options)
        self.sessions[s.name] = s
        self.current_session = s.name
        return s

    def cmd_offload(self, a: argparse.Namespace) -> Any:
        s = self.session(a.session)
        if a.expr == "list" and a.verdict is None:
            return [o.describe() for o in s.offloads]
        if a.expr == "remove":
            if a.verdict is None:
                raise PktlabError('%pktlab offload remove needs the filter: %pktlab offload remove "tcp dst port 22"')
            s.remove_offload(a.verdict)
            return None
        if a.verdict is None:
            raise PktlabError('%pktlab offload needs a verdict: %pktlab offload "tcp dst port 22" drop')
        return s.offload(a.expr, a.verdict, mark=a.mark)

    def cmd_trace(self, a: argparse.Namespace) -> Any:
        from ..measure.tracer import Tracer

        lab = self.lab(a.lab)
        hosts = [lab[h.strip()] for h in a.on.split(",")] if a.on else lab
        try:
            tracer = Tracer(hosts, a.filter, a.count, a.timeout).start()
        except ValueError as exc:
            raise PktlabError(f"%pktlab trace: {exc}") from None
        return tracer if a.background else tracer.wait()

    def cmd_drops(self, a: argparse.Namespace) -> Any:
        from ..measure.drops import DropWatch

        lab = self.lab(a.lab)
        hosts = [lab[h.strip()] for h in a.on.split(",")] if a.on else lab
        try:
            watch = DropWatch(hosts, a.filter, a.seconds, on_drop=print)
        except ValueError as exc:
            raise PktlabError(f"%pktlab drops: {exc}") from None
        what = f", packets matching {a.filter}" if a.filter else ""
        print(f"pktlab: watching {', '.join(h.role for h in watch.hosts)} for {a.seconds:g} s{what}; "
              "each drop is printed as it happens")  # fmt: skip
        watch.start()
        if a.background:
            return watch
        try:
            return watch.wait()
        except KeyboardInterrupt:  # Ctrl-C / interrupt the kernel: stop now, keep what was seen
            return watch.stop()

    def cmd_detach(self, a: argparse.Namespace) -> None:
        names = list(self.sessions) if a.all else [a.name or self.current_session]
        if names == [None]:
            raise PktlabError("no session is attached; nothing to detach")
        for n in names:
            s = self.session(n)
            s.detach()
            self._forget_session(n)  # type: ignore[arg-type]
            gone = "" if s.is_replay else "; its rules are gone"
            print(f"pktlab: {n} detached ({s.record.n} packets seen{gone})")

    def _forget_session(self, name: str) -> None:
        self.sessions.pop(name, None)
        if self.current_session == name:
            self.current_session = next(reversed(self.sessions), None) if self.sessions else None

    def run_cell(self, line: str, cell: str) -> Any:
        try:
            argv = shlex.split(line)
        except ValueError as exc:
            raise PktlabError(f"cannot read the arguments ({exc}); check the quotes") from None
        if not argv or argv[0] != "handler":
            raise PktlabError("the cell magic is %%pktlab handler NAME; the cell is the handler's body")
        a = self.parsers["handler-cell"].parse_args(argv[1:])
        if not a.name.isidentifier():
            raise PktlabError(f"handler name {a.name!r} is not a Python identifier; use letters, digits and _")
        s = self.session(a.session)
        fn = compile_handler(a.name, cell, self.shell.user_ns if self.shell else {})
        replaced = a.name in s.handlers
        h = s.add_handler(fn, a.name, before=a.before, after=a.after, kernel=a.kernel, first_line=0)
        print(f"handler {a.name} {'replaced' if replaced else 'added'} in session {s.name}: {', '.join(s.handlers)}")
        if h.kernel is not None:
            where = "in the kernel" if s.chain.in_kernel else "in Python here (a replay), as these rules would"
            print(f"{a.name} runs {where}; its nftables rules (s.kernel_rules counts them):\n{h.kernel.describe()}")
        return None

    def close(self) -> None:
        """Detach every session and take every lab down; every step runs, failures are raised together."""
        td = Teardown("the notebook's pktlab state")
        for name, s in list(self.sessions.items()):
            if hasattr(s, "detach"):
                td.step(f"detaching session {name}", s.detach)
        for name, lab in list(self.labs.items()):
            td.step(f"taking lab {name} down", lab.down)
        self.sessions.clear()
        self.labs.clear()
        self.current_session = self.current_lab = None
        td.finish("run %pktlab doctor --clean to remove what is left")


def handler_source(name: str, body: str) -> str:
    """The source of ``def name(pkt): <body>`` (what a ``%%pktlab handler`` cell defines)."""
    body = textwrap.indent(textwrap.dedent(body).rstrip() or "pass", "    ")
    return f"def {name}(pkt):\n{body}\n    return None\n"


def compile_handler(name: str, body: str, user_ns: dict[str, Any]) -> Any:
    """Make ``def name(pkt): <body>`` with the notebook's globals."""
    src = handler_source(name, body)
    filename = f"<pktlab handler {name}>"
    try:
        code = compile(src, filename, "exec")
    except SyntaxError as exc:
        line = (exc.lineno or 2) - 1
        raise PktlabError(
            f"the handler cell has a syntax error on line {line}: {exc.msg}; fix the cell and run it again"
        ) from None
    linecache.cache[filename] = (len(src), None, src.splitlines(True), filename)
    local: dict[str, Any] = {}
    exec(code, user_ns, local)
    return local[name]


def _make_magics_class() -> Any:
    from IPython.core.error import UsageError
    from IPython.core.magic import Magics, line_cell_magic, magics_class

    @magics_class
    class PktlabMagics(Magics):
        def __init__(self, shell: Any) -> None:
            super().__init__(shell)
            self.state = PktlabMagicState(shell)

        @line_cell_magic
        def pktlab(self, line: str, cell: str | None = None) -> Any:
            """%pktlab COMMAND ... (try %pktlab help); %%pktlab handler NAME."""
            try:
                if cell is None:
                    return self.state.run_line(line)
                return self.state.run_cell(line, cell)
            except PktlabError as exc:
                raise UsageError(str(exc)) from None

    return PktlabMagics


def load(ipython: Any) -> None:
    from ..kernel import netns

    magics = _make_magics_class()(ipython)
    ipython.register_magics(magics)
    ipython._pktlab_magics = magics
    netns.prestart_helper()  # an ordinary user's first `%pktlab lab up` does not wait for the lab helper


def unload(ipython: Any) -> None:
    magics = getattr(ipython, "_pktlab_magics", None)
    if magics is not None:
        magics.state.close()
