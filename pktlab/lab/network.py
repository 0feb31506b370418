"""Network labs: namespaces joined by veth links, hosts that run commands.

A ``Lab`` is two hosts (``client`` — ``server``) or three
(``client`` — ``router`` — ``server``), each a network namespace named
``pktlab-<pid>-<n>-<role>``.  The pid in the name lets a later process
tell leftovers of a killed one from a live lab (:func:`sweep_stale`).
Teardown kills the processes the lab started (by PID) and removes the
namespaces, which removes their links and firewall rules with them; it runs
on ``down()``, on leaving a ``with`` block and at interpreter exit.
"""

from __future__ import annotations

import atexit
import itertools
import json
import numbers
import os
import re
import shlex
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import LabError
from ..kernel import netns
from ..kernel.proc import pid_alive
from ..teardown import Teardown

_LAB_SEQ = itertools.count(1)
_NAME_RE = re.compile(r"^pktlab-(\d+)-(\d+)-([a-z]+)$")
TOPOLOGIES = ("pair", "router")
TRAFFIC_PROGRAM = Path(__file__).with_name("traffic.py")  # the bounded programs lab hosts run
IFA_F_NODAD = 0x02  # usable at once: no duplicate address detection in a lab


def sweep_stale() -> list[str]:
    """Remove lab namespaces whose creating process is dead, and kill what still runs in them; return their names."""
    removed = []
    for name in netns.list_names():
        m = _NAME_RE.match(name)
        if m and not pid_alive(int(m.group(1))):
            for pid in netns.pids_in(name):  # what the dead process started in its lab (a sender, say)
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            netns.remove(name)
            removed.append(name)
    return removed


def _cmd_argv(cmd: str | list[str]) -> list[str]:
    return shlex.split(cmd) if isinstance(cmd, str) else list(cmd)


@dataclass
class Host:
    """One lab host: a network namespace with addresses on its links."""

    role: str
    netns: str
    addrs: dict[str, str] = field(default_factory=dict)  # ifname -> IPv4 address
    addrs6: dict[str, str] = field(default_factory=dict)  # ifname -> IPv6 address (fd77:...)
    lab: Lab | None = field(default=None, repr=False)

    def netns_and_lab(self) -> tuple[str, Lab | None]:
        """Where a session attached to this host lives, and its lab."""
        return self.netns, self.lab

    @property
    def addr(self) -> str:
        """The host's first IPv4 address."""
        return next(iter(self.addrs.values()))

    @property
    def addr6(self) -> str:
        """The host's first IPv6 address."""
        return next(iter(self.addrs6.values()))

    def run(
        self, cmd: str | list[str], *, timeout: float = 30.0, check: bool = True, input: str | None = None
    ) -> subprocess.CompletedProcess[str]:
        """Run ``cmd`` in this host and wait for it (bounded by ``timeout``)."""
        argv = _cmd_argv(cmd)
        try:
            return netns.run(self.netns, argv, timeout=timeout, check=check, input=input)
        except subprocess.CalledProcessError as exc:
            raise LabError(
                f"`{shlex.join(argv)}` failed in {self.role} with exit code {exc.returncode}: "
                f"{(exc.stderr or exc.stdout).strip()[:300]}"
            ) from None

    def popen(self, cmd: str | list[str], **kwargs: Any) -> subprocess.Popen[str]:
        """Start ``cmd`` in this host; the lab kills it (by PID) on teardown if still running."""
        kwargs.setdefault("stdout", subprocess.PIPE)
        kwargs.setdefault("stderr", subprocess.PIPE)
        kwargs.setdefault("text", True)
        proc = subprocess.Popen(netns.argv_in(self.netns, _cmd_argv(cmd)), **kwargs)
        if self.lab is not None:
            self.lab._track(proc)
        return proc

    def ping(
        self, dst: str | Host, *, count: int = 3, interval: float = 0.2, wait: float = 2.0, timeout: float = 30.0
    ) -> PingResult:
        """Send ``count`` ICMP echo requests to ``dst``, ``interval`` s apart; the replies and their round-trip times.

        A reply later than ``wait`` seconds after the last request counts as lost.
        """
        target = dst.addr if isinstance(dst, Host) else dst
        _check_count(count, "count", "echo requests")
        _check_timeout(timeout)
        if isinstance(interval, bool) or not isinstance(interval, numbers.Real) or not 0.002 <= interval <= 60:
            raise LabError(f"interval {interval!r} s is out of range; give 0.002 up to 60 seconds between requests")
        proc = netns.run(
            self.netns,
            ["ping", "-n", "-c", str(count), "-i", str(interval), "-W", f"{wait:g}", target],
            timeout=timeout,
            check=False,
        )
        m = re.search(r"(\d+) packets transmitted, (\d+) (?:packets )?received", proc.stdout)
        if not m:
            raise LabError(f"ping in {self.role} gave no summary: {proc.stderr.strip() or proc.stdout.strip()}")
        rtts = {}
        for line in proc.stdout.splitlines():
            r = re.search(r"icmp_seq=(\d+) .*time=([0-9.]+) ms", line)
            if r and "DUP!" not in line:
                rtts.setdefault(int(r.group(1)), float(r.group(2)))
        return PingResult(sent=int(m.group(1)), received=int(m.group(2)), rtts=tuple(rtts[k] for k in sorted(rtts)))


@dataclass(frozen=True)
class PingResult:
    """What a ping saw: requests sent, replies received, and each reply's round-trip time (ms, in order)."""

    sent: int
    received: int
    rtts: tuple[float, ...] = ()

    @property
    def min(self) -> float | None:
        return min(self.rtts) if self.rtts else None

    @property
    def avg(self) -> float | None:
        return sum(self.rtts) / len(self.rtts) if self.rtts else None

    @property
    def max(self) -> float | None:
        return max(self.rtts) if self.rtts else None

    def __str__(self) -> str:
        if not self.rtts:
            return f"{self.received}/{self.sent} replies"
        return (f"{self.received}/{self.sent} replies, rtt min/avg/max {self.min:.3f}/{self.avg:.3f}/{self.max:.3f} ms")


@dataclass(frozen=True)
class UdpResult:
    """What a bounded UDP flow did, seen from both ends."""

    sent: int
    received: int
    unique: int
    duplicates: int
    missing_count: int
    missing: list[int]
    payloads: list[bytes]
    seconds: float
    max_gap: float = 0.0  # longest silence between two datagrams at the receiver, in seconds
    socket_drops: int = 0  # datagrams the receiving socket's full buffer made its kernel drop (/proc/net/udp)


class UdpFlow:
    """A running UDP flow (receiver and sender started); ``wait()`` gives the result."""

    def __init__(self, receiver: subprocess.Popen[str], sender: subprocess.Popen[str], timeout: float):
        self._receiver, self._sender, self._timeout = receiver, sender, timeout

    def wait(self) -> UdpResult:
        with _stopped_on_error([self._sender, self._receiver]):
            s_out, s_err = self._sender.communicate(timeout=self._timeout + 10)
            r_out, r_err = self._receiver.communicate(timeout=self._timeout + 10)  # closes its stdin: sender done
        try:
            s = json.loads(s_out.strip().splitlines()[-1])
            r = json.loads(r_out.strip().splitlines()[-1])
        except (IndexError, json.JSONDecodeError):
            raise LabError(f"UDP flow failed: sender said {s_err.strip()!r}, receiver said {r_err.strip()!r}") from None
        return UdpResult(
            sent=s["sent"],
            received=r["received"],
            unique=r["unique"],
            duplicates=r["duplicates"],
            missing_count=r["missing_count"],
            missing=r["missing"],
            payloads=[bytes.fromhex(h) for h in r["payloads"]],
            seconds=r["seconds"],
            max_gap=r["max_gap"],
            socket_drops=r.get("socket_drops", 0),
        )


def wait_ready(proc: subprocess.Popen[str], what: str, timeout: float = 10.0) -> None:
    """Wait until a traffic receiver printed ``ready``."""
    assert proc.stdout is not None
    box: dict[str, str] = {}
    t = threading.Thread(target=lambda: box.setdefault("line", proc.stdout.readline()), daemon=True)  # type: ignore[union-attr]
    t.start()
    t.join(timeout)
    if box.get("line", "").strip() != "ready":
        proc.kill()
        err = proc.stderr.read() if proc.stderr else ""
        raise LabError(f"{what} did not start: {err.strip()[-300:] or 'no output'}")


def _tftp_stopped(got: dict[str, Any]) -> str:
    """Where a TFTP read stopped, from what the reading side and the server (if any) said."""
    server = got.get("server")
    if got.get("complete"):
        return "file received" if got.get("ok", True) else "file received, with content other than the server's"
    if server is None:
        return f"no complete answer from the path ({got.get('bytes', 0)} bytes arrived)"
    if server.get("reason") == "no request":
        return "the read request was sent and did not reach the server's socket"
    if server.get("served"):
        return f"the server sent the whole file; the reading side got {got.get('bytes', 0)} bytes of it"
    return (f"the server sent {server.get('bytes', 0)} bytes and then gave up ({server.get('reason')}): "
            f"its blocks or the acknowledgements were lost; the reading side got {got.get('bytes', 0)}")  # fmt: skip


class Lab:
    """Network namespaces joined by veth links.

    ``Lab()`` makes ``client`` (10.77.1.1, fd77:1::1) — ``server``
    (10.77.1.2, fd77:1::2); ``Lab("router")`` makes ``client`` (10.77.1.1) —
    ``router`` (10.77.1.2 / 10.77.2.1, forwarding) — ``server`` (10.77.2.2),
    with fd77:1::/64 and fd77:2::/64 alongside.  Every lab lives in its own
    namespaces, so labs with the same addresses coexist.
    """

    def __init__(self, topology: str = "pair", *, subnet: str = "10.77", subnet6: str = "fd77") -> None:
        if topology not in TOPOLOGIES:
            raise LabError(f"unknown topology {topology!r}; use one of {', '.join(TOPOLOGIES)}")
        _check_subnets(subnet, subnet6)
        self._helper = netns.helper_for_new_lab()  # None: root mode; else the user-namespace helper
        sweep_stale()
        self.topology = topology
        self.subnet = subnet
        self.subnet6 = subnet6
        self.id = f"{os.getpid()}-{next(_LAB_SEQ)}"
        self.hosts: dict[str, Host] = {}
        self._procs: list[subprocess.Popen[str]] = []
        self._sessions: list[Any] = []  # sessions attached in this lab, detached on down()
        self._wires: list[tuple[Host, str, Host, str]] = []  # each veth link: (host, ifname, peer, ifname)
        self._links: dict[frozenset[str], dict[tuple[str, str], Any]] = {}  # conditioned links' ends
        self._closed = False
        self._lock = threading.Lock()
        atexit.register(self.down)
        try:
            self._build()
        except BaseException:
            self.down()
            raise

    # -- building ---------------------------------------------------------
    def _build(self) -> None:
        roles = ("client", "server") if self.topology == "pair" else ("client", "router", "server")
        for role in roles:
            name = f"pktlab-{self.id}-{role}"
            netns.create(name, self._helper)
            self.hosts[role] = Host(role=role, netns=name, lab=self)
        names = {role: h.netns for role, h in self.hosts.items()}
        built = netns.call_in_helper(self._helper, build_hosts, self.topology, names, self.subnet, self.subnet6)
        for role, (addrs, addrs6) in built.items():
            self.hosts[role].addrs.update(addrs)
            self.hosts[role].addrs6.update(addrs6)
        h = self.hosts
        if self.topology == "pair":
            self._wires.append((h["client"], "eth0", h["server"], "eth0"))
        else:
            self._wires += [(h["client"], "eth0", h["router"], "eth0"), (h["router"], "eth1", h["server"], "eth0")]

    # -- access -----------------------------------------------------------
    @property
    def client(self) -> Host:
        return self.hosts["client"]

    @property
    def server(self) -> Host:
        return self.hosts["server"]

    @property
    def router(self) -> Host | None:
        return self.hosts.get("router")

    def __getitem__(self, role: str) -> Host:
        try:
            return self.hosts[role]
        except KeyError:
            raise LabError(f"this lab has no host {role!r}; it has {', '.join(self.hosts)}") from None

    @property
    def closed(self) -> bool:
        return self._closed

    @property
    def sessions(self) -> list[Any]:
        """The sessions attached in this lab (detached by :meth:`down`)."""
        with self._lock:
            return list(self._sessions)

    def track_session(self, session: Any) -> None:
        """Remember an attached session, so that :meth:`down` detaches it first."""
        with self._lock:
            if session not in self._sessions:
                self._sessions.append(session)

    def forget_session(self, session: Any) -> None:
        """Stop tracking a session (it detached by itself)."""
        with self._lock:
            if session in self._sessions:
                self._sessions.remove(session)

    def netns_and_lab(self) -> tuple[str, Lab]:
        """A session attached to a lab lives in its server."""
        return self.server.netns, self

    def link(self, a: str | Host, b: str | Host) -> Any:
        """The link between hosts ``a`` and ``b`` (:class:`pktlab.lab.conditions.Link`): ``.set(delay=...)``."""
        from .conditions import Link, LinkEnd

        self._check_open()
        ra = a.role if isinstance(a, Host) else str(a)
        rb = b.role if isinstance(b, Host) else str(b)
        for host, ifname, peer, peer_if in self._wires:
            if {host.role, peer.role} == {ra, rb} and ra != rb:
                with self._lock:
                    ends = self._links.setdefault(frozenset((ra, rb)), {
                        (host.role, peer.role): LinkEnd(host, ifname, peer, peer_if, f"{host.role} -> {peer.role}"),
                        (peer.role, host.role): LinkEnd(peer, peer_if, host, ifname, f"{peer.role} -> {host.role}"),
                    })  # fmt: skip
                return Link(self, self[ra], self[rb], ends)
        pairs = ", ".join(f"{h.role}-{p.role}" for h, _, p, _ in self._wires)
        raise LabError(f"this lab has no link between {ra!r} and {rb!r}; its links: {pairs}")

    @property
    def links(self) -> list[Any]:
        """Every link of the lab (:class:`pktlab.lab.conditions.Link`), conditioned or not."""
        return [self.link(h.role, p.role) for h, _, p, _ in self._wires]

    def __repr__(self) -> str:
        state = "down" if self._closed else "up"
        hosts = ", ".join(f"{h.role}={h.addr}" for h in self.hosts.values() if h.addrs)
        return f"<Lab {self.id} {self.topology} {state}: {hosts}>"

    def describe(self) -> list[str]:
        """Lines for a person: the lab, each host with its addresses and namespace, the sessions on it."""
        state = "down" if self._closed else "up"
        out = [f"lab {self.id} ({self.topology}), {state}"]
        for h in self.hosts.values():
            addrs = ", ".join(f"{ifname} {a}" for ifname, a in h.addrs.items())
            out.append(f"  {h.role:7s} {addrs}  (namespace {h.netns})")
        with self._lock:
            ends = [e for pair in self._links.values() for e in pair.values()]
        for end in ends:
            if end.conditions.describe() != "no conditions":
                out.append(f"  link {end.label}: {end.conditions.describe()}")
        for s in self.sessions:
            out.append(f"  session {s.name}: queue {s.queue} on {s.netns}, {s.rule.describe()}")
        return out

    # -- traffic ------------------------------------------------------------
    def _track(self, proc: subprocess.Popen[str]) -> None:
        with self._lock:
            self._procs = [p for p in self._procs if p.poll() is None]
            self._procs.append(proc)

    def _traffic(self, host: Host, *args: str) -> subprocess.Popen[str]:
        # traffic.py needs only the standard library: run as a file (-P: nothing prepended to sys.path), it starts
        # in ~30 ms; as "-m pktlab.lab.traffic" Python would import the whole pktlab package first (~0.4 s a program)
        return host.popen([sys.executable, "-P", str(TRAFFIC_PROGRAM), *args], stdin=subprocess.PIPE)

    def start_udp(
        self,
        count: int = 100,
        *,
        size: int = 64,
        rate: float = 20000.0,
        port: int = 9000,
        src: str | Host = "client",
        dst: str | Host = "server",
        timeout: float = 30.0,
        idle: float = 1.0,
        keep: int = 0,
        ipv6: bool = False,
        to: str | None = None,
        segment: int = 0,
    ) -> UdpFlow:
        """Start ``count`` numbered UDP datagrams from ``src`` to ``dst``; see :meth:`udp`."""
        s = src if isinstance(src, Host) else self[src]
        d = dst if isinstance(dst, Host) else self[dst]
        self._check_open()
        _check_udp(count, size, rate, timeout, ipv6)
        _check_port(port)
        if segment:
            fits = isinstance(segment, numbers.Integral) and 8 <= segment < size
            if not fits or segment + (48 if ipv6 else 28) > 1500:
                raise LabError(
                    f"segment {segment!r} does not cut {size}-byte sends into datagrams that fit the lab's links; "
                    f"give 8..{min(size - 1, 1500 - (48 if ipv6 else 28))} bytes"
                )
            count_in = count * -(-size // segment)  # what the receiver counts: every segment is a datagram
        else:
            count_in = count
        started: list[subprocess.Popen[str]] = []
        with _stopped_on_error(started):
            recv = self._traffic(
                d,
                "udp-recv",
                "--bind",
                "::" if ipv6 else "0.0.0.0",
                "--port",
                str(port),
                "--count",
                str(count_in),
                "--timeout",
                str(timeout),
                "--idle",
                str(idle),
                "--keep",
                str(keep),
            )
            started.append(recv)
            wait_ready(recv, f"UDP receiver in {d.role}")
            send = self._traffic(
                s,
                "udp-send",
                "--dst",
                to or (d.addr6 if ipv6 else d.addr),
                "--port",
                str(port),
                "--count",
                str(count),
                "--size",
                str(size),
                "--rate",
                str(rate),
                "--timeout",
                str(timeout),
                "--segment",
                str(segment),
            )
            started.append(send)
        return UdpFlow(recv, send, timeout)

    def udp(self, count: int = 100, **kwargs: Any) -> UdpResult:
        """Send ``count`` numbered UDP datagrams and report what the receiver got.

        Bounded: at most ``count`` datagrams, at ``rate`` per second, for at most
        ``timeout`` seconds; the receiver stops ``idle`` seconds after the last one.
        ``keep=N`` returns the first N payloads as the receiver saw them; ``ipv6=True``
        sends to the destination's IPv6 address, ``to=`` to another address (a NAT's, say)
        while the receiver still runs in ``dst``.  ``segment=N`` makes each send one GSO packet of ``size``
        bytes that the kernel cuts into N-byte datagrams (UDP_SEGMENT) only where it must: a
        queue bound with GSO (the default) sees it whole; the receiver counts the datagrams.
        """
        return self.start_udp(count, **kwargs).wait()

    def tcp(
        self,
        nbytes: int = 1 << 20,
        *,
        port: int = 9001,
        src: str = "client",
        dst: str = "server",
        timeout: float = 30.0,
        to: str | None = None,
    ) -> dict[str, Any]:
        """Send ``nbytes`` over one TCP connection (to ``dst``, or to address ``to``); return what arrived.

        ``received`` bytes, ``sent``, ``seconds``, ``peer`` (the address the receiver saw the connection come
        from: a NAT's, say) and ``stopped`` (why it ended, in words).
        """
        self._check_open()
        s, d = self[src], self[dst]
        _check_count(nbytes, "nbytes", "bytes", 0)
        _check_port(port)
        _check_timeout(timeout)
        with _stopped_on_error([]) as started:
            recv = self._traffic(d, "tcp-recv", "--port", str(port), "--timeout", str(timeout))
            started.append(recv)
            wait_ready(recv, f"TCP receiver in {d.role}")
            send = self._traffic(s, "tcp-send", "--dst", to or d.addr, "--port", str(port), "--bytes", str(nbytes),
                                 "--timeout", str(timeout))  # fmt: skip
            started.append(send)
            s_out, s_err = send.communicate(timeout=timeout + 10)
            r_out, r_err = recv.communicate(timeout=timeout + 10)
        if not r_out.strip():
            raise LabError(f"TCP flow failed: receiver said {r_err.strip()[-300:]!r}, sender {s_err.strip()[-300:]!r}")
        got = json.loads(r_out.strip().splitlines()[-1])
        sent = json.loads(s_out.strip().splitlines()[-1]).get("sent") if s_out.strip() else None
        got["sent"] = sent
        if sent is None:
            why = (s_err.strip().splitlines() or ["no output"])[-1][:200]
            got["stopped"] = f"the sender did not get through ({why})"
        elif got["received"] == nbytes:
            got["stopped"] = "all bytes received"
        else:
            got["stopped"] = f"the sender sent {sent:,} of {nbytes:,} bytes; the receiver got {got['received']:,}"
        return got

    def dns(
        self,
        name: str = "lab.example.",
        *,
        answer: str = "10.77.2.53",
        src: str = "client",
        dst: str = "server",
        to: str | None = None,
        timeout: float = 10.0,
    ) -> dict[str, Any]:
        """One DNS query for ``name`` from ``src`` to a one-shot responder in ``dst`` that answers ``answer``.

        Returns what the querying side saw: the reply's source address, its id check,
        rcode and the A addresses in it; ``server`` says what the responder did (``answered``,
        ``queries``, and ``peers``: the addresses the queries came from).
        """
        self._check_open()
        s, d = self[src], self[dst]
        _check_dns(name, answer)
        _check_timeout(timeout)
        with _stopped_on_error([]) as started:
            server = self._traffic(d, "dns-serve", f"--answer={answer}", "--count", "1", "--timeout", str(timeout))
            started.append(server)
            wait_ready(server, f"DNS responder in {d.role}")
            query = self._traffic(s, "dns-query", "--server", to or d.addr, f"--name={name}", "--timeout", str(timeout))
            started.append(query)
            q_out, q_err = query.communicate(timeout=timeout + 10)
            d_out, _ = server.communicate(timeout=timeout + 10)
        if not q_out.strip():
            raise LabError(f"DNS query failed: {q_err.strip()[-300:]!r}")
        got = json.loads(q_out.strip().splitlines()[-1])
        served = json.loads(d_out.strip().splitlines()[-1]) if d_out.strip() else {"answered": 0, "queries": 0}
        got["server"] = served
        if got["answered"]:
            got["stopped"] = "answer received"
        elif served["answered"]:
            got["stopped"] = "the server answered; its answer did not reach the querying side"
        elif served["queries"]:
            got["stopped"] = "the query reached the server, which did not answer it"
        else:
            got["stopped"] = "the query was sent and did not reach the server's socket"
        return got

    def tftp(
        self,
        size: int = 1300,
        *,
        src: str = "client",
        dst: str = "server",
        timeout: float = 10.0,
        filename: str | None = None,
        serve: bool = True,
    ) -> dict[str, Any]:
        """One TFTP read (RFC 1350) of a ``size``-byte file named ``filename`` (default ``lab.bin``) from ``dst``.

        A one-shot server runs in ``dst`` (``serve=False``: none; something on the path must answer).
        Returns what the reading side got: ``complete``, ``bytes``, ``ok`` (content as served),
        ``seconds`` (request to last block) and ``from`` (the address and port that sent the data);
        with a server, ``server`` says what it did (``served``, or the ``reason`` it did not).
        """
        self._check_open()
        s, d = self[src], self[dst]
        name = "lab.bin" if filename is None else filename
        _check_tftp_name(name)
        _check_count(size, "size", "bytes", 0)
        _check_timeout(timeout)
        server = None
        with _stopped_on_error([]) as started:
            if serve:
                server = self._traffic(d, "tftp-serve", "--size", str(size), "--timeout", str(timeout))
                started.append(server)
                wait_ready(server, f"TFTP server in {d.role}")
            get = self._traffic(s, "tftp-get", "--server", d.addr, f"--file={name}", "--timeout", str(timeout))
            started.append(get)
            g_out, g_err = get.communicate(timeout=timeout + 10)
            if server is not None:  # closing its stdin says the reader is done: a server with no request stops
                s_out, _ = server.communicate(timeout=timeout + 10)
        if not g_out.strip():
            raise LabError(f"TFTP read failed: {g_err.strip()[-300:]!r}")
        got = json.loads(g_out.strip().splitlines()[-1])
        if server is not None:
            got["server"] = json.loads(s_out.strip().splitlines()[-1]) if s_out.strip() else {"served": False}
        got["stopped"] = _tftp_stopped(got)
        return got

    def ping(self, count: int = 3, *, src: str = "client", dst: str = "server", **kwargs: Any) -> PingResult:
        """Ping ``dst`` from ``src`` ``count`` times."""
        self._check_open()
        return self[src].ping(self[dst], count=count, **kwargs)

    def _check_open(self) -> None:
        if self._closed:
            raise LabError("this lab is down; make a new one with pktlab.Lab()")

    # -- teardown -----------------------------------------------------------
    def down(self) -> None:
        """Detach the lab's sessions, kill its processes and remove its namespaces.

        Every step runs even when an earlier one fails; the failures are raised
        together at the end (:class:`~pktlab.errors.TeardownError`).  Safe to call
        again: a second call retries whatever is still there.
        """
        with self._lock:
            self._closed = True
            procs, self._procs = self._procs, []
            sessions, self._sessions = list(self._sessions), []
            ends = [e for pair in self._links.values() for e in pair.values()]
        td = Teardown(f"lab {self.id}")
        for end in ends:  # delay lines first: the packets they hold leave (accepted) before anything goes
            td.step(f"removing the conditions of link {end.label}", end.remove)
        for s in sessions:
            td.step(f"detaching session {s.name}", s.detach)
        for p in procs:
            td.step(f"stopping process {p.pid}", _kill_and_reap, p)
        present = set(netns.list_names())
        for host in reversed(list(self.hosts.values())):
            if host.netns in present:
                td.step(f"removing namespace {host.netns}", netns.remove, host.netns)
        if not td.failures:
            atexit.unregister(self.down)
        td.finish("call lab.down() again, or run `pktlab doctor --clean`")

    def __enter__(self) -> Lab:
        return self

    def __exit__(self, *exc: object) -> None:
        self.down()


def build_hosts(
    topology: str, names: dict[str, str], subnet: str, subnet6: str
) -> dict[str, tuple[dict[str, str], dict[str, str]]]:
    """Bring up the lab's namespaces (made already): loopback, links, addresses, routes, forwarding.

    Runs where the namespaces are made (a thread of a root process, or the user-namespace
    helper) and returns each role's IPv4 and IPv6 addresses by interface.
    """
    out: dict[str, tuple[dict[str, str], dict[str, str]]] = {role: ({}, {}) for role in names}
    for name in names.values():
        netns.call_in(name, _loopback_up)
        # no duplicate address detection: IPv6 (link-local included) works as soon as a link is up
        netns.run(name, ["sysctl", "-qw", "net.ipv6.conf.all.accept_dad=0", "net.ipv6.conf.default.accept_dad=0"])
    links = [(1, "client", "eth0", "server", "eth0")] if topology == "pair" else [
        (1, "client", "eth0", "router", "eth0"), (2, "router", "eth1", "server", "eth0")]  # fmt: skip
    for net, a, a_if, b, b_if in links:
        _link(names, out, subnet, subnet6, net, a, a_if, b, b_if)
    if topology == "router":
        _route(names["client"], f"{subnet}.1.2", f"{subnet6}:1::2")
        _route(names["server"], f"{subnet}.2.1", f"{subnet6}:2::1")
        netns.run(names["router"], ["sysctl", "-qw", "net.ipv4.ip_forward=1", "net.ipv6.conf.all.forwarding=1"])
    _wait_links_up(names, out)
    return out


def _loopback_up() -> None:
    from pyroute2 import IPRoute

    with IPRoute() as ip:
        ip.link("set", index=ip.link_lookup(ifname="lo")[0], state="up")


def _link(names: dict[str, str], out: dict[str, tuple[dict[str, str], dict[str, str]]], subnet: str,
          subnet6: str, net: int, a: str, a_if: str, b: str, b_if: str) -> None:  # fmt: skip
    """A veth link on subnet ``net``: ``a`` gets host number 1, ``b`` 2 (IPv4 /24 and IPv6 /64)."""
    from pyroute2 import NetNS

    with NetNS(names[a]) as ns:
        ns.link("add", ifname=a_if, kind="veth", peer={"ifname": b_if, "net_ns_fd": names[b]})
    for role, ifname, num in ((a, a_if, 1), (b, b_if, 2)):
        v4, v6 = f"{subnet}.{net}.{num}", f"{subnet6}:{net}::{num}"
        with NetNS(names[role]) as ns:
            idx = ns.link_lookup(ifname=ifname)[0]
            ns.addr("add", index=idx, address=v4, prefixlen=24)
            ns.addr("add", index=idx, address=v6, prefixlen=64, flags=IFA_F_NODAD)
            ns.link("set", index=idx, state="up")
        out[role][0][ifname] = v4
        out[role][1][ifname] = v6
        # neighbour solicitations retried after 100 ms, not 1 s: the first one can leave before the
        # other end of a new veth answers, and a fresh lab's first IPv6 datagrams would wait a second
        netns.run(names[role], ["sysctl", "-qw", f"net.ipv6.neigh.{ifname}.retrans_time_ms=100"])


def _route(name: str, gateway: str, gateway6: str) -> None:
    from pyroute2 import NetNS

    with NetNS(name) as ns:
        ns.route("add", dst="default", gateway=gateway)
        ns.route("add", dst="default", gateway=gateway6, family=socket.AF_INET6)


def _wait_links_up(names: dict[str, str], out: dict[str, tuple[dict[str, str], dict[str, str]]],
                   timeout: float = 3.0) -> None:  # fmt: skip
    """Wait until the kernel reports every lab link UP (carrier changes reach IPv6 with a delay)."""
    from pyroute2 import NetNS

    end = time.monotonic() + timeout
    for role, name in names.items():
        with NetNS(name) as ns:
            for ifname in out[role][0]:
                while True:
                    link = ns.link("get", index=ns.link_lookup(ifname=ifname)[0])[0]
                    if link.get("state") == "up" and link.get_attr("IFLA_OPERSTATE") == "UP":
                        break
                    if time.monotonic() > end:
                        raise LabError(f"link {ifname} of {role} did not come up within {timeout} s")
                    time.sleep(0.01)


@contextmanager
def _stopped_on_error(procs: list[subprocess.Popen[str]]) -> Iterator[list[subprocess.Popen[str]]]:
    """Kill (by PID) every program appended to ``procs`` if the block ends in an exception, Ctrl-C included.

    An interrupted ``lab.udp(...)`` must not leave its sender sending and its receiver holding
    the port for the next cell.
    """
    try:
        yield procs
    except BaseException:
        for p in procs:
            try:
                _kill_and_reap(p)
            except Exception:  # the first exception is the one to report
                pass
        raise


def _check_subnets(subnet: str, subnet6: str) -> None:
    """Refuse prefixes that do not make addresses (``subnet`` "10.77" gives 10.77.1.1 ...)."""
    import ipaddress

    try:
        ipaddress.IPv4Address(f"{subnet}.255.255")
    except ValueError:
        raise LabError(f"subnet {subnet!r} is not the first two numbers of an IPv4 address (like '10.77')") from None
    try:
        ipaddress.IPv6Address(f"{subnet6}:ffff::ffff")
    except ValueError:
        raise LabError(f"subnet6 {subnet6!r} is not the first group of an IPv6 address (like 'fd77')") from None


def _check_dns(name: Any, answer: Any) -> None:
    """Refuse a query name or an answer that cannot be sent (before any program starts)."""
    import ipaddress

    try:
        ipaddress.IPv4Address(answer)
    except ValueError:
        raise LabError(f"answer {answer!r} is not an IPv4 address; give one like '10.77.2.53'") from None
    if not isinstance(name, str) or not name.strip(".") or "\0" in name:
        raise LabError(f"name {name!r} is not a DNS name; give one like 'lab.example.'")
    try:
        labels = name.rstrip(".").encode("ascii").split(b".")
    except UnicodeEncodeError:
        raise LabError(f"name {name!r} is not ASCII; give its IDNA form (name.encode('idna').decode())") from None
    if len(name.rstrip(".")) > 253 or any(not 0 < len(label) <= 63 for label in labels):
        raise LabError(f"name {name!r} does not fit DNS (labels of 1..63 bytes, 253 in all); give a shorter one")


def _check_tftp_name(name: Any) -> None:
    """Refuse a TFTP file name that cannot be sent in a read request."""
    if not isinstance(name, str) or not name or "\0" in name:
        raise LabError(f"filename {name!r} cannot be sent: TFTP names are non-empty text without NUL bytes")
    if len(name.encode()) > 500:
        raise LabError(f"filename of {len(name.encode())} bytes does not fit a TFTP request (512 bytes); shorten it")


def _check_port(port: Any) -> None:
    if not isinstance(port, numbers.Integral) or isinstance(port, bool) or not 1 <= port <= 65535:
        raise LabError(f"port {port!r} is not a port a flow can use; give 1..65535")


def _check_timeout(timeout: Any) -> None:
    """Every flow is bounded in time: a timeout above 0, up to an hour."""
    if isinstance(timeout, bool) or not isinstance(timeout, numbers.Real) or not 0 < timeout <= 3600:
        raise LabError(f"timeout {timeout!r} s is out of range; give above 0 up to 3600 seconds")


def _check_count(count: Any, what: str, of: str, least: int = 1) -> None:
    if not isinstance(count, numbers.Integral) or isinstance(count, bool) or count < least:
        raise LabError(f"{what} {count!r} is not a number of {of}; give an integer of at least {least}")


def _check_udp(count: Any, size: Any, rate: Any, timeout: Any, ipv6: bool) -> None:
    """Refuse a UDP flow that could not do what it says (before anything starts)."""
    most = 65527 if ipv6 else 65507  # the largest UDP payload in one IPv6 / IPv4 packet
    _check_count(count, "count", "datagrams")
    if not isinstance(size, numbers.Integral) or isinstance(size, bool) or not 4 <= size <= most:
        raise LabError(f"size {size!r} does not fit a datagram; give 4..{most:,} bytes (4 hold the sequence number)")
    if isinstance(rate, bool) or not isinstance(rate, numbers.Real) or not rate >= 0:
        raise LabError(f"rate {rate!r} is not a number of datagrams per second; give 0 (as fast as possible) or more")
    _check_timeout(timeout)


def _kill_and_reap(p: subprocess.Popen[str]) -> None:
    """Kill a lab process by PID (if it still runs) and wait for it."""
    if p.poll() is None:
        p.kill()
        try:
            p.wait(timeout=5)
        except subprocess.TimeoutExpired:
            raise LabError(f"process {p.pid} did not end within 5 s of SIGKILL") from None


def wait_until(pred: Any, timeout: float = 5.0, interval: float = 0.02) -> bool:
    """Poll ``pred()`` until true or ``timeout`` seconds pass."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if pred():
            return True
        time.sleep(interval)
    return bool(pred())
