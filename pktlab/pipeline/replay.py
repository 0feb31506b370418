"""Replay: packets from a capture file through the same dispatcher and handler chain, no root needed.

``pktlab.replay("datasets/lab-dns.pcap")`` (or a dataset name) gives a
:class:`~pktlab.Session` whose source is the capture instead of a kernel
queue: the same class, the same ``@s.handler``, ``status()``, ``df``,
``dashboard()``, ``controls()``, ``hold()``, ``pause()`` and ``step()``.
``run()`` passes every packet through the one compiled dispatcher the queue
uses (first verdict wins, ``None`` passes on, a handler that raises or
returns garbage gets the error verdict, a handler past the deadline is skipped
until it returns, writes are fixed up); ``write_pcap()`` writes what would
have left the kernel.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from typing import Any

from ..errors import SessionError, brief
from ..options import REPLAY
from .chainowner import hook
from .session import Session, Status

# the names a replay had before it became a Session (kept importable)
ReplaySession = Session
ReplayStatus = Status


def replay(source: str | os.PathLike[str], **options: Any) -> Session:
    """A session reading the capture file (or dataset name) ``source``; add handlers, then ``run()``.

    Options (declared in ``pktlab.options.REPLAY``): ``filter`` (tcpdump syntax), ``hook`` (what ``pkt.hook``
    says), ``default``, ``on_error``, ``record_size``, ``snaplen``, ``deadline`` (s, default 1), ``name``.
    """
    if not isinstance(source, str | os.PathLike):
        what = f"{type(source).__name__} {brief(source)}"  # (a list of a million packets: not all of it)
        fix = ""
        if isinstance(source, Iterable):  # a packet (bytes, scapy), or packets, in memory
            fix = "; write packets in memory to a capture first (from pktlab.testing import capture; "
            fix += "capture('packets.pcap', packets))"
        raise SessionError(
            f"replay() takes a capture's path or a dataset name ({', '.join(hook('datasets')())}), not {what}{fix}"
        )
    known = [o.name for o in REPLAY]
    unknown = sorted(set(options) - set(known))
    if unknown:
        raise SessionError(f"replay() has no option {', '.join(unknown)}; use {', '.join(known)}")
    return Session.from_capture(str(hook("dataset")(source)), **options)
