"""pktlab: a Jupyter-first interactive packet lab.

``%load_ext pktlab`` in a notebook, or from Python::

    import pktlab
    lab = pktlab.Lab()
    s = pktlab.attach(1, rule="-p udp --dport 9000", netns=lab.server)

    @s.handler
    def drop_big(pkt):
        if len(pkt) > 500:
            return pkt.drop()

Heavy libraries (pandas, scapy, bokeh, IPython) load only when used.
"""

from __future__ import annotations

from . import bpf, datasets
from .bpf import BpfProgram
from .custom import addr4, addr6, bits, mac, protocol, raw, text, uint, varbytes
from .custom import registry as protocols
from .doctor import mode
from .errors import (
    FilterError,
    HandlerError,
    LabError,
    MissingToolError,
    PacketFormatError,
    PktlabError,
    PrivilegeError,
    QueueBusyError,
    RuleError,
    SessionError,
    TeardownError,
)
from .handlers import Handler, HandlerFailure
from .lab import Host, Lab, PingResult, UdpFlow, UdpResult
from .offload import Offload
from .packet import Packet
from .record import Entry, Record
from .replayer import ReplaySession, replay
from .session import Session, Status, attach
from .throughput import NetpipeResult, netpipe
from .tracing import Trace, Tracer, trace
from .verdicts import ACCEPT, DROP, REPEAT, Verdict

__version__ = "0.1.0"

__all__ = [
    "ACCEPT",
    "BpfProgram",
    "DROP",
    "Entry",
    "FilterError",
    "Offload",
    "REPEAT",
    "HandlerError",
    "Handler",
    "HandlerFailure",
    "Host",
    "Lab",
    "LabError",
    "NetpipeResult",
    "MissingToolError",
    "Packet",
    "PacketFormatError",
    "PingResult",
    "PktlabError",
    "PrivilegeError",
    "QueueBusyError",
    "Record",
    "ReplaySession",
    "RuleError",
    "Session",
    "SessionError",
    "TeardownError",
    "Status",
    "Trace",
    "Tracer",
    "UdpFlow",
    "UdpResult",
    "Verdict",
    "addr4",
    "addr6",
    "attach",
    "bits",
    "bpf",
    "datasets",
    "load_ipython_extension",
    "mac",
    "mode",
    "netpipe",
    "protocol",
    "protocols",
    "raw",
    "replay",
    "text",
    "trace",
    "uint",
    "varbytes",
    "unload_ipython_extension",
    "__version__",
]


def load_ipython_extension(ipython: object) -> None:
    """``%load_ext pktlab``: register ``%pktlab`` and ``%%pktlab``."""
    from .magic import load

    load(ipython)


def unload_ipython_extension(ipython: object) -> None:
    """``%unload_ext pktlab``: detach sessions and bring labs down."""
    from .magic import unload

    unload(ipython)
