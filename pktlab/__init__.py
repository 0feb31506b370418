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

from . import datasets
from .doctor import mode, privilege_mode
from .errors import (
    CopyRangeError,
    FilterError,
    HandlerError,
    LabError,
    MissingToolError,
    PacketFormatError,
    PktlabError,
    PrivilegeError,
    QueueBusyError,
    RuleError,
    SendError,
    SessionError,
    TeardownError,
)
from .kernel import bpf
from .kernel.bpf import BpfProgram
from .kernel.offload import Offload
from .lab.conditions import Conditions, Link
from .lab.network import Host, Lab, PingResult, UdpFlow, UdpResult
from .measure.copy_cost import queue_cost
from .measure.drops import Drop, Drops, DropWatch, drops
from .measure.netpipe import NetpipeResult, netpipe
from .measure.tftp_cache import TftpCache
from .measure.timeline import Trace
from .measure.tracer import Tracer, trace
from .packet.model import Packet, SkbInfo
from .packet.user_protocols import addr4, addr6, bits, mac, protocol, raw, text, uint, varbytes
from .packet.user_protocols import registry as protocols
from .packet.verdicts import ACCEPT, DROP, REPEAT, Verdict
from .pipeline.flows import Flow
from .pipeline.handlers import Handler, HandlerFailure
from .pipeline.record import Entry, Record
from .pipeline.replay import ReplaySession, replay
from .pipeline.seqadj import SeqAdjError
from .pipeline.session import Session, Status, attach

__version__ = "0.1.0"

__all__ = [
    "ACCEPT",
    "BpfProgram",
    "Conditions",
    "DROP",
    "Drop",
    "DropWatch",
    "Drops",
    "Entry",
    "FilterError",
    "Flow",
    "Offload",
    "REPEAT",
    "HandlerError",
    "Handler",
    "HandlerFailure",
    "Host",
    "CopyRangeError",
    "Lab",
    "LabError",
    "Link",
    "NetpipeResult",
    "MissingToolError",
    "Packet",
    "SkbInfo",
    "PacketFormatError",
    "PingResult",
    "PktlabError",
    "PrivilegeError",
    "QueueBusyError",
    "Record",
    "ReplaySession",
    "RuleError",
    "SendError",
    "Session",
    "SeqAdjError",
    "SessionError",
    "TeardownError",
    "Status",
    "Trace",
    "TftpCache",
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
    "drops",
    "load_ipython_extension",
    "mac",
    "mode",
    "netpipe",
    "privilege_mode",
    "queue_cost",
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
    from .notebook.magic import load

    load(ipython)


def unload_ipython_extension(ipython: object) -> None:
    """``%unload_ext pktlab``: detach sessions and bring labs down."""
    from .notebook.magic import unload

    unload(ipython)
