"""Replay of captures through the handler chain (no root needed)."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest
from scapy.layers.inet import IP, UDP
from scapy.layers.l2 import Ether
from scapy.utils import rdpcap, wrpcap

import pktlab
from pktlab import DROP, Packet, PktlabError, SessionError, testing
from pktlab.lab.network import wait_until


def seq(pkt) -> int:
    return int.from_bytes(pkt.udp.payload[:4], "big")


def test_chain_semantics_match_a_live_session() -> None:
    s = pktlab.replay("lab-udp")

    @s.handler
    def first(pkt):
        if seq(pkt) % 5 == 0:
            return pkt.drop()
        if seq(pkt) % 5 == 1:
            raise ValueError("boom")
        if seq(pkt) % 5 == 2:
            return "nonsense"
        return None

    @s.handler
    def second(pkt):
        if seq(pkt) % 5 == 3:
            return "drop"  # a verdict name is accepted

    st = s.run()
    assert st.packets == 20 and st.counters["drop"] == 8 and st.counters["errors"] == 8
    df = s.df
    assert list(df["verdict"][:5]) == ["drop", "accept", "accept", "drop", "accept"]
    assert list(df["handler"][:5]) == ["first", "first", "first", "second", None]  # None, not NaN
    assert "boom" in df["error"][1] and "returned 'nonsense'" in df["error"][2]
    assert len(s.errors) == 8


def test_a_wrong_return_is_named_in_a_line_even_when_it_is_big_or_cannot_be_shown() -> None:
    """A handler that returns the packet's bytes (a 64 KiB GSO packet's, say) or an object whose repr() raises:
    the handler's failure, said in a line; before, the message held every byte, or failing to write it made
    the packet a pktlab internal error that s.errors did not show."""

    class Unshowable:
        def __repr__(self) -> str:
            raise RuntimeError("no repr")

    returns = iter([lambda pkt: bytes(pkt) * 1000, lambda pkt: Unshowable(), lambda pkt: [Unshowable()]])
    s = pktlab.replay("lab-udp")
    s.add_handler(lambda pkt: next(returns)(pkt), "wrong")
    st = s.run(limit=3)
    assert st.internal_errors == 0 and st.counters["errors"] == 3 and len(s.errors) == 3
    big, unshowable, inside = (e.error for e in s.errors)
    assert big.startswith("HandlerError: handler 'wrong' returned b\"E") and "..." in big and len(big) < 300
    assert "returned <Unshowable instance at 0x" in unshowable and "returned [<Unshowable instance" in inside


def test_rewrites_are_fixed_up_and_written(tmp_path: Path) -> None:
    s = pktlab.replay("lab-udp")

    @s.handler
    def grow(pkt):
        if seq(pkt) % 2:
            return pkt.drop()
        pkt.udp.payload = pkt.udp.payload[:4] + b"rewritten by a replay"
        pkt.ip.dst = "10.77.1.9"

    s.run()
    assert s.write_pcap(tmp_path / "out.pcap") == 10
    assert s.write_pcap(tmp_path / "dropped.pcap", dropped=True) == 10
    for p in rdpcap(str(tmp_path / "out.pcap")):
        ip = IP(bytes(p))
        assert ip.dst == "10.77.1.9" and bytes(ip[UDP].payload)[4:] == b"rewritten by a replay"
        ref = IP(bytes(ip))
        del ref.chksum, ref[UDP].chksum, ref.len, ref[UDP].len
        assert bytes(IP(bytes(ref))) == bytes(ip)  # lengths and both checksums as scapy computes them
    assert all(
        int.from_bytes(bytes(IP(bytes(p))[UDP].payload)[:4], "big") % 2 for p in rdpcap(str(tmp_path / "dropped.pcap"))
    )


def test_header_writes_in_a_replay_sum_the_payload_once_and_leave_sequence_adjustment_out(tmp_path: Path) -> None:
    """As on a live queue: a handler that writes only headers of a captured TCP connection gets its payloads
    copied once, with their sums (the fix-up takes them), and sequence adjustment neither copies nor compares
    them; the packets come out as scapy computes them."""
    from pktlab.packet._core import payload_sums_taken
    from pktlab.pipeline._seqadj import payload_copies
    from scapy.layers.inet import TCP

    s = pktlab.replay("lab-tcp")

    @s.handler
    def mark(pkt):
        if pkt.tcp is not None:
            pkt.ip.tos = 0x20
            pkt.ip.ttl = 9

    copies, sums = payload_copies(), payload_sums_taken()
    s.run()
    assert s.record.n == 27 and not s.errors and payload_copies() == copies
    # every packet's sum taken but the SYN whose MSS sequence adjustment lowered (a write anywhere: it has no
    # payload to sum again)
    assert payload_sums_taken() - sums == 26
    assert s.write_pcap(tmp_path / "out.pcap") == 27
    for p in rdpcap(str(tmp_path / "out.pcap")):
        ip = IP(bytes(p))
        assert ip.tos == 0x20 and ip.ttl == 9
        ref = IP(bytes(ip))
        del ref.chksum, ref[TCP].chksum
        assert bytes(IP(bytes(ref))) == bytes(ip)


def test_a_handler_that_never_returns_is_skipped_as_live() -> None:
    """The live rule: at the deadline its packet gets the error verdict, the handler is skipped until it returns."""
    s = pktlab.replay("lab-udp", deadline=0.1, on_error="drop")
    release = threading.Event()

    @s.handler
    def forever(pkt):
        while not release.is_set():  # spins (holding the GIL but for the interpreter's switches)
            pass

    try:
        st = s.run(limit=3)
        assert st.counters["drop"] == 1 and st.counters["accept"] == 2 and st.counters["errors"] == 1
        assert st.rescued == 1 and [name for name, _, _ in st.stuck] == ["forever"]
        entry = next(iter(s.record))
        assert entry.verdict == "drop" and "did not return within 100 ms" in entry.error
    finally:
        release.set()
    assert wait_until(lambda: not s.source.stuck_threads, timeout=5)
    assert not s.stuck  # it returned: back in the chain


def test_a_run_does_not_wait_out_the_watchdogs_period() -> None:
    """The watchdog looks every deadline/4; ending it wakes it at once.  It once slept its period out, so every
    detach (and every run() of a replay) took up to a quarter of the deadline: 250 ms by default, here 15 s."""
    s = pktlab.replay("lab-udp", deadline=60)
    before = set(threading.enumerate())
    t0 = time.monotonic()
    st = s.run(limit=3)
    assert st.counters["accept"] == 3
    assert time.monotonic() - t0 < 5, "run() waited for the watchdog's next look (deadline/4 = 15 s)"
    assert not [t for t in set(threading.enumerate()) - before if t.name.startswith("pktlab-watchdog")]


def test_filter_selects_packets_like_the_kernel_would() -> None:
    s = pktlab.replay("lab-http", filter="tcp[tcpflags] & tcp-syn != 0")
    seen = []
    s.add_handler(lambda p: seen.append(p.tcp.flags.syn), "see")
    st = s.run()
    assert seen and all(seen) and st.passed_unseen == st.packets - len(seen)


def test_ethernet_captures_and_pacing(tmp_path: Path) -> None:
    frames = [Ether() / IP(dst="10.77.1.2") / UDP(dport=9000) / bytes([i]) for i in range(3)]
    for i, f in enumerate(frames):
        f.time = 1000.0 + i * 0.1
    wrpcap(str(tmp_path / "eth.pcap"), frames)
    s = pktlab.replay(tmp_path / "eth.pcap")
    s.add_handler(lambda p: p.drop() if p.udp.payload == b"\x01" else None, "one")
    t = time.monotonic()
    s.run(pace=1.0)
    assert time.monotonic() - t >= 0.19
    assert list(s.df["dport"]) == [9000] * 3 and s.record.counts[DROP] == 1
    assert s.write_pcap(tmp_path / "o.pcap") == 2 and Ether in rdpcap(str(tmp_path / "o.pcap"))[0]


def test_bad_inputs_are_one_sentence(tmp_path: Path) -> None:
    with pytest.raises(PktlabError, match="no capture file"):
        pktlab.replay(tmp_path / "missing.pcap")
    with pytest.raises(PktlabError, match="no dataset named 'nope'"):
        pktlab.replay("nope")
    (tmp_path / "junk.pcap").write_bytes(b"not a capture at all")
    with pytest.raises(PktlabError, match="not a pcap or pcapng file"):
        pktlab.replay(tmp_path / "junk.pcap")
    with pytest.raises(SessionError, match="pace"):
        pktlab.replay("lab-udp").run(pace=0)


def test_datasets_load() -> None:
    d = pktlab.datasets.load("lab-dns")
    d.verify()
    pkts = d.packets()
    assert len(pkts) == d.packets_expected and pkts[0].dns is not None
    assert "lab-dns" in pktlab.datasets.names()


def test_replay_of_something_that_is_not_a_capture_is_one_sentence() -> None:
    import pytest

    import pktlab

    with pytest.raises(pktlab.SessionError, match="replay\\(\\) takes a capture's path or a dataset name"):
        pktlab.replay(42)  # type: ignore[arg-type]


def test_packets_in_memory_given_to_replay_are_named_briefly_with_the_way_to_a_capture(tmp_path: Path) -> None:
    packets = [testing.udp(seq=i, raw=True) for i in range(10_000)]
    with pytest.raises(SessionError) as refused:
        pktlab.replay(packets)  # type: ignore[arg-type]
    said = str(refused.value)
    assert len(said) < 600 and "not list [" in said and "..." in said  # not ten thousand packets' bytes
    assert "(from pktlab.testing import capture; capture('packets.pcap', packets))" in said
    s = pktlab.replay(testing.capture(tmp_path / "packets.pcap", packets[:5]))  # what it says works
    s.run()
    assert s.record.n == 5


def test_stepping_through_a_capture_with_the_inspector() -> None:
    """pause, attach, then Step: one packet at a time into the inspector, decided there, the rest waiting."""
    s = pktlab.replay("lab-udp")
    s.add_handler(lambda pkt: pkt.drop() if seq(pkt) == 1 else None, "one")
    c = s.controls()
    try:
        c.pause.click()
        s.attach()
        assert s.paused and "PAUSED" in c.state.value and s.record.n == 0
        c.step.click()
        assert "udp" in c.inspector.value and not c.accept.disabled and len(s.held) == 1
        assert seq(s.held[0].packet) == 0
        c.drop.click()
        assert len(s.held) == 0 and s.record.n == 1 and s.record.counts[DROP] == 1
        c.refresh(None)
        assert "<span class='pktlab-read'>1</span>" in c.depth.value
        assert s.step() and s.record.n == 2 and s.record.counts[DROP] == 2  # seq 1: the handler dropped it
        held = s.step_and_hold()
        assert held is not None and seq(held.packet) == 2
        held.accept()
        assert s.record.n == 3 and not s.wait(0.2)  # the other 17 wait
        c.resume.click()
        assert s.wait(10) and s.record.n == 20
        s.pause()
        assert s.step_and_hold() is None  # the end of the capture: nothing came
        out = [Packet(None, data).udp.payload[:4] for _, data, _ in s.outputs]
        assert len(out) == 18 and (0).to_bytes(4, "big") not in out and (1).to_bytes(4, "big") not in out
    finally:
        c.close()
        s.detach()


def test_a_handler_can_detach_its_own_replay(tmp_path: Path) -> None:
    """``s.detach()`` in a handler stops the replay after the packet it is on, which gets the handler's verdict."""
    s = pktlab.replay(testing.capture(tmp_path / "c.pcap", [testing.udp(seq=i) for i in range(10)]))

    def stop_at_the_third(pkt):
        if int.from_bytes(pkt.udp.payload[:4], "big") == 2:
            s.detach()
            return pkt.drop()
        return None

    s.add_handler(stop_at_the_third, "stop")
    s.attach()
    assert s.wait(10) and not s.attached and not s.errors
    assert s.record.n == 3 and s.status().counters["drop"] == 1 and len(s.outputs) == 2
    s.run()  # a replay attaches again and reads from the start (a fresh record): the handler stops it again
    assert s.record.n == 3 and s.status().counters["drop"] == 1 and not s.attached and not s.errors


def test_waiting_for_the_session_inside_its_own_handler_is_refused(tmp_path: Path) -> None:
    """``s.wait()`` and ``s.step()`` in a handler wait for the handler itself (the reading thread runs it): they
    once hung (wait() without a timeout never returned) or came back False after the timeout; now the handler
    fails at once with the reason, and its packet gets the error verdict."""
    s = pktlab.replay(testing.capture(tmp_path / "c.pcap", [testing.udp(seq=i) for i in range(4)]), on_error="drop")

    @s.handler
    def waits(pkt):
        if seq(pkt) == 1:
            s.wait()
        if seq(pkt) == 2:
            s.step()

    st = s.run()
    assert st.counters["accept"] == 2 and st.counters["drop"] == 2 and st.counters["errors"] == 2
    errors = [e.error for e in s.record if e.error]
    assert len(errors) == 2
    assert "wait() in a handler of" in errors[0] and "to end the run early, s.detach()" in errors[0]
    assert "step() in a handler of" in errors[1] and "call step() from the notebook" in errors[1]
    s.pause()
    s.attach()  # paused: a step runs the handler, which steps again
    try:
        assert s.step() and s.step() and s.step()
        assert [e.error is not None for e in s.record] == [False, True, True]
        assert not s.wait(0.01)  # from the notebook: waits, as it should (one packet still waits)
    finally:
        s.detach()
