"""Sending a whole IP packet into a namespace's stack: raw sockets with the header included.

A packet sent here leaves like one from a local program: through the
namespace's routing and its OUTPUT and POSTROUTING hooks, with its source
address as written (a router can answer in the name of the server behind
it).  Each socket carries ``SENT_MARK`` (``SO_MARK``), and every queue rule
pktlab installs skips packets with that bit (``rules.QueueRule.spec``), so
a handler never meets its own answers and an answer can never loop through
its queue.
"""

from __future__ import annotations

import errno
import os
import socket
import threading

from ..errors import SendError
from . import netns
from ._resend import Resender

SENT_MARK = 0x20000000  # one bit of skb->mark: "sent by pktlab", skipped by pktlab's queue rules
SO_MARK = getattr(socket, "SO_MARK", 36)
IP_MTU, IPV6_MTU = 14, 24  # <linux/in.h>, <linux/in6.h>: a connected socket's path MTU

_REASONS = {
    errno.ENETUNREACH: "there is no route to {dst} in {where}; add one or answer a reachable address",
    errno.EHOSTUNREACH: "{dst} is unreachable from {where} (no neighbour answers); check the lab's links",
    errno.EMSGSIZE: "the {size}-byte packet is larger than the MTU of the route to {dst} in {where}; send less",
    errno.EPERM: "the firewall of {where} refused it (an OUTPUT or POSTROUTING rule drops it); allow it there",
    errno.EACCES: "the firewall of {where} refused it; allow it there",
    errno.EINVAL: "the kernel refused its header as invalid; check its version, lengths and addresses",
    errno.ENOBUFS: "the send buffer of {where} is full; send fewer packets at once",
}


def _open(version: int) -> socket.socket:
    family = socket.AF_INET if version == 4 else socket.AF_INET6
    s = socket.socket(family, socket.SOCK_RAW, socket.IPPROTO_RAW)  # IPPROTO_RAW: the header is ours
    try:
        s.setsockopt(socket.SOL_SOCKET, SO_MARK, SENT_MARK)
    except OSError:
        s.close()
        raise
    return s


class RawSender:
    """Raw sockets in namespace ``netns_name`` (None: this process's), opened at the first send."""

    def __init__(self, netns_name: str | None) -> None:
        self.netns = netns_name
        self._socks: dict[int, socket.socket] = {}
        self._mtus: dict[str, int] = {}
        self._lock = threading.Lock()
        self._resender = Resender(self, SENT_MARK)

    def _socket(self, version: int) -> socket.socket:
        s = self._socks.get(version)
        if s is not None:
            return s
        with self._lock:
            s = self._socks.get(version)
            if s is None:
                try:
                    s = netns.call_in(self.netns, _open, version)
                except PermissionError:
                    raise SendError("sending a packet needs root (CAP_NET_RAW); run the notebook as root") from None
                except OSError as exc:
                    raise SendError(
                        f"cannot open a raw IPv{version} socket in {self._where()} ({exc.strerror}); "
                        + ("is IPv6 disabled there?" if version == 6 else "is the namespace still there?")
                    ) from None
                self._socks[version] = s
            return s

    def path_mtu(self, data: bytes) -> int:
        """The MTU of the route that the IP packet ``data`` takes from this namespace (cached per destination)."""
        version = data[0] >> 4
        dst = socket.inet_ntop(socket.AF_INET if version == 4 else socket.AF_INET6,
                               data[16:20] if version == 4 else data[24:40])  # fmt: skip
        mtu = self._mtus.get(dst)
        if mtu is None:
            family = socket.AF_INET if version == 4 else socket.AF_INET6
            with netns.socket_in(self.netns, family, socket.SOCK_DGRAM) as probe:
                probe.connect((dst, 9))
                if version == 4:
                    mtu = probe.getsockopt(socket.IPPROTO_IP, IP_MTU)
                else:
                    mtu = probe.getsockopt(socket.IPPROTO_IPV6, IPV6_MTU)
            self._mtus[dst] = mtu
        return mtu

    def _where(self) -> str:
        return f"namespace {self.netns}" if self.netns else "the host namespace"

    def fileno(self, version: int) -> int:
        """The raw IPv4 or IPv6 socket's descriptor (opened at the first call)."""
        return self._socket(version).fileno()

    def failure(self, err: int, data: bytes) -> SendError:
        """The error for a send of the IP packet ``data`` that failed with ``err``, naming the cause."""
        version = data[0] >> 4
        dst = socket.inet_ntop(socket.AF_INET if version == 4 else socket.AF_INET6,
                               data[16:20] if version == 4 else data[24:40])  # fmt: skip
        why = _REASONS.get(err)
        text = why.format(dst=dst, where=self._where(), size=len(data)) if why else os.strerror(err)
        return SendError(f"the packet to {dst} was not sent: {text}")

    @property
    def resender(self) -> Resender:
        """What re-sends rewritten packets (``Dispatcher.reinject``): a GSO TCP packet is cut into segments."""
        return self._resender

    def send(self, data: bytes, mark: int | None = None) -> None:
        """Send the IP packet ``data`` (checked and checksummed by the caller); raise SendError with the cause.

        ``mark``: the packet leaves with this mark (pktlab's sent bit added), as a verdict's mark would.
        A packet longer than its route's MTU is refused.
        """
        self._resender.send(bytes(data), mark, False)

    def close(self) -> None:
        with self._lock:
            self._resender.forget()
            for s in self._socks.values():
                s.close()
            self._socks.clear()
