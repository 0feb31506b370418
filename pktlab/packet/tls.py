"""The server name a TLS ClientHello asks for (SNI), read by scapy's TLS layer.

Why scapy: pktlab depends on it already, its TLS layer is maintained with the rest of scapy and parses every
ClientHello field and extension (TLS 1.0-1.3), so a handler gets the name without a parser of pktlab's own.  A
ClientHello may be cut across TCP segments: :func:`client_hello_length` says how many bytes of the stream make the
first record, so a handler can keep the first segments of a flow (``pkt.flow.state``) until it is whole.
"""

from __future__ import annotations

from typing import Any

HANDSHAKE, CLIENT_HELLO = 0x16, 0x01
_LAYER: tuple[Any, Any, Any] | None = None  # scapy's TLS, ClientHello and server-name classes, once imported


def load_layer() -> tuple[Any, Any, Any]:
    """scapy's TLS layer (its record, ClientHello and server-name extension classes), imported once.

    The import takes about 0.3 s here (scapy's TLS layer loads the cryptography package).  A handler must
    not pay that on its first ClientHello: in the queue's reading thread it would hold that packet, and its
    flow, past a session's deadline.  :func:`pktlab.name_filter` calls this when it makes its handler; a
    handler of one's own that calls :func:`server_name` can call it in the cell that defines it.
    """
    global _LAYER
    if _LAYER is None:
        from scapy.layers.tls.extensions import TLS_Ext_ServerName
        from scapy.layers.tls.handshake import TLSClientHello
        from scapy.layers.tls.record import TLS

        _LAYER = (TLS, TLSClientHello, TLS_Ext_ServerName)
    return _LAYER


def client_hello_length(data: bytes) -> int | None:
    """The bytes the stream's first TLS record takes, if ``data`` starts a ClientHello (None: it does not)."""
    if len(data) < 6 or data[0] != HANDSHAKE or data[1] != 3 or data[5] != CLIENT_HELLO:
        return None
    return 5 + int.from_bytes(data[3:5], "big")


def server_name(data: bytes) -> str | None:
    """The name (SNI) of the ClientHello that ``data`` starts with; "" for one without a name; None if ``data`` is
    not a whole ClientHello (another protocol, or only its first part: see :func:`client_hello_length`).

    The first call that reads a ClientHello imports scapy's TLS layer unless :func:`load_layer` did.
    """
    need = client_hello_length(data)
    if need is None or len(data) < need:
        return None
    TLS, TLSClientHello, TLS_Ext_ServerName = load_layer()  # noqa: N806 (scapy's class names)
    hello = TLS(bytes(data[:need])).getlayer(TLSClientHello)
    if hello is None:
        return None
    for ext in hello.ext or []:
        if isinstance(ext, TLS_Ext_ServerName):
            for entry in ext.servernames or []:
                name = entry.servername
                return name.decode("ascii", "replace") if isinstance(name, bytes) else str(name)
    return ""
