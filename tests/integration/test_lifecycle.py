"""Attach, detach, re-attach and teardown on the real kernel: never a half state, nothing left behind."""

from __future__ import annotations

import socket
import threading

import numpy as np
import pytest

import pktlab
from pktlab import Lab, TeardownError
from pktlab.kernel import netns
from pktlab.lab.network import wait_until
from tests.conftest import needs_live, other_process, pktlab_rules

pytestmark = needs_live


def test_reattach_reads_again(lab: Lab, queue_num: int) -> None:
    s = pktlab.attach(queue_num, rule="-p udp --dport 9000", netns=lab.server, default="drop")
    try:
        assert lab.udp(20, idle=0.3).received == 0 and s.record.n == 20
        s.detach()
        assert not pktlab_rules(lab.server.netns) and s.kernel_counters() is None
        s.attach()
        assert s.status().attached and len(pktlab_rules(lab.server.netns)) == 1
        # a reader that exits at once would leave --queue-bypass to pass all 50 unseen
        r = lab.udp(50, idle=0.3)
        assert r.received == 0, "re-attached session let datagrams through: its reader is not reading"
        assert s.record.n == 70 and s.record.counts[pktlab.DROP] == 70
        assert s.status().passed_unseen == 0
    finally:
        s.detach()
    assert not pktlab_rules(lab.server.netns)


def test_a_handler_can_detach_its_own_session(lab: Lab, queue_num: int) -> None:
    """``s.detach()`` inside a handler (stop after a few packets) detaches fully: the packet it is on gets the
    handler's verdict, the rest of what was queued theirs, the reading thread unbinds the queue and ends once
    the handler returns, and the session attaches again (it once failed: the reader cannot wait for itself)."""
    s = pktlab.attach(queue_num, rule="-p udp --dport 9000", netns=lab.server)
    seen: list[int] = []
    try:

        @s.handler
        def stop_at_the_third(pkt):
            seen.append(int.from_bytes(pkt.udp.payload[:4], "big"))
            if len(seen) == 3:
                s.detach()
                return pkt.drop()
            return None

        r = lab.udp(10, rate=200, idle=1.0)
        assert not s.attached and not s.errors and s.status().internal_errors == 0
        assert r.unique == 9 and r.missing == [seen[2]]  # every other datagram passed, queued or not
        assert not pktlab_rules(lab.server.netns)
        assert wait_until(lambda: s.kernel_counters() is None)  # unbound once the handler returned
        assert wait_until(lambda: not [t for t in threading.enumerate() if t.name == f"pktlab-queue-{queue_num}"])
        seen.clear()
        flow = lab.start_udp(100, rate=1000, idle=1.0)  # datagrams already coming while it attaches again: the
        s.attach()  # handler may detach it before attach() has finished (which then detaches it), or after
        r = flow.wait()
        assert len(seen) >= 3 and r.unique == 99 and seen[2] in r.missing
        assert not s.attached and not s.errors and not pktlab_rules(lab.server.netns)
        assert wait_until(lambda: s.kernel_counters() is None)
    finally:
        s.detach()
    assert not pktlab_rules(lab.server.netns)


def test_a_handler_that_detaches_while_attach_is_under_way_detaches_once_it_is_done(
    lab: Lab, queue_num: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A packet can reach the handlers once the queue's rule is in, before attach() has finished; a detach()
    there is done by attach() when it has (not half way through, leaving what it installs after)."""
    s = pktlab.attach(queue_num, rule="-p udp --dport 9000", netns=lab.server)
    s.detach()
    detached = threading.Event()

    @s.handler
    def stop_at_once(pkt):
        if detached.is_set():
            return None  # packets that came before attach() got to its detach: the default verdict
        s.detach()
        detached.set()
        return pkt.drop()

    track = lab.track_session

    def track_after_the_handler(session) -> None:  # attach()'s last step waits for the handler's detach
        assert detached.wait(10)
        track(session)

    monkeypatch.setattr(lab, "track_session", track_after_the_handler)
    flow = lab.start_udp(50, rate=500, idle=1.0)
    try:
        s.attach()
        assert not s.attached and not pktlab_rules(lab.server.netns) and s not in lab.sessions
        r = flow.wait()
        assert r.unique == 49 and not s.errors and s.record.counts[pktlab.DROP] == 1
        assert wait_until(lambda: s.kernel_counters() is None)
    finally:
        s.detach()


def test_a_handler_can_take_its_lab_down(lab: Lab, queue_num: int, monkeypatch: pytest.MonkeyPatch) -> None:
    """``lab.down()`` inside a handler: the session detaches, the namespaces go, and the reading thread, which
    finishes after them, ends without an error (it once failed looking for its namespace to drain it)."""
    failed: list[BaseException] = []
    monkeypatch.setattr(threading, "excepthook", lambda args: failed.append(args.exc_value))
    s = pktlab.attach(queue_num, rule="-p udp --dport 9000", netns=lab.server)
    seen = []

    @s.handler
    def take_it_down(pkt):
        seen.append(pkt.id)
        if len(seen) == 1:
            lab.down()

    with pytest.raises(pktlab.LabError):  # the flow's own programs went with their namespaces
        lab.udp(20, rate=200, timeout=5)
    # (the flow may fail before the handler's lab.down() has returned: the reading thread ends after it)
    assert wait_until(lambda: not [t for t in threading.enumerate() if t.name == f"pktlab-queue-{queue_num}"])
    names = [h.netns for h in lab.hosts.values()]
    assert lab.closed and not s.attached and not set(names) & set(netns.list_names())
    assert not failed and not s.errors and s.status().internal_errors == 0


def test_attach_twice_is_refused_and_changes_nothing(lab: Lab, queue_num: int) -> None:
    s = pktlab.attach(queue_num, rule="-p udp --dport 9000", netns=lab.server)
    try:
        with pytest.raises(pktlab.SessionError, match="already attached"):
            s.attach()
        assert lab.udp(10).unique == 10 and s.record.n == 10
    finally:
        s.detach()


def test_detach_releases_held_packets_even_when_removing_rules_fails(
    lab: Lab, queue_num: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    s = pktlab.attach(queue_num, rule="-p udp --dport 9000", netns=lab.server)
    s.hold(lambda pkt: True)
    flow = lab.start_udp(5, idle=1.0)
    assert wait_until(lambda: len(s.held) == 5)

    def refuse() -> int:
        raise pktlab.RuleError("iptables refused (injected)")

    monkeypatch.setattr(s.rules, "remove", refuse)
    with pytest.raises(TeardownError, match="removing its rules: iptables refused") as err:
        s.detach()
    assert len(err.value.failures) == 1
    r = flow.wait()
    assert r.unique == 5, "held packets were not given the default verdict"  # not dropped at unbind
    assert s.held.released == 5 and not s.attached and s.kernel_counters() is None


def test_lab_down_removes_everything_it_can_when_a_detach_fails(queue_num: int) -> None:
    lab = Lab()
    names = [h.netns for h in lab.hosts.values()]
    s = pktlab.attach(queue_num, rule="-p udp --dport 9000", netns=lab.server)
    real_detach = s.detach

    def failing_detach() -> None:
        real_detach()
        raise RuntimeError("detach failed (injected)")

    s.detach = failing_detach  # type: ignore[method-assign]
    receiver = lab.server.popen(["sleep", "30"])
    with pytest.raises(TeardownError, match="detaching session .*detach failed") as err:
        lab.down()
    assert len(err.value.failures) == 1
    assert not [n for n in names if n in netns.list_names()], "namespaces kept after a failed detach"
    assert receiver.poll() is not None, "the lab's process still runs"
    lab.down()  # again: nothing left to do, no error
    assert lab.closed


def test_magic_close_takes_every_lab_down_when_a_detach_fails(queue_num: int) -> None:
    from pktlab.notebook.magic import PktlabMagicState

    state = PktlabMagicState(None)
    lab = state.run_line("lab up")
    names = [h.netns for h in lab.hosts.values()]
    s = state.run_line(f"attach {queue_num} --rule '-p udp --dport 9000'")
    real_detach = s.detach

    def failing_detach() -> None:
        real_detach()
        raise RuntimeError("detach failed (injected)")

    s.detach = failing_detach  # type: ignore[method-assign]
    with pytest.raises(TeardownError, match="detach failed"):
        state.close()
    assert not [n for n in names if n in netns.list_names()]
    assert state.sessions == {} and state.labs == {}


def test_ipv6_extension_headers_and_fragments_in_the_record(lab: Lab, queue_num: int) -> None:
    from scapy.layers.inet import UDP
    from scapy.layers.inet6 import IPv6, IPv6ExtHdrDestOpt, IPv6ExtHdrFragment, fragment6

    src, dst = lab.client.addr6, lab.server.addr6
    s = pktlab.attach(queue_num, rule="-p udp", family="ipv6", netns=lab.server)  # ip6tables walks the ext headers
    seen: list[tuple[int | None, int]] = []

    @s.handler
    def look(pkt):
        seen.append((pkt.udp.dport if pkt.udp is not None else None, len(pkt)))

    try:
        with_ext = IPv6(src=src, dst=dst) / IPv6ExtHdrDestOpt() / UDP(sport=4000, dport=9000) / b"ext"
        big = IPv6(src=src, dst=dst) / IPv6ExtHdrFragment() / UDP(sport=4001, dport=9001) / bytes(3000)
        frags = fragment6(big, 1280)
        assert len(frags) >= 3
        # IPv6 header included (IPPROTO_RAW), from a socket in the client's namespace
        with netns.socket_in(lab.client.netns, socket.AF_INET6, socket.SOCK_RAW, socket.IPPROTO_RAW) as sock:
            for p in [with_ext, *frags]:
                sock.sendto(bytes(p), (dst, 0))
        assert wait_until(lambda: s.record.n >= 1 + len(frags))
        df = s.df
        udp = df[df["proto"] == "udp"]
        assert list(udp["dport"].iloc[:2]) == [9000, 9001], df[["proto", "sport", "dport", "size"]]
        assert list(udp["sport"].iloc[:2]) == [4000, 4001]
        later = udp.iloc[2:]
        assert len(later) == len(frags) - 1 and later["dport"].isna().all() and later["sport"].isna().all()
        assert [d for d, _ in seen if d is not None] == [9000, 9001]  # later fragments: pkt.udp is None
    finally:
        s.detach()


def test_ctrl_c_during_a_flow_stops_its_programs(lab: Lab) -> None:
    import signal
    import threading

    def interrupt(*_: object) -> None:
        raise KeyboardInterrupt

    old = signal.signal(signal.SIGALRM, interrupt)
    timer = threading.Timer(0.5, lambda: signal.pthread_kill(threading.main_thread().ident, signal.SIGALRM))
    timer.start()  # Ctrl-C half a second into a flow that would take 100 s
    try:
        with pytest.raises(KeyboardInterrupt):
            lab.udp(100_000, rate=1000)
    finally:
        timer.cancel()
        signal.signal(signal.SIGALRM, old)
    assert netns.pids_in(lab.client.netns) == [] and netns.pids_in(lab.server.netns) == []
    assert lab.udp(10).unique == 10  # the port is free again: running the cell again works


@other_process
def test_cleaning_kills_what_a_killed_process_left_running_in_its_lab(tmp_path) -> None:
    import subprocess
    import sys

    code = (
        "import pktlab, sys\n"
        "lab = pktlab.Lab()\n"
        "lab.start_udp(10**6, rate=1000, timeout=300)\n"
        "print(lab.client.netns, lab.server.netns, flush=True)\n"
        "sys.stdin.read()\n"
    )
    proc = subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    names = proc.stdout.readline().split()
    assert len(names) == 2
    assert wait_until(lambda: all(netns.pids_in(n) for n in names)), "no sender and receiver in the lab"
    # the lab's own programs, by PID: other pktlab traffic on the machine (a notebook's lab, another test
    # run) is not this lab's and must not count (a check by command line alone once failed on it)
    programs = {pid: _cmdline(pid) for n in names for pid in netns.pids_in(n)}
    assert programs and all(b"pktlab/lab/traffic.py" in cmd for cmd in programs.values()), programs
    proc.kill()  # kill -9: no atexit, no teardown
    proc.wait(10)
    out = subprocess.run([sys.executable, "-m", "pktlab", "doctor", "--clean"], capture_output=True, text=True)
    assert all(n not in netns.list_names() for n in names), out.stdout
    assert wait_until(lambda: not _still_running(programs), timeout=10), (
        f"the killed lab's sender or receiver still runs: {_still_running(programs)}"
    )


def _cmdline(pid: int) -> bytes:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read()
    except OSError:
        return b""


def _still_running(programs: dict[int, bytes]) -> list[int]:
    """Those of ``programs`` (PID: command line) that still run: not gone, not a zombie, not a reused PID."""
    out = []
    for pid, cmd in programs.items():
        try:
            with open(f"/proc/{pid}/stat") as f:
                state = f.read().rpartition(")")[2].split()[0]
        except OSError:
            continue
        if state != "Z" and _cmdline(pid) == cmd:
            out.append(pid)
    return out


def test_bad_lab_and_traffic_arguments_are_one_sentence() -> None:
    with pytest.raises(pktlab.LabError, match="subnet '999.1' is not"):
        Lab(subnet="999.1")
    with pytest.raises(pktlab.LabError, match="subnet6 'xyz!' is not"):
        Lab(subnet6="xyz!")
    with Lab() as lab:
        with pytest.raises(pktlab.LabError, match="count -5 is not a number of datagrams"):
            lab.udp(-5)
        with pytest.raises(pktlab.LabError, match="size 70000 does not fit a datagram"):
            lab.udp(5, size=70000)
        # refused before any program starts (port 0 sent nothing and said nothing; 70000 failed with a
        # traceback's text; a negative byte count ran; a timeout of 0 failed with a socket's error)
        for call, said in (
            (lambda: lab.udp(3, port=0), "port 0 is not a port a flow can use; give 1..65535"),
            (lambda: lab.udp(3, port=70000), "port 70000 is not a port a flow can use"),
            (lambda: lab.tcp(-5), "nbytes -5 is not a number of bytes; give an integer of at least 0"),
            (lambda: lab.tcp(100, timeout=0), "timeout 0 s is out of range; give above 0 up to 3600 seconds"),
            (lambda: lab.udp(3, timeout=86400), "timeout 86400 s is out of range; give above 0 up to 3600 seconds"),
            (lambda: lab.udp(3, rate="fast"), "rate 'fast' is not a number of datagrams per second; give 0"),
            (lambda: lab.tcp(100, port=-1), "port -1 is not a port"),
            (lambda: lab.dns(timeout=-1), "timeout -1 s is out of range"),
            (lambda: lab.tftp(size=-1), "size -1 is not a number of bytes"),
            (lambda: lab.ping(0), "count 0 is not a number of echo requests; give an integer of at least 1"),
            (lambda: lab.ping(2, interval=0), "interval 0 s is out of range"),
        ):
            with pytest.raises(pktlab.LabError) as refused:
                call()
            assert said in str(refused.value) and "\n" not in str(refused.value)
        with pytest.raises(pktlab.SessionError, match="attach\\(\\) has no option colour; use rule, hook, "):
            pktlab.attach(1, netns=lab.server, colour="red")
        with pytest.raises(pktlab.SessionError, match="max_bytes 0 must be a block size"):
            pktlab.netpipe(lab, max_bytes=0)
        assert netns.pids_in(lab.client.netns) == [] and lab.udp(3).unique == 3
        # numbers from numpy or pandas (a slider's value, a DataFrame's cell) are numbers too
        assert lab.udp(np.int64(3), port=np.int32(9001), size=np.int64(40), rate=np.float64(1e4),
                       timeout=np.int64(10)).unique == 3  # fmt: skip
        assert lab.ping(np.int64(2), interval=np.float64(0.01)).received == 2
