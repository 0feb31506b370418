"""Which layer a handler read as None, when it fails on the field of a layer the packet does not have.

``pkt.tcp.dport`` on a UDP packet raises Python's "'NoneType' object has no attribute 'dport'", which does not
say that ``pkt.tcp`` was the None, nor why.  The failing instruction and the one before it (``pkt.tcp``, or a
variable that was only ever set from ``pkt.tcp``) tell which layer it was; what the packet has instead says why.
The instruction's layer is kept per code position, so that a handler failing on every packet reads its code
once, not on every packet.
"""

from __future__ import annotations

import dis
from types import CodeType, TracebackType
from typing import Any

from ..packet.user_protocols import registry as protocol_registry

LAYERS = {"ip": "IPv4 header", "ipv6": "IPv6 header", "tcp": "TCP header", "udp": "UDP header",
          "icmp": "ICMP header", "icmpv6": "ICMPv6 header", "eth": "Ethernet header", "dns": "DNS message",
          "http": "HTTP message"}  # fmt: skip
_TRANSPORTS = ("tcp", "udp", "icmp", "icmpv6")
_TRANSPORT_NAMES = {6: "TCP", 17: "UDP", 1: "ICMP", 58: "ICMPv6"}
_ATTR_OPS = ("LOAD_ATTR", "LOAD_METHOD", "STORE_ATTR", "DELETE_ATTR")
_LOADS = {"LOAD_FAST": "STORE_FAST", "LOAD_NAME": "STORE_NAME", "LOAD_GLOBAL": "STORE_GLOBAL",
          "LOAD_DEREF": "STORE_DEREF"}  # fmt: skip
_KEPT = 512  # code positions remembered at most
_read_at: dict[tuple[CodeType, int], str | None] = {}
_sentences: dict[tuple[str, str], str] = {}


def _attribute_read_before(code: CodeType, offset: int) -> str | None:
    """The attribute whose value the attribute access at ``offset`` failed on: ``x`` of ``pkt.x.y``, or of
    ``v = pkt.x`` ... ``v.y`` when every assignment to ``v`` in the code is of an attribute ``x``."""
    ins = [i for i in dis.get_instructions(code) if i.opname != "CACHE"]
    at = next((k for k, i in enumerate(ins) if i.offset == offset), 0)
    if at == 0 or ins[at].opname not in _ATTR_OPS:
        return None
    before = ins[at - 1]
    if before.opname in ("LOAD_ATTR", "LOAD_METHOD"):
        return str(before.argval)
    store = _LOADS.get(before.opname)
    if store is None:
        return None
    sources = {ins[k - 1].argval if ins[k - 1].opname == "LOAD_ATTR" else None
               for k in range(1, len(ins)) if ins[k].opname == store and ins[k].argval == before.argval}  # fmt: skip
    return str(sources.pop()) if len(sources) == 1 and None not in sources else None


def _layer_read(tb: TracebackType) -> str | None:
    while tb.tb_next is not None:
        tb = tb.tb_next
    key = (tb.tb_frame.f_code, tb.tb_lasti)
    if key not in _read_at:
        if len(_read_at) >= _KEPT:
            _read_at.clear()
        _read_at[key] = _attribute_read_before(*key)
    return _read_at[key]


def _what_it_has(pkt: Any, layer: str) -> str:
    """What the packet has in place of ``layer``, as a parenthesis (or "")."""
    try:
        if layer in _TRANSPORTS:
            has = _TRANSPORT_NAMES.get(pkt.proto)
            return f" (it is {has})" if has else " (nor any transport header pktlab reads)"
        if layer in ("ip", "ipv6"):
            return " (it is IPv6)" if pkt.ipv6 is not None else " (it is IPv4)" if pkt.ip is not None else ""
    except Exception:  # a packet malformed further on: say nothing of it here
        return ""
    return ""


def missing_layer(exc: BaseException, pkt: Any) -> str | None:
    """The sentence that says which of ``pkt``'s layers was None, if ``exc`` is an attribute read on a layer the
    packet does not have; else None."""
    if type(exc) is not AttributeError or exc.__traceback__ is None or not exc.args \
            or not str(exc.args[0]).startswith("'NoneType' object has no attribute"):  # fmt: skip
        return None
    layer = _layer_read(exc.__traceback__)
    if layer is None or (layer not in LAYERS and layer not in protocol_registry):
        return None
    key = (layer, _what_it_has(pkt, layer))
    sentence = _sentences.get(key)
    if sentence is None:
        if len(_sentences) >= _KEPT:
            _sentences.clear()
        sentence = _sentences[key] = (
            f"pkt.{layer} is None: this packet has no {LAYERS.get(layer, f'{layer!r} layer')}{key[1]}; test "
            f"`if pkt.{layer} is not None:` before reading its fields"
        )
    return sentence
