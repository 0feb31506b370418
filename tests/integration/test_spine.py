"""The spine on the real kernel: NFQUEUE in lab namespaces, real datagrams and pings."""

from __future__ import annotations

import os
import threading
import time

import pytest

import pktlab
from pktlab import Lab
from pktlab.kernel import netns, privilege
from pktlab.lab.network import wait_until
from tests.conftest import needs_live, needs_root, other_process, pktlab_rules, root_only

pytestmark = needs_live


def test_drop_handler_stops_udp_and_ping(lab: Lab, queue_num: int) -> None:
    s = pktlab.attach(queue_num, rule="-p udp --dport 9000", netns=lab.server)
    p = pktlab.attach(queue_num + 1000, rule="-p icmp", netns=lab.server)
    try:
        assert lab.udp(50).unique == 50
        assert lab.ping(3).received == 3

        @s.handler
        def drop_all(pkt):
            return pkt.drop()

        @p.handler
        def drop_pings(pkt):
            if pkt.icmp and pkt.icmp.type == 8:
                return pkt.drop()
            return None

        assert lab.udp(50, idle=0.5).received == 0
        assert lab.ping(3).received == 0
        assert s.record.counts[pktlab.DROP] == 50
        assert p.record.counts[pktlab.DROP] == 3

        s.remove_handler("drop_all")
        p.enable("drop_pings", False)
        assert lab.udp(20).unique == 20
        assert lab.ping(2).received == 2
    finally:
        s.detach()
        p.detach()


def test_a_live_packets_time_is_the_wall_clock_time_it_reached_the_chain(lab: Lab, queue_num: int) -> None:
    """``pkt.time`` and the record's ``time``: seconds since the epoch when the packet reached the chain, with and
    without a handler (both paths read one clock, CLOCK_MONOTONIC, and add the wall clock's offset to it)."""
    s = pktlab.attach(queue_num, rule="-p udp --dport 9000", netns=lab.server)
    seen: list[float] = []
    try:
        t0 = time.time()
        assert lab.udp(5, idle=0.3).unique == 5
        s.add_handler(lambda pkt: seen.append(pkt.time), "when")
        assert lab.udp(5, idle=0.3).unique == 5
        t1 = time.time()
        entries = list(s.record)
        assert len(entries) == 10 and len(seen) == 5
        assert all(t0 <= e.time <= t1 for e in entries), (t0, [e.time for e in entries], t1)
        assert [e.time for e in entries[5:]] == seen
    finally:
        s.detach()


def test_modifying_handler_rewrites_payload_and_fixes_checksums(lab: Lab, queue_num: int) -> None:
    s = pktlab.attach(queue_num, rule="-p udp --dport 9000", netns=lab.server)
    try:

        @s.handler
        def shout(pkt):
            seq = pkt.udp.payload[:4]
            pkt.udp.payload = seq + b"REWRITTEN BY PKTLAB, LONGER THAN BEFORE"
            return pkt.accept()

        r = lab.udp(10, size=16, keep=10)
        # the receiver's kernel drops UDP with a wrong checksum or length: arrival proves both were fixed
        assert r.unique == 10
        assert all(p[4:] == b"REWRITTEN BY PKTLAB, LONGER THAN BEFORE" for p in r.payloads)
        assert s.df["modified"].all()
    finally:
        s.detach()


def test_a_rewrite_that_leaves_a_header_unreadable_goes_as_written_and_is_said(
    lab: Lab, queue_num: int, capfd: pytest.CaptureFixture[str]
) -> None:
    """``pkt.ip.ihl = 15`` on a 32-byte datagram: its headers cannot be fixed up, so it goes on as the handler
    wrote it (the server's kernel drops it), counted and said once in the cell; it once went silently.  In a
    lab of user-namespace mode the host sends rewritten packets, and its kernel refuses this one: the handler's
    failure with the reason, and the error verdict (accept) for the datagram as it arrived; it was counted as
    pktlab's internal error."""
    s = pktlab.attach(queue_num, rule="-p udp --dport 9000", netns=lab.server)
    try:

        @s.handler
        def malformed(pkt):
            if int.from_bytes(pkt.udp.payload[:4], "big") in (1, 2):
                pkt.ip.ihl = 15
            return None

        r = lab.udp(4, size=4, idle=0.5)
        st = s.status()
        err = capfd.readouterr().err
        assert st.internal_errors == 0, st
        if privilege.current().name == "root":  # the kernel takes the queue's new payload as it is
            assert r.unique == 2 and r.missing == [1, 2] and not s.errors
            assert st.unfixed_rewrites == 2 and "2 rewritten packet(s) sent as written" in str(st)
            assert "its IPv4 header length field (ihl 15) says 60 bytes, more than the packet's 32" in (
                st.last_unfixed_rewrite or ""
            )
            assert [e.modified for e in s.record] == [False, True, True, False]
            assert err.count("a rewritten packet was sent as written") == 1, err
        else:
            assert r.unique == 4 and st.unfixed_rewrites == 0 and len(s.errors) == 2
            assert "the kernel refused its header as invalid" in str(s.errors[0])
            assert [e.verdict for e in s.record] == ["accept"] * 4
            assert [e.error is not None for e in s.record] == [False, True, True, False]
            assert err.count("handler 'malformed' failed (SendError") == 1, err
    finally:
        s.detach()


def test_mark_is_set_with_the_verdict(lab: Lab, queue_num: int) -> None:
    # a rule in a later hook drops marked packets: the mark must reach the kernel with the verdict
    lab.server.run(
        ["iptables", "-A", "INPUT", "-p", "udp", "--dport", "9000", "-m", "mark", "--mark", "7", "-j", "DROP"]
    )
    s = pktlab.attach(queue_num, rule="-p udp --dport 9000", hook="PREROUTING", netns=lab.server)
    try:

        @s.handler
        def mark_even(pkt):
            seq = int.from_bytes(pkt.udp.payload[:4], "big")
            return pkt.accept(mark=7) if seq % 2 == 0 else None

        r = lab.udp(20, idle=0.5)
        assert r.unique == 10
    finally:
        s.detach()


def test_rewrites_marks_drops_and_accepts_interleaved_in_one_write(lab: Lab, queue_num: int) -> None:
    # packets queue up while paused, so the reader drains them in bursts and the dispatcher
    # writes verdicts of all four kinds back in shared buffers: each must still act on its own packet
    lab.server.run(
        ["iptables", "-A", "INPUT", "-p", "udp", "--dport", "9000", "-m", "mark", "--mark", "5", "-j", "DROP"]
    )
    s = pktlab.attach(queue_num, rule="-p udp --dport 9000", hook="PREROUTING", netns=lab.server)
    try:

        @s.handler
        def mixed(pkt):
            seq = int.from_bytes(pkt.udp.payload[:4], "big")
            kind = seq % 4
            if kind == 0:
                pkt.udp.payload = pkt.udp.payload[:4] + b"grown:" + bytes(seq % 50)
                return pkt.accept()
            if kind == 1:
                return pkt.drop()
            if kind == 2:
                return pkt.accept(mark=5)
            return None

        s.pause()
        count = 2000
        flow = lab.start_udp(count, rate=20000, idle=1.0, keep=count)
        deadline = time.monotonic() + 10
        while s.kernel_counters().queue_total < count and time.monotonic() < deadline:  # type: ignore[union-attr]
            time.sleep(0.05)
        writes_before = s.dispatcher.writes
        s.resume()
        r = flow.wait()
        assert sorted(int.from_bytes(p[:4], "big") % 4 for p in r.payloads) == [0] * 500 + [3] * 500
        for p in r.payloads:
            seq = int.from_bytes(p[:4], "big")
            if seq % 4 == 0:
                assert p[4:] == b"grown:" + bytes(seq % 50)
        assert len(s.record) == count
        assert s.dispatcher.writes - writes_before < count // 4  # verdicts really were written together
    finally:
        s.detach()


def test_hot_swap_50_times_under_20000_datagrams_loses_none(lab: Lab, queue_num: int) -> None:
    s = pktlab.attach(queue_num, rule="-p udp --dport 9000", netns=lab.server)
    try:
        count = 20_000
        flow = lab.start_udp(count, rate=8000, timeout=60, idle=2.0)
        swapped = 0
        deadline = time.monotonic() + 30
        while swapped < 50 and time.monotonic() < deadline:
            tag = swapped

            def swap(pkt, tag=tag):
                return None if tag % 2 else pkt.accept()

            s.add_handler(swap, "swap")
            swapped += 1
            time.sleep(0.03)
        r = flow.wait()
        assert swapped == 50
        assert r.sent == count
        assert r.unique == count, f"missing {r.missing_count}: {r.missing[:10]}"
        assert r.duplicates == 0
        ids = [e.id for e in s.record]
        assert len(ids) == count and len(set(ids)) == count  # each packet verdicted exactly once
        k = s.kernel_counters()
        assert k is not None and k.queue_dropped == 0 and k.user_dropped == 0
        assert set(s.df["handler"].dropna()) == {"swap"}
    finally:
        s.detach()


def test_raising_handler_keeps_traffic_flowing(lab: Lab, queue_num: int) -> None:
    s = pktlab.attach(queue_num, rule="-p udp --dport 9000", netns=lab.server)
    try:

        @s.handler
        def flaky(pkt):
            if int.from_bytes(pkt.udp.payload[:4], "big") % 10 == 9:
                raise RuntimeError("tenth")
            return None

        r = lab.udp(1000, rate=5000)
        assert r.unique == 1000  # error verdict is accept by default
        assert len(s.errors) == 100
        assert s.record.errors == 100
        e = s.errors[0]
        assert e.handler == "flaky" and "RuntimeError: tenth" in e.error and "udp" in e.packet
        assert "raise RuntimeError" in e.traceback
        assert "flaky" in str(s.status()) and "100 errors" in str(s.status())
    finally:
        s.detach()


def test_a_handler_reading_a_layer_the_packet_lacks_is_told_which_layer_was_none(
    lab: Lab, queue_num: int, capfd: pytest.CaptureFixture[str]
) -> None:
    # a student's first handler: pkt.tcp.dport on UDP packets.  Python says only "'NoneType' object has no
    # attribute 'dport'"; the failure names pkt.tcp, says what the packet is instead and how to test for it
    s = pktlab.attach(queue_num, rule="-p udp --dport 9000", netns=lab.server)
    try:

        @s.handler
        def web_only(pkt):
            return pkt.drop() if pkt.tcp.dport != 80 else None

        r = lab.udp(5, idle=0.5)
        assert r.unique == 5  # the error verdict, accept: nothing lost
        hint = (
            "'NoneType' object has no attribute 'dport' — pkt.tcp is None: this packet has no TCP header (it is "
            "UDP); test `if pkt.tcp is not None:` before reading its fields"
        )
        assert len(s.errors) == 5 and all(hint in e.error for e in s.errors), s.errors[0].error
        assert all(e.traceback.endswith(hint) for e in s.errors)
        assert f"handler 'web_only' failed (AttributeError: {hint})" in capfd.readouterr().err
    finally:
        s.detach()


def test_error_verdict_drop_and_bad_return(lab: Lab, queue_num: int) -> None:
    s = pktlab.attach(queue_num, rule="-p udp --dport 9000", netns=lab.server, on_error="drop")
    try:
        s.add_handler(lambda pkt: 42, "bad")
        r = lab.udp(10, idle=0.5)
        assert r.received == 0
        assert "returned 42" in s.errors[0].error
    finally:
        s.detach()


def test_detach_and_lab_down_leave_nothing_even_when_the_body_raises(queue_num: int) -> None:
    names: list[str] = []
    with pytest.raises(ZeroDivisionError), Lab("router") as lab:
        names = [h.netns for h in lab.hosts.values()]
        pktlab.attach(queue_num, rule="-p udp", hook="FORWARD", netns=lab.router)
        pktlab.attach(queue_num + 1, rule="-p udp", hook="PREROUTING", netns=lab.server)
        assert any("pktlab" in line for line in pktlab_rules(lab.router.netns))
        raise ZeroDivisionError("the test body fails")
    assert names and not [n for n in names if n in netns.list_names()]
    assert not pktlab_rules(None)
    assert not [t for t in threading.enumerate() if t.name.startswith("pktlab-queue")]


def test_detach_removes_exactly_its_rules(lab: Lab, queue_num: int) -> None:
    a = pktlab.attach(queue_num, rule="-p udp --dport 9000", netns=lab.server)
    b = pktlab.attach(queue_num + 1, rule="-p udp --dport 9001", netns=lab.server)
    lab.server.run(["iptables", "-A", "INPUT", "-p", "tcp", "--dport", "22", "-j", "ACCEPT"])
    a.detach()
    left = pktlab_rules(lab.server.netns)
    assert len(left) == 1 and b.name in left[0]
    assert "--dport 22" in lab.server.run(["iptables-save"]).stdout
    assert not [t for t in threading.enumerate() if t.name == f"pktlab-queue-{queue_num}"]
    b.detach()
    assert not pktlab_rules(lab.server.netns)
    assert lab.udp(10).unique == 10  # nothing queued any more


def test_rules_of_a_dead_session_are_swept(lab: Lab, queue_num: int) -> None:
    # a rule tagged with a PID that cannot exist, without --queue-bypass: it would black-hole port 9000
    dead = "pktlab:4194999:q-dead"
    lab.server.run(
        [
            "iptables",
            "-I",
            "INPUT",
            "-p",
            "udp",
            "--dport",
            "9000",
            "-m",
            "comment",
            "--comment",
            dead,
            "-j",
            "NFQUEUE",
            "--queue-num",
            str(queue_num + 500),
        ]
    )
    assert lab.udp(5, idle=0.5).received == 0
    s = pktlab.attach(queue_num, rule="-p udp --dport 9001", netns=lab.server)
    try:
        assert not [r for r in pktlab_rules(lab.server.netns) if dead in r]
        assert lab.udp(5).unique == 5
    finally:
        s.detach()


def test_bypass_passes_packets_while_no_reader_is_bound(lab: Lab, queue_num: int) -> None:
    s = pktlab.Session(queue_num, rule="-p udp --dport 9000", netns=lab.server)
    s.rules.install([s.rule])  # the rule without a reader, as after a crash
    try:
        assert lab.udp(10).unique == 10
    finally:
        s.rules.remove()


def test_queue_busy_and_bad_rule_are_clear_errors(lab: Lab, queue_num: int) -> None:
    s = pktlab.attach(queue_num, rule="-p udp --dport 9000", netns=lab.server)
    try:
        # a session of the same lab holds it: the message names that session
        mine = f"queue {queue_num} .*already read by your own session {s.name}"
        with pytest.raises(pktlab.QueueBusyError, match=mine):
            pktlab.attach(queue_num, rule="-p udp --dport 9001", netns=lab.server)
        # a reader pktlab does not know as one of the lab's sessions (a namespace given by name)
        with pytest.raises(pktlab.QueueBusyError, match=f"queue {queue_num} is already bound by another reader"):
            pktlab.attach(queue_num, rule="-p udp --dport 9001", netns=lab.server.netns)
        with pytest.raises(pktlab.RuleError, match="iptables refused the rule .*dprt"):
            pktlab.attach(queue_num + 1, rule="-p udp --dprt 9000", netns=lab.server)
        # the failed attaches left neither rules nor reader threads
        assert len(pktlab_rules(lab.server.netns)) == 1
        assert not [t for t in threading.enumerate() if t.name == f"pktlab-queue-{queue_num + 1}"]
    finally:
        s.detach()


def test_host_namespace_needs_opt_in() -> None:
    with pytest.raises(pktlab.SessionError, match="host's own network namespace"):
        pktlab.Session(1, rule="-p udp --dport 9")
    with pytest.raises(pktlab.SessionError, match="all of the host's traffic"):
        pktlab.Session(1, allow_host=True)


@needs_root  # the host's own namespace
def test_host_attach_on_loopback(queue_num: int) -> None:
    import socket

    s = pktlab.attach(queue_num, rule="-i lo -p udp --dport 39517", hook="INPUT", allow_host=True)
    try:

        @s.handler
        def drop_odd(pkt):
            return pkt.drop() if pkt.udp.payload[0] % 2 else None

        rx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        rx.bind(("127.0.0.1", 39517))
        rx.settimeout(0.5)
        tx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        for i in range(10):
            tx.sendto(bytes([i]), ("127.0.0.1", 39517))
        got = []
        try:
            while True:
                got.append(rx.recv(10)[0])
        except TimeoutError:
            pass
        assert got == [0, 2, 4, 6, 8]
    finally:
        s.detach()
    assert not pktlab_rules(None)


def test_tcp_stream_through_the_queue(lab: Lab, queue_num: int) -> None:
    s = pktlab.attach(queue_num, rule="-p tcp --dport 9001", netns=lab.server)
    try:
        r = lab.tcp(2 << 20)
        assert r["received"] == 2 << 20
        df = s.df
        assert (df["proto"] == "tcp").all() and len(df) > 10
        assert df["dport"].eq(9001).all()
    finally:
        s.detach()


def test_router_lab_forwards_and_queues_at_forward(router_lab: Lab, queue_num: int) -> None:
    s = pktlab.attach(queue_num, rule="-p udp", hook="FORWARD", netns=router_lab.router)
    try:
        assert router_lab.udp(100).unique == 100
        assert router_lab.ping(2).received == 2
        assert s.record.n == 100
        assert set(s.df["hook"]) == {"FORWARD"}
    finally:
        s.detach()


def test_to_pcap_round_trips(lab: Lab, queue_num: int, tmp_path) -> None:
    from scapy.layers.inet import UDP
    from scapy.utils import rdpcap

    s = pktlab.attach(queue_num, rule="-p udp --dport 9000", netns=lab.server)
    try:
        lab.udp(7)
        n = s.to_pcap(tmp_path / "seen.pcap")
    finally:
        s.detach()
    pkts = rdpcap(str(tmp_path / "seen.pcap"))
    assert n == 7 and len(pkts) == 7
    assert all(p[UDP].dport == 9000 for p in pkts)


def test_pause_holds_packets_in_the_kernel_and_resume_releases_them(lab: Lab, queue_num: int) -> None:
    s = pktlab.attach(queue_num, rule="-p udp --dport 9000", netns=lab.server)
    try:
        s.pause()
        flow = lab.start_udp(300, rate=3000, timeout=20, idle=3.0)
        assert wait_until(lambda: (c := s.kernel_counters()) is not None and c.queue_total == 300, timeout=5)
        assert s.record.n == 0 and "PAUSED" in str(s.status())
        s.resume()
        r = flow.wait()
        assert r.unique == 300 and s.record.n == 300
    finally:
        s.detach()


def test_detach_while_paused_gives_every_packet_its_verdict(lab: Lab, queue_num: int) -> None:
    s = pktlab.attach(queue_num, rule="-p udp --dport 9000", netns=lab.server)
    s.pause()
    flow = lab.start_udp(200, rate=4000, timeout=20, idle=1.0)
    assert wait_until(lambda: (c := s.kernel_counters()) is not None and c.queue_total == 200, timeout=5)
    s.detach()
    assert flow.wait().unique == 200  # drained with the default verdict, none dropped by the unbind
    assert s.record.n == 200


def test_interpreter_exit_tears_down_labs_and_sessions(tmp_path) -> None:
    import subprocess
    import sys

    script = tmp_path / "leave.py"
    script.write_text(
        "import pktlab\n"
        "lab = pktlab.Lab()\n"
        "s = pktlab.attach(3, rule='-p udp', netns=lab.server)\n"
        "print(lab.server.netns)\n"
        "# no detach, no down: atexit must do both\n"
    )
    out = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=60, check=True)
    ns = out.stdout.strip()
    assert ns.startswith("pktlab-") and ns not in netns.list_names()


@other_process
def test_killed_process_leftovers_are_swept_by_the_next_lab(tmp_path) -> None:
    import subprocess
    import sys

    script = tmp_path / "die.py"
    script.write_text(
        "import os, pktlab\n"
        "lab = pktlab.Lab()\n"
        "s = pktlab.attach(3, rule='-p udp', netns=lab.server)\n"
        "print(lab.server.netns, flush=True)\n"
        "os.kill(os.getpid(), 9)\n"
    )
    out = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=60)
    ns = out.stdout.strip()
    assert out.returncode == -9 and ns in netns.list_names()
    with Lab():
        assert ns not in netns.list_names()


@root_only("drops privileges to show the error without them")
def test_no_privileges_is_one_clear_sentence(tmp_path) -> None:
    import shutil
    import subprocess
    import sys

    if shutil.which("setpriv") is None:
        pytest.skip("setpriv (util-linux) is needed to drop privileges")
    code = (
        "import pktlab\n"
        "try:\n"
        "    pktlab.attach(1, rule='-p udp', netns='pktlab-nowhere')\n"
        "except pktlab.PrivilegeError as e:\n"
        "    print('ERR', e)\n"
    )
    out = subprocess.run(
        ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", "--inh-caps=-all", sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=tmp_path,
        env=dict(os.environ, PKTLAB_PRIVILEGE="root"),  # as where user namespaces are refused: no live mode at all
    )
    assert out.stdout.startswith("ERR ") and "needs root or user namespaces" in out.stdout, out.stderr
    assert out.stdout.count("\n") == 1


def test_a_rewritten_packets_mark_acts_after_the_queue(lab: Lab, queue_num: int) -> None:
    # in user-namespace mode the rewritten packet is sent again from the host: its mark must go with it
    # (with pktlab's sent bit added there, so a rule matches the mark's own bits: 6/0xffff)
    lab.server.run(
        ["iptables", "-A", "INPUT", "-p", "udp", "--dport", "9000", "-m", "mark", "--mark", "6/0xffff", "-j", "DROP"]
    )
    s = pktlab.attach(queue_num, rule="-p udp --dport 9000", hook="PREROUTING", netns=lab.server)
    try:

        @s.handler
        def rewrite_and_mark_odd(pkt):
            seq = int.from_bytes(pkt.udp.payload[:4], "big")
            pkt.udp.payload = pkt.udp.payload[:4] + b"seen"
            return pkt.accept(mark=6) if seq % 2 else pkt.accept()

        r = lab.udp(20, size=8, keep=20)
    finally:
        s.detach()
    assert sorted(int.from_bytes(p[:4], "big") for p in r.payloads) == list(range(0, 20, 2))
    assert all(p[4:] == b"seen" for p in r.payloads)


def test_repeat_reinjects_and_a_mark_ends_the_loop(lab: Lab, queue_num: int) -> None:
    s = pktlab.attach(queue_num, rule="-p udp --dport 9000 -m mark ! --mark 5", netns=lab.server)
    try:

        @s.handler
        def again(pkt):
            return pkt.repeat(mark=5)  # back to the start of INPUT, where the rule no longer matches

        r = lab.udp(30)
        assert r.unique == 30
        assert s.record.counts[pktlab.REPEAT] == 30 and s.record.n == 30
    finally:
        s.detach()


def test_a_packet_repeated_without_end_is_let_go_with_the_reason(lab: Lab, queue_num: int) -> None:
    """A handler that repeats packets its rule does not skip would hold them (and the reader) forever: after
    1,000 times round, each gets the error verdict (accept) and the handler's failure says what to do."""
    s = pktlab.attach(queue_num, rule="-p udp --dport 9000", netns=lab.server)
    s.say_failures = False
    try:
        s.add_handler(lambda pkt: pkt.repeat(), "again")
        r = lab.udp(3, rate=50)
        status = s.status()
    finally:
        s.detach()
    assert r.unique == 3 and s.dispatcher.repeat_loops == 3 and status.internal_errors == 0
    assert s.record.counts[pktlab.REPEAT] == 3 * 999 and s.record.counts[pktlab.ACCEPT] == 3
    assert len(s.errors) == 3 and "repeated the same packet 1,000 times in a row" in s.errors[0].error
    assert "-m mark ! --mark 1" in s.errors[0].error


def test_repeat_as_the_default_verdict_is_refused(lab: Lab, queue_num: int) -> None:
    for option in ("default", "on_error"):
        with pytest.raises(pktlab.SessionError, match=f"{option}='repeat' would send every such packet back"):
            pktlab.attach(queue_num, rule="-p udp --dport 9000", netns=lab.server, **{option: "repeat"})
    assert not pktlab_rules(lab.server.netns) and lab.udp(5).unique == 5  # nothing was installed


def test_a_rewritten_packet_repeated_goes_round_again_or_is_refused_with_the_reason(lab: Lab, queue_num: int) -> None:
    s = pktlab.attach(queue_num, rule="-p udp --dport 9000 -m mark ! --mark 5", netns=lab.server)
    try:

        @s.handler
        def again(pkt):
            pkt.udp.payload = pkt.udp.payload[:4] + b"PKTL"
            return pkt.repeat(mark=5)

        r = lab.udp(5, size=8, keep=5)
        status = s.status()
        errors = s.errors
    finally:
        s.detach()
    assert r.unique == 5
    if privilege.current().name == "root":  # the kernel takes the new payload with the repeat
        assert all(p[4:] == b"PKTL" for p in r.payloads) and status.internal_errors == 0
    else:  # it would drop it: the handler's failure, and the packet gets the error verdict (accept), unchanged
        assert all(p[4:] == bytes(4) for p in r.payloads) and status.internal_errors == 0
        assert status.counters["errors"] == 5 and len(errors) == 5
        assert "a rewritten packet cannot be repeated here" in str(errors[0])


def test_ipv6_udp_rewrite_through_the_queue(lab: Lab, queue_num: int) -> None:
    s = pktlab.attach(queue_num, rule="-p udp --dport 9000", netns=lab.server, family="ipv6")
    try:

        @s.handler
        def rewrite6(pkt):
            assert pkt.ipv6 is not None and pkt.ip is None
            pkt.udp.payload = pkt.udp.payload[:4] + b"over IPv6, checksum fixed"
            return pkt.accept()

        r = lab.udp(10, ipv6=True, keep=10)
        # IPv6 UDP checksums are mandatory: the receiver's kernel drops a wrong one
        assert r.unique == 10 and all(p[4:] == b"over IPv6, checksum fixed" for p in r.payloads)
        assert set(s.df["src"]) == {"fd77:1::1"}
    finally:
        s.detach()
