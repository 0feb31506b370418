"""The handler chain: order, atomic replace, validation (no kernel needed)."""

from __future__ import annotations

import threading

import pytest

from pktlab import HandlerError
from pktlab.pipeline import handlers as handlers_mod
from pktlab.pipeline.handlers import HandlerChain, trim_traceback


def test_add_replace_keeps_position_and_swaps_the_tuple() -> None:
    c = HandlerChain()
    c.add(lambda p: None, "a")
    c.add(lambda p: None, "b")
    c.add(lambda p: None, "c", before="b")
    assert c.names == ["a", "c", "b"]
    before = c.active
    new_fn = lambda p: 1  # noqa: E731
    c.add(new_fn, "c")
    assert c.names == ["a", "c", "b"] and c.active is not before
    assert c.active[1].fn is new_fn and before[1].fn is not new_fn  # the old tuple is untouched


def test_enable_and_remove() -> None:
    c = HandlerChain()
    c.add(lambda p: None, "a")
    c.add(lambda p: None, "b")
    c.enable("a", False)
    assert [h.name for h in c.active] == ["b"] and c.names == ["a", "b"]
    c.remove("b")
    assert c.active == ()
    with pytest.raises(HandlerError, match="no handler named 'zz'"):
        c.remove("zz")


def test_rejects_non_callables_and_wrong_signatures() -> None:
    c = HandlerChain()
    with pytest.raises(HandlerError, match="not a function"):
        c.add(42, "x")  # type: ignore[arg-type]
    with pytest.raises(HandlerError, match="exactly one argument"):
        c.add(lambda a, b: None, "y")
    c.add(lambda *args: None, "z")  # variadic is fine


def test_rejects_async_functions_and_generators_with_the_way_to_write_them() -> None:
    """Their call only makes a coroutine or a generator, which the chain took for a wrong verdict on every
    packet (and Python warned that the coroutine was never awaited)."""
    c = HandlerChain()

    async def later(pkt):
        return pkt.drop()

    def yielding(pkt):
        yield pkt.drop()

    with pytest.raises(HandlerError, match=r"handler 'later' is an async function.*write def later\(pkt\), not async"):
        c.add(later)
    with pytest.raises(HandlerError, match=r"handler 'g' is a generator \(its body has yield\).*instead of yielding"):
        c.add(yielding, "g")
    assert c.names == []


def test_name_defaults_to_function_name() -> None:
    c = HandlerChain()

    def my_filter(pkt):
        return None

    c.add(my_filter)
    assert c.names == ["my_filter"]


def test_concurrent_swaps_never_expose_a_partial_chain() -> None:
    c = HandlerChain()
    for n in "abc":
        c.add(lambda p: None, n)
    seen = set()
    stop = threading.Event()

    def reader():
        while not stop.is_set():
            seen.add(tuple(h.name for h in c.active))

    t = threading.Thread(target=reader)
    t.start()
    for i in range(2000):
        c.add(lambda p, i=i: i, "b")
    stop.set()
    t.join()
    assert seen == {("a", "b", "c")}


def test_failures_are_kept_with_trimmed_traceback() -> None:
    c = HandlerChain(max_failures=2)
    h = c.add(lambda p: None, "h")
    for i in range(3):
        try:
            raise ValueError(f"boom {i}")
        except ValueError as exc:
            c.record_failure(h, "<pkt>", exc)
    assert [f.error for f in c.failures] == ["ValueError: boom 1", "ValueError: boom 2"]
    assert "ValueError: boom 2" in c.failures[-1].traceback
    try:
        raise KeyError("k")
    except KeyError as exc:
        assert trim_traceback(exc).endswith("KeyError: 'k'")


def _deep(n: int) -> None:
    if n:
        _deep(n - 1)
    raise ZeroDivisionError(f"depth {n}")  # the line a traceback must show


def test_a_handler_failing_on_every_packet_keeps_the_first_written_out_and_the_rest_cheap() -> None:
    c = HandlerChain(max_failures=50)
    h = c.add(lambda p: None, "h")
    for _ in range(80):
        try:
            _deep(10)
        except ZeroDivisionError as exc:
            c.failed(h, "<pkt>", exc)
    assert h.errors == 80 and len(c.failures) == 50 and c.left_out == 30
    newest = c.failures[-1]
    assert not newest.written_out  # not written out until looked at
    text = newest.traceback  # then read: the frames, the source line, the error
    assert 1 <= text.count("  File ") <= handlers_mod.TRACEBACK_FRAMES  # the last frames only (repeats folded)
    assert ", in _deep" in text and 'raise ZeroDivisionError(f"depth {n}")' in text
    assert text.endswith("ZeroDivisionError: depth 0")
    assert str(newest) == "h raised ZeroDivisionError: depth 0 on '<pkt>'"
    c2 = HandlerChain()
    h2 = c2.add(lambda p: None, "h2")
    try:
        _deep(1)
    except ZeroDivisionError as exc:
        c2.failed(h2, "<pkt>", exc)
    assert c2.failures[0].written_out and "ZeroDivisionError: depth 0" in c2.failures[0].traceback


def test_before_and_after_together_are_refused() -> None:
    c = HandlerChain()
    c.add(lambda p: None, "a")
    c.add(lambda p: None, "b")
    with pytest.raises(HandlerError, match="both before='a' and after='b'"):
        c.add(lambda p: None, "x", before="a", after="b")
    assert c.names == ["a", "b"]


def test_a_failure_describes_its_packet_as_it_was_when_the_handler_failed() -> None:
    from scapy.layers.inet import IP, UDP

    from pktlab import Packet

    pkt = Packet(None, bytes(IP(src="10.0.0.1", dst="10.0.0.2") / UDP(sport=1000, dport=53) / b"q"))
    c = HandlerChain()
    h = c.add(lambda p: None, "h")
    for _ in range(handlers_mod.WRITTEN_OUT + 1):  # the last one past those written out at once
        try:
            raise ValueError("no rule")
        except ValueError as exc:
            failure = c.failed(h, pkt, exc)
    seen = repr(pkt)
    pkt.ip.dst = "10.0.0.9"  # written after the failure: the failure keeps the packet it failed on
    pkt.udp.dport = 54
    assert not failure.written_out
    assert failure.packet == seen == "<Packet udp 10.0.0.1:1000 > 10.0.0.2:53 len=29>"
    assert str(failure) == f"h raised ValueError: no rule on {seen}"
    assert repr(pkt) == "<Packet udp 10.0.0.1:1000 > 10.0.0.9:54 len=29 modified>"


def _fail_on(fn, pkt) -> str:  # type: ignore[no-untyped-def]
    c = HandlerChain()
    h = c.add(fn, "h")
    try:
        fn(pkt)
    except Exception as exc:  # noqa: BLE001 - what the dispatcher catches
        return c.failed(h, pkt, exc).error
    raise AssertionError("the handler did not fail")


def test_a_field_read_on_a_layer_the_packet_lacks_names_the_layer_and_what_the_packet_is() -> None:
    from scapy.layers.inet import ICMP, IP, TCP, UDP
    from scapy.layers.inet6 import IPv6

    import pktlab
    from pktlab import Packet

    udp = Packet(None, bytes(IP(src="10.0.0.1", dst="10.0.0.2") / UDP(sport=1000, dport=53) / b"q"))
    ping = Packet(None, bytes(IP(src="10.0.0.1", dst="10.0.0.2") / ICMP()))
    tcp6 = Packet(None, bytes(IPv6(src="fd00::1", dst="fd00::2") / TCP(sport=1, dport=2)))
    python_says = "AttributeError: 'NoneType' object has no attribute 'dport'"

    def chained(pkt):  # type: ignore[no-untyped-def]
        return pkt.tcp.dport

    def through_a_variable(pkt):  # type: ignore[no-untyped-def]
        t = pkt.tcp
        return t.dport > 1024

    def written(pkt):  # type: ignore[no-untyped-def]
        pkt.tcp.dport = 80

    c = HandlerChain()
    h = c.add(chained, "h")
    for _ in range(handlers_mod.WRITTEN_OUT + 1):  # the first written out at once, the last when read
        try:
            chained(udp)
        except AttributeError as exc:
            c.failed(h, udp, exc)
    first, last = c.failures[0], c.failures[-1]
    assert first.written_out and not last.written_out
    assert "pkt.tcp is None" in last.error
    assert first.traceback.endswith(first.error) and last.traceback.endswith(last.error)

    for fn in (chained, through_a_variable, written):
        assert _fail_on(fn, udp) == (
            f"{python_says} — pkt.tcp is None: this packet has no TCP header (it is UDP); test "
            "`if pkt.tcp is not None:` before reading its fields"
        ), fn.__name__
    assert "pkt.udp is None: this packet has no UDP header (it is ICMP)" in _fail_on(lambda p: p.udp.dport, ping)
    assert "pkt.ip is None: this packet has no IPv4 header (it is IPv6)" in _fail_on(lambda p: p.ip.src, tcp6)
    assert "pkt.dns is None: this packet has no DNS message;" in _fail_on(lambda p: p.dns.qname, ping)

    @pktlab.protocol(over="udp", port=9999)
    class Beacon:
        seq: pktlab.uint(16)

    try:
        assert "pkt.beacon is None: this packet has no 'beacon' layer;" in _fail_on(lambda p: p.beacon.seq, udp)
    finally:
        pktlab.protocols.remove("beacon")

    # a None that is not one of the packet's layers gets Python's words alone
    def other_none(pkt):  # type: ignore[no-untyped-def]
        found = {}.get("x")
        return found.dport

    def reassigned(pkt):  # type: ignore[no-untyped-def]
        t = pkt.tcp
        t = None
        return t.dport

    assert _fail_on(other_none, udp) == python_says
    assert _fail_on(reassigned, udp) == python_says
    assert _fail_on(lambda p: p.tcp.nosuchfield, udp) == (
        "AttributeError: 'NoneType' object has no attribute 'nosuchfield' — pkt.tcp is None: this packet has no "
        "TCP header (it is UDP); test `if pkt.tcp is not None:` before reading its fields"
    )
