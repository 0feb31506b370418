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

import importlib as _importlib
import typing as _typing

from . import pipeline as _pipeline
from . import version as _version

if _typing.TYPE_CHECKING:
    from . import datasets
    from .doctor import mode, privilege_mode
    from .errors import (
        CopyRangeError,
        FilterError,
        HandlerError,
        KernelHandlerError,
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
    from .lab.web import FetchResult, WebServer
    from .measure.copy_cost import queue_cost
    from .measure.drops import Drop, Drops, DropWatch, drops
    from .measure.netpipe import NetpipeResult, netpipe
    from .measure.tftp_cache import TftpCache
    from .measure.timeline import Trace
    from .measure.tracer import Tracer, trace
    from .packet.model import Packet, PacketRepr, SkbInfo
    from .packet.tls import server_name as tls_server_name
    from .packet.user_protocols import addr4, addr6, bits, mac, protocol, raw, text, uint, varbytes
    from .packet.user_protocols import registry as protocols
    from .packet.verdicts import ACCEPT, DROP, REPEAT, Verdict
    from .pipeline.dpi import name_filter
    from .pipeline.export import to_pcap
    from .pipeline.flows import Flow
    from .pipeline.handlers import Handler, HandlerFailure
    from .pipeline.record import Entry, Record
    from .pipeline.replay import ReplaySession, replay
    from .pipeline.seqadj import SeqAdjError
    from .pipeline.session import Session, Status, attach

__version__ = _version.VERSION

# name -> (module, attribute; None: the module itself).  Loaded at first use (PEP 562), so that
# importing one part of pktlab (a lab helper, a traffic program) does not import every other part.
_EXPORTS: dict[str, tuple[str, str | None]] = {
    "datasets": (".datasets", None),
    "mode": (".doctor", "mode"),
    "privilege_mode": (".doctor", "privilege_mode"),
    "CopyRangeError": (".errors", "CopyRangeError"),
    "FilterError": (".errors", "FilterError"),
    "HandlerError": (".errors", "HandlerError"),
    "KernelHandlerError": (".errors", "KernelHandlerError"),
    "LabError": (".errors", "LabError"),
    "MissingToolError": (".errors", "MissingToolError"),
    "PacketFormatError": (".errors", "PacketFormatError"),
    "PktlabError": (".errors", "PktlabError"),
    "PrivilegeError": (".errors", "PrivilegeError"),
    "QueueBusyError": (".errors", "QueueBusyError"),
    "RuleError": (".errors", "RuleError"),
    "SendError": (".errors", "SendError"),
    "SessionError": (".errors", "SessionError"),
    "TeardownError": (".errors", "TeardownError"),
    "bpf": (".kernel.bpf", None),
    "BpfProgram": (".kernel.bpf", "BpfProgram"),
    "Offload": (".kernel.offload", "Offload"),
    "Conditions": (".lab.conditions", "Conditions"),
    "Link": (".lab.conditions", "Link"),
    "Host": (".lab.network", "Host"),
    "Lab": (".lab.network", "Lab"),
    "PingResult": (".lab.network", "PingResult"),
    "UdpFlow": (".lab.network", "UdpFlow"),
    "UdpResult": (".lab.network", "UdpResult"),
    "FetchResult": (".lab.web", "FetchResult"),
    "WebServer": (".lab.web", "WebServer"),
    "queue_cost": (".measure.copy_cost", "queue_cost"),
    "Drop": (".measure.drops", "Drop"),
    "Drops": (".measure.drops", "Drops"),
    "DropWatch": (".measure.drops", "DropWatch"),
    "drops": (".measure.drops", "drops"),
    "NetpipeResult": (".measure.netpipe", "NetpipeResult"),
    "netpipe": (".measure.netpipe", "netpipe"),
    "TftpCache": (".measure.tftp_cache", "TftpCache"),
    "Trace": (".measure.timeline", "Trace"),
    "Tracer": (".measure.tracer", "Tracer"),
    "trace": (".measure.tracer", "trace"),
    "Packet": (".packet.model", "Packet"),
    "PacketRepr": (".packet.model", "PacketRepr"),
    "SkbInfo": (".packet.model", "SkbInfo"),
    "tls_server_name": (".packet.tls", "server_name"),
    "addr4": (".packet.user_protocols", "addr4"),
    "addr6": (".packet.user_protocols", "addr6"),
    "bits": (".packet.user_protocols", "bits"),
    "mac": (".packet.user_protocols", "mac"),
    "protocol": (".packet.user_protocols", "protocol"),
    "raw": (".packet.user_protocols", "raw"),
    "text": (".packet.user_protocols", "text"),
    "uint": (".packet.user_protocols", "uint"),
    "varbytes": (".packet.user_protocols", "varbytes"),
    "protocols": (".packet.user_protocols", "registry"),
    "ACCEPT": (".packet.verdicts", "ACCEPT"),
    "DROP": (".packet.verdicts", "DROP"),
    "REPEAT": (".packet.verdicts", "REPEAT"),
    "Verdict": (".packet.verdicts", "Verdict"),
    "Flow": (".pipeline.flows", "Flow"),
    "Handler": (".pipeline.handlers", "Handler"),
    "HandlerFailure": (".pipeline.handlers", "HandlerFailure"),
    "Entry": (".pipeline.record", "Entry"),
    "Record": (".pipeline.record", "Record"),
    "ReplaySession": (".pipeline.replay", "ReplaySession"),
    "replay": (".pipeline.replay", "replay"),
    "to_pcap": (".pipeline.export", "to_pcap"),
    "name_filter": (".pipeline.dpi", "name_filter"),
    "SeqAdjError": (".pipeline.seqadj", "SeqAdjError"),
    "Session": (".pipeline.session", "Session"),
    "Status": (".pipeline.session", "Status"),
    "attach": (".pipeline.session", "attach"),
}

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
    "KernelHandlerError",
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
    "PacketRepr",
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
    "FetchResult",
    "WebServer",
    "name_filter",
    "tls_server_name",
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
    "to_pcap",
    "text",
    "trace",
    "uint",
    "varbytes",
    "unload_ipython_extension",
    "__version__",
]


def _dashboard(owner: object, period: float, window: float) -> object:
    from .notebook import require

    require("s.dashboard()")  # bokeh and jupyter_bokeh come with pktlab[notebook]
    from .notebook.dashboard import Dashboard

    return Dashboard(owner, period, window)


def _controls(owner: object, period: float) -> object:
    from .notebook import require

    require("s.controls()")  # ipywidgets comes with pktlab[notebook]
    from .notebook.controls import Controls

    return Controls(owner, period)


def _monitor(owner: object, period: float, window: float) -> object:
    from .notebook.livestats import Monitor

    return Monitor(owner, period, window)


def _dataset(source: object) -> object:
    from .datasets import resolve

    return resolve(source)  # type: ignore[arg-type]


def _dataset_names() -> list[str]:
    from .datasets import names

    return names()


# what the pipeline uses of later stages (it declares the hooks; it imports none of those stages)
_pipeline.HOOKS.update(dashboard=_dashboard, controls=_controls, monitor=_monitor, dataset=_dataset,
                       datasets=_dataset_names)  # fmt: skip


def load_ipython_extension(ipython: object) -> None:
    """``%load_ext pktlab``: register ``%pktlab`` and ``%%pktlab``."""
    from .notebook.magic import load

    load(ipython)


def unload_ipython_extension(ipython: object) -> None:
    """``%unload_ext pktlab``: detach sessions and bring labs down."""
    from .notebook.magic import unload

    unload(ipython)


def __getattr__(name: str) -> _typing.Any:
    """The public name ``name``, imported from its module at first use."""
    try:
        module, attribute = _EXPORTS[name]
    except KeyError:
        raise AttributeError(f"module 'pktlab' has no attribute {name!r}") from None
    value = _importlib.import_module(module, __name__)
    if attribute is not None:
        value = getattr(value, attribute)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))
