"""The seam between a session and its packet source: both kinds implement the whole declaration, behave alike
where they share it, and refuse what only the other kind does in one sentence."""

from __future__ import annotations

import inspect
from pathlib import Path

import pytest

import pktlab
from pktlab import testing
from pktlab.errors import SessionError
from pktlab.lab.network import wait_until
from pktlab.pipeline.sources import CaptureReplay, LiveQueue, PacketSource
from tests.conftest import needs_live

KINDS = (LiveQueue, CaptureReplay)


def _declared() -> dict[str, object]:
    """Every member PacketSource declares: its methods and properties, and its annotated attributes."""
    members = {n: v for n, v in vars(PacketSource).items() if not n.startswith("_")}
    members.update(dict.fromkeys(PacketSource.__annotations__))
    return members


@pytest.mark.parametrize("kind", KINDS, ids=lambda k: k.__name__)
def test_each_kind_implements_the_whole_declaration(kind: type) -> None:
    for name, declared in _declared().items():
        if declared is None:  # an attribute: set by the constructor or on the class
            assert name in kind.__init__.__code__.co_names or hasattr(kind, name), f"{kind.__name__} lacks {name}"
            continue
        assert hasattr(kind, name), f"{kind.__name__} lacks {name}"
        mine = getattr(kind, name)
        assert isinstance(mine, property) == isinstance(declared, property), f"{kind.__name__}.{name}: property?"
        if callable(declared) and not isinstance(declared, property):
            assert list(inspect.signature(mine).parameters) == list(inspect.signature(declared).parameters), (
                f"{kind.__name__}.{name} takes other arguments than PacketSource.{name}"
            )


def _handler(pkt):  # type: ignore[no-untyped-def]
    if pkt.udp is not None and int.from_bytes(pkt.udp.payload[:4], "big") % 2:
        return pkt.drop()
    return None


def _conformance(s: pktlab.Session, send) -> None:  # type: ignore[no-untyped-def]
    """What every source promises, run on one session: the chain, pause and step, status, teardown."""
    assert isinstance(s.source, PacketSource)
    s.add_handler(_handler, "odd")
    s.pause()  # paused from the start: nothing is read until step() or resume()
    s.attach()
    try:
        assert s.paused and s.record.n == 0
        send()
        assert s.step(timeout=10)  # exactly one packet through the chain
        assert s.record.n == 1
        s.resume()
        assert wait_until(lambda: s.record.n == 6, timeout=10), s.record.n
        assert [e.verdict for e in s.record] == ["accept", "drop"] * 3
        st = s.status()
        assert st.attached and st.counters["drop"] == 3 and st.counters["accept"] == 3 and st.internal_errors == 0
        assert repr(s).startswith(f"<Session {s.name}")
    finally:
        s.detach()
    assert not s.attached and not s.source.running


def test_a_capture_keeps_the_promises_and_refuses_what_needs_a_queue(tmp_path: Path) -> None:
    path = tmp_path / "six.pcap"
    testing.capture(path, [testing.udp(seq=i, dport=9000) for i in range(6)])
    s = pktlab.replay(str(path))
    _conformance(s, lambda: None)
    for call in (lambda: s.offload("udp", "drop"), lambda: s.offload_hits("udp"), lambda: s.remove_offload("udp"),
                 lambda: s.out_of_path()):  # fmt: skip
        with pytest.raises(SessionError, match="replays a capture; .* needs a live queue"):
            call()
    assert s.offloads == [] and s.rule is None and s.rules is None and s.kernel_counters() is None


@needs_live
def test_a_queue_keeps_the_same_promises_and_refuses_what_is_for_a_capture() -> None:
    with pktlab.Lab() as lab:
        s = pktlab.Session(1, rule="-p udp --dport 9000", netns=lab.server)
        flows = []
        _conformance(s, lambda: flows.append(lab.start_udp(6, port=9000, rate=1000)))
        assert flows[0].wait().unique == 3  # what the chain accepted reached the server
        for call in (lambda: s.run(), lambda: s.wait(1), lambda: s.configure(pace=1.0), lambda: s.packets,
                     lambda: s.outputs, lambda: s.write_pcap("x.pcap")):  # fmt: skip
            with pytest.raises(SessionError, match="reads a live queue; .* is for a capture"):
                call()
