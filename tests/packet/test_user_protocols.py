"""User-defined protocols (no kernel needed; the real-kernel rewrite is in tests/integration)."""

from __future__ import annotations

import pytest
from scapy.layers.inet import IP, TCP, UDP
from scapy.packet import Raw

import pktlab
from pktlab import Packet, PacketFormatError, PktlabError


@pytest.fixture(autouse=True)
def _clean_registry():
    yield
    pktlab.protocols.clear()


def ticker_packet(payload: bytes, dport: int = 9999) -> Packet:
    return Packet(None, bytes(IP(src="10.77.1.1", dst="10.77.1.2") / UDP(sport=4000, dport=dport) / Raw(payload)))


def define_ticker():
    @pktlab.protocol(over="udp", port=9999)
    class Ticker:
        version: pktlab.bits(4)
        kind: pktlab.bits(4)
        seq: pktlab.uint(16)
        symbol: pktlab.text(8)

    return Ticker


def test_fields_read_and_write_with_checksums_fixed() -> None:
    define_ticker()
    p = ticker_packet(bytes([0x12, 0x01, 0x00]) + b"ACME" + bytes(4))
    assert p.ticker.version == 1 and p.ticker.kind == 2 and p.ticker.seq == 256 and p.ticker.symbol == "ACME"
    p.ticker.seq += 1
    p.ticker.kind = 7
    p.ticker.symbol = "PKTLAB"
    out = IP(bytes(p))
    assert bytes(out[UDP].payload) == bytes([0x17, 0x01, 0x01]) + b"PKTLAB\0\0"
    ref = IP(bytes(out))
    del ref[UDP].chksum
    assert bytes(out) == bytes(IP(bytes(ref)))  # scapy recomputes the same checksum
    assert "seq=257" in repr(p.ticker) and p.ticker.as_dict()["symbol"] == "PKTLAB"


def test_absent_unless_bound_port_and_errors_name_the_field() -> None:
    define_ticker()
    assert ticker_packet(b"x" * 11, dport=53).ticker is None
    assert Packet(None, bytes(IP() / TCP(dport=9999))).ticker is None
    short = ticker_packet(b"\x12\x01")
    with pytest.raises(PacketFormatError, match=r"ticker\.seq lies past the end"):
        _ = short.ticker.seq
    with pytest.raises(AttributeError, match="no attribute or protocol 'tickr'"):
        _ = short.tickr


def test_a_write_that_cannot_fit_changes_nothing() -> None:
    define_ticker()
    p = ticker_packet(bytes(11))
    with pytest.raises(ValueError, match="holds 8 bytes of text"):
        p.ticker.symbol = "MUCH TOO LONG"
    with pytest.raises(ValueError, match="4 bits wide"):
        p.ticker.kind = 16
    assert not p.modified and bytes(p) == bytes(ticker_packet(bytes(11)))


def test_redefining_replaces_and_little_endian_and_addresses() -> None:
    define_ticker()

    @pktlab.protocol(over="udp", port=9999)
    class Ticker:
        seq: pktlab.uint(32, order="little")
        peer: pktlab.addr4()
        tail: pktlab.raw(3)

    p = ticker_packet(b"\x01\x00\x00\x00" + bytes([10, 77, 1, 9]) + b"abc")
    assert p.ticker.seq == 1 and p.ticker.peer == "10.77.1.9" and p.ticker.tail == b"abc"
    p.ticker.seq = 0x01020304
    p.ticker.peer = "10.77.2.2"
    assert bytes(p.udp.payload)[:8] == b"\x04\x03\x02\x01" + bytes([10, 77, 2, 2])
    assert pktlab.protocols.names == ["ticker"]


def test_policy_field_binding_nesting_and_variable_length() -> None:
    @pktlab.protocol(over="ip", field="proto", value=253)
    class Exp:
        kind: pktlab.uint(8)
        size: pktlab.uint(8)
        body: pktlab.varbytes(lambda v: v.size)

        def matches(self):
            return self.kind != 0

    @pktlab.protocol(over="exp", field="kind", value=2)
    class Inner:
        flag: pktlab.bits(1)
        rest: pktlab.bits(7)

    p = Packet(None, bytes(IP(dst="10.0.0.1", proto=253) / Raw(b"\x02\x03abcxyz")))
    assert p.exp.size == 3 and p.exp.body == b"abc" and p.exp.payload == b"xyz"
    assert p.inner is not None and p.inner.flag == 0  # 'x' = 0x78
    assert Packet(None, bytes(IP(proto=253) / Raw(b"\x00\x00"))).exp is None  # the policy says no
    assert Packet(None, bytes(IP(proto=253) / Raw(b"\x01\x00"))).inner is None  # kind 1: not Inner
    lying = Packet(None, bytes(IP(proto=253) / Raw(b"\x02\x50ab")))
    with pytest.raises(PacketFormatError, match="claims 80 bytes"):
        _ = lying.exp.body


def test_declaration_mistakes_are_clear() -> None:
    with pytest.raises(PktlabError, match="cannot put a protocol over 'sctp'"):
        pktlab.protocol(over="sctp")
    with pytest.raises(PktlabError, match="not whole bytes"):

        @pktlab.protocol(over="udp", port=1)
        class Odd:
            a: pktlab.bits(3)

    with pytest.raises(PktlabError, match="must start on a byte"):

        @pktlab.protocol(over="udp", port=1)
        class Skewed:
            a: pktlab.bits(4)
            b: pktlab.text(2)

    with pytest.raises(PktlabError, match="annotated"):

        @pktlab.protocol(over="udp", port=1)
        class Typed:
            a: int

    with pytest.raises(PktlabError, match="cannot name a protocol"):

        @pktlab.protocol(over="udp", port=1, name="payload")
        class Clash:
            a: pktlab.uint(8)

    # before: a port out of range or not a number was taken (and never matched), a class without fields made a
    # view of nothing, and raw(-1) spoke of -8 bits
    for port in (70000, -1, "http", True):
        with pytest.raises(PktlabError, match=r"is not a TCP or UDP port; give 0\.\.65535"):
            pktlab.protocol(over="udp", port=port)  # type: ignore[arg-type]
    with pytest.raises(PktlabError, match="port= binds a protocol over udp or tcp, not over ip; use field= and value="):
        pktlab.protocol(over="ip", port=53)
    with pytest.raises(PktlabError, match=r"^Empty declares no fields; declare each as an annotation"):

        @pktlab.protocol(over="udp", port=1)
        class Empty:
            pass

    for make, n in ((pktlab.raw, -1), (pktlab.text, 0), (pktlab.raw, 2.5)):
        with pytest.raises(PktlabError, match=rf"^{make.__name__}\({n}\): a field of bytes must be at least one byte"):
            make(n)  # type: ignore[arg-type]
    assert "empty" not in pktlab.protocols.names


@pytest.mark.parametrize("offset", [0, 3, 8, 13])
@pytest.mark.parametrize("width", [1, 7, 31, 32, 33, 63, 64, 65, 72, 96, 128, 200])
def test_fields_of_any_width_at_any_bit_read_and_write_the_right_bits(offset: int, width: int) -> None:
    import random

    pad = (-(offset + width)) % 8

    fields = {"before": pktlab.bits(offset)} if offset else {}
    fields["value"] = pktlab.uint(width)
    if pad:
        fields["after"] = pktlab.bits(pad)
    pktlab.protocol(over="udp", port=9999, name="wide")(type("Wide", (), {"__annotations__": fields}))

    nbytes = (offset + width + pad) // 8
    rnd = random.Random(width * 100 + offset)
    data = bytes(rnd.getrandbits(8) for _ in range(nbytes))
    p = Packet(None, bytes(IP() / UDP(dport=9999) / data))
    whole = int.from_bytes(data, "big")
    shift = nbytes * 8 - offset - width
    assert p.wide.value == (whole >> shift) & ((1 << width) - 1)
    new = rnd.getrandbits(width)
    p.wide.value = new
    after = int.from_bytes(p.udp.payload, "big")
    mask = ((1 << width) - 1) << shift
    assert after & ~mask == whole & ~mask  # the bits around it are untouched
    assert (after >> shift) & ((1 << width) - 1) == new == p.wide.value
    with pytest.raises(ValueError, match="does not fit"):
        p.wide.value = 1 << width


def test_a_protocol_over_itself_is_refused() -> None:
    @pktlab.protocol(over="udp", port=9999, name="inner")
    class Inner:
        a: pktlab.bits(8)

    @pktlab.protocol(over="inner", name="outer")
    class Outer:
        b: pktlab.bits(8)

    for over, name in (("inner", "inner"), ("outer", "inner")):
        with pytest.raises(PktlabError, match="would sit on itself"):

            @pktlab.protocol(over=over, name=name)
            class Loop:
                c: pktlab.bits(8)

    p = Packet(None, bytes(IP() / UDP(dport=9999) / b"\x01\x02"))
    assert p.inner.a == 1 and p.outer.b == 2  # the refused definitions changed nothing
