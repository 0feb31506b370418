"""Deep packet inspection where only a flow's first packets reach Python: a handler that decides each TCP flow by
the name its first bytes ask for (seed 002's point: user space interprets layer 7, which pays only if few packets
go up).

``name_filter(blocked)`` returns a handler for a session attached with ``flow_verdicts=True``: the handshake
passes; the flow's first data is read — a TLS ClientHello's server name (:mod:`pktlab.packet.tls`, scapy's TLS
layer) or an HTTP request's Host (pktlab's HTTP view) — and the whole flow gets a flow verdict: a blocked name is
dropped (the client gets a reset at once, as from a firewall that rejects, unless ``reset=False``), any other is
accepted, so the rest of it stays in the kernel.  A ClientHello cut across segments is kept in ``pkt.flow.state``
until it is whole (up to 16 KiB).  ``names`` (a dict, given or made) counts the flows seen per name and verdict.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterable
from typing import Any

from ..packet import tls

HEAD_LIMIT = 16 << 10  # bytes of a flow's start kept while a ClientHello is not whole


def requested_name(pkt: Any, head: bytes) -> str | None:
    """The name a flow's first bytes ``head`` ask for: TLS SNI, or the HTTP Host (port left out); None: neither."""
    name = tls.server_name(head)
    if name is not None:
        return name
    h = pkt.http
    if h is not None and h.is_request:
        host = h.headers.get("Host")
        if host:
            return host.rsplit(":", 1)[0] if not host.endswith("]") else host
    return None


def name_filter(blocked: Iterable[str], *, reset: bool = True, names: Counter[tuple[str, str]] | None = None
                ) -> Callable[[Any], Any]:  # fmt: skip
    """A handler that drops the TCP flows asking for a ``blocked`` name and accepts the others, each as a flow."""
    block = {n.lower().rstrip(".") for n in blocked}
    seen: Counter[tuple[str, str]] = names if names is not None else Counter()
    tls.load_layer()  # now, in the cell: not on the first ClientHello, in the reading thread, past the deadline

    def by_name(pkt: Any) -> Any:
        t = pkt.tcp
        if t is None or not t.payload:
            return None  # the handshake (or not TCP): on, the flow's first bytes decide
        flow = pkt.flow
        head = flow.state.get("head", b"") + t.payload if flow is not None else t.payload
        need = tls.client_hello_length(head)
        if need is not None and len(head) < need and len(head) < HEAD_LIMIT and flow is not None:
            flow.state["head"] = head  # a ClientHello cut across segments: its next part decides
            return None
        name = requested_name(pkt, head)
        key = (name or "").lower().rstrip(".")
        if key in block:
            seen[name or "", "drop"] += 1
            if reset:
                pkt.reply(flags="R")  # the client's connection is reset now rather than left to time out
            return pkt.drop(flow=True)
        seen[name or "", "accept"] += 1
        return pkt.accept(flow=True)

    by_name.names = seen  # type: ignore[attr-defined]
    return by_name
