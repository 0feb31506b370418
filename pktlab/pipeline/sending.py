"""A session's own packets: ``pkt.reply`` and ``Session.send``, the same for a queue and a capture.

A :class:`Sender` takes a checked packet (see :mod:`pktlab.packet.replies`),
hands it to where the session's packets go — the kernel of the session's
namespace (a raw socket, :class:`pktlab.kernel.sender.RawSender`) or, in a
replay, the output capture, in order with the verdicts — and records it in
the session's record with verdict ``"sent"`` (direction ``"sent"`` in
``s.df``), so that the dashboard and the DataFrame show it beside what
passed.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from ..errors import SessionError
from ..packet.model import HOOK_NAMES
from ._ring import Ring
from .record import SENT

OUTPUT = HOOK_NAMES.index("OUTPUT")
ETHERTYPE = {4: b"\x08\x00", 6: b"\x86\xdd"}


class Sender:
    """Sends a session's own packets and records them.

    ``deliver(data, time)`` puts the IP packet where the session's packets go;
    ``link`` is ``"ethernet"`` when that place takes Ethernet frames (a replay
    of an Ethernet capture): the frame then gets the answered frame's
    addresses swapped (zeros for a packet that answers none).
    ``ready()`` says why sending is impossible now (None: it is possible).
    ``if_name(index)`` names an interface of the place the session's packets come from
    (``pkt.indev``/``pkt.outdev``; default: this process's namespace).
    """

    def __init__(
        self,
        ring: Ring,
        deliver: Callable[[bytes, float], None],
        *,
        link: Callable[[], str] = lambda: "ip",
        clock: Callable[[Any], float] | None = None,
        ready: Callable[[], str | None] = lambda: None,
        if_name: Callable[[int], str | None] | None = None,
    ) -> None:
        self.if_name = if_name
        self.ring = ring
        self.deliver = deliver
        self.link = link
        self.clock = clock or (lambda answering: time.time())
        self.ready = ready

    def send(self, pkt: Any, answering: Any = None) -> None:
        """Send ``pkt`` (a checked :class:`~pktlab.Packet` from its IP header); ``answering``: the packet it answers."""
        why = self.ready()
        if why is not None:
            raise SessionError(why)
        ip = bytes(pkt)
        data = _ethernet(answering, ip[0] >> 4) + ip if self.link() == "ethernet" else ip
        t = self.clock(answering)
        self.deliver(data, t)
        self.ring.append(t, 0, OUTPUT, len(ip), ip[: self.ring.snaplen], SENT, None, 0, None, False)


def _ethernet(answering: Any, version: int) -> bytes:
    """An Ethernet header for a sent packet: the answered frame's, addresses swapped (zeros if none)."""
    if answering is not None and answering.eth is not None:
        head = bytes(answering)[:12]  # an Ethernet frame's packet: its bytes start with the frame
        return head[6:12] + head[0:6] + ETHERTYPE[version]
    return bytes(12) + ETHERTYPE[version]
