"""The object a handler sees: one queued packet.

Building a ``Packet`` parses nothing; the protocol views (``pkt.ip``,
``pkt.udp`` ...) decode only the fields that are read.  Writes through a
view, ``pkt.raw[...] = ...`` or a payload change mark the packet dirty; its
IP length and IP/TCP/UDP/ICMP checksums are then recomputed once, when the
session gives the verdict.  Verdict methods do not talk to the kernel: they
return a :class:`~pktlab.Verdict` that the handler returns, so the
session alone issues exactly one verdict per packet.
"""

from __future__ import annotations

import ipaddress
import struct
from typing import Any, NamedTuple, Protocol

from ..errors import PacketFormatError, SessionError
from ._core import PacketCore, as_bytes, as_int, fix_packet, set_view_classes
from .replies import reply_to
from .user_protocols import registry as protocol_registry
from .verdicts import ACCEPT, DROP, REPEAT, Verdict
from .views import ICMP, TCP, UDP, ICMPv6, IPv4, IPv6
from .views.dns import DNS
from .views.ethernet import Ethernet
from .views.http import HTTP
from .views.http import find as find_http
from .views.ip import LATER_FRAGMENT, ipv6_upper

HOOK_NAMES = ("PREROUTING", "INPUT", "FORWARD", "OUTPUT", "POSTROUTING")
PROTO_NAMES = {1: "icmp", 6: "tcp", 17: "udp", 58: "icmpv6", 47: "gre", 50: "esp", 132: "sctp"}


class Meta(Protocol):
    """What a source knows about a packet besides its bytes (NetfilterQueue's Packet fits)."""

    id: int
    hook: int
    mark: int
    indev: int
    outdev: int
    hw_protocol: int

    def get_hw(self) -> bytes | None: ...


def _if_name(index: int) -> str | None:
    if not index:
        return None
    import socket

    try:
        return socket.if_indextoname(index)
    except OSError:
        return str(index)


class RawBytes:
    """Byte-level access: ``pkt.raw[20:28]`` reads, ``pkt.raw[20:22] = b"..."`` writes."""

    __slots__ = ("_pkt",)

    def __init__(self, pkt: Packet) -> None:
        self._pkt = pkt

    def __getitem__(self, key: int | slice) -> Any:
        pkt = self._pkt
        if pkt._wire:  # only the first part was copied: a read beyond it (or from the end) needs more
            if isinstance(key, slice):
                start, stop = key.start or 0, key.stop
                reverse = key.step is not None and key.step < 0
                end = -1 if reverse or stop is None or stop < 0 or start < 0 else stop
            else:
                end = -1 if key < 0 else key + 1
            if end < 0 or end > pkt._size():  # the message is made only here: reads are a hot path
                pkt._need(end, f"pkt.raw[{key.start}:{key.stop}]" if isinstance(key, slice) else f"pkt.raw[{key}]")
        if isinstance(key, slice):
            start, stop = key.start or 0, key.stop
            if key.step is None and start >= 0 and (stop is None or stop >= 0):  # no copy of the whole packet
                return pkt._bytes(start, pkt._size() if stop is None else stop)
            return bytes(pkt._buf[key])
        if 0 <= key < pkt._size():
            return pkt._bytes(key, key + 1)[0]
        return pkt._buf[key]

    def __setitem__(self, key: int | slice, value: Any) -> None:
        if self._pkt._wire:
            self._pkt._writable()  # refuses: only the first part of the packet was copied
        if isinstance(key, slice):
            n = len(self._pkt._buf)
            past = [i for i in (key.start, key.stop) if i is not None and not -n <= i <= n]
            if past:
                raise IndexError(
                    f"raw[{key.start}:{key.stop}] reaches past the end of the {n}-byte packet; write within it "
                    "(a longer packet: set_payload(), or a view's payload)"
                )
        buf = self._pkt._writable()
        buf[key] = value
        self._pkt._dirty = True
        self._pkt._relayout()

    def __len__(self) -> int:
        return len(self._pkt)

    def hex(self, sep: str = " ") -> str:
        self._pkt._need(-1, "pkt.raw.hex()")
        return bytes(self._pkt._buf).hex(sep)

    def __repr__(self) -> str:
        return f"<raw {len(self)} bytes {bytes(self._pkt._buf[:32]).hex(' ')}{' …' if len(self) > 32 else ''}>"


class SkbInfo(NamedTuple):
    """``pkt.skb_info``: the kernel's flags for the packet's buffer."""

    gso: bool
    csum_not_ready: bool
    csum_not_verified: bool


class Packet(PacketCore):
    """One packet held by the kernel until its verdict: ``Packet(meta, data, time, link="ip")``.

    ``link="ethernet"`` reads ``data`` as an Ethernet frame (from a capture file):
    ``pkt.eth`` is then its header and the IP views start after it.

    The buffer, flags and the layer properties ``ip``, ``ipv6``, ``udp``,
    ``tcp``, ``icmp`` and ``icmpv6`` live in the compiled core; ``time`` is
    when the reader got the packet (seconds since the epoch).
    """

    __slots__ = ()

    def __getattr__(self, name: str) -> Any:
        """``pkt.<protocol>`` for user-defined protocols (see :func:`pktlab.protocol`)."""
        if name.startswith("_"):
            raise AttributeError(name)
        try:
            return protocol_registry.lookup(self, name)
        except AttributeError:
            raise AttributeError(
                f"a packet has no attribute or protocol {name!r}; user-defined protocols: "
                f"{', '.join(protocol_registry.names) or 'none'} (define one with @pktlab.protocol)"
            ) from None

    @classmethod
    def copied_part(cls, meta: Any, data: bytes, length: int, time: float = 0.0, link: str = "ip") -> Packet:
        """A packet of ``length`` bytes of which only ``data``, its first part, is here (a copy range, a snaplen)."""
        if len(data) > length:
            raise ValueError(f"a packet of {length} bytes cannot have {len(data)} of them copied")
        pkt = cls(meta, data, time, link)
        pkt._wire = length if len(data) < length else 0
        return pkt

    def like(self, data: bytes) -> Packet:
        """A packet with this one's kernel metadata, time and link type, holding ``data`` (e.g. the bytes it had)."""
        return Packet(self._meta, data, self.time, "ethernet" if self._eth else "ip")

    @property
    def ip_offset(self) -> int:
        """Where the IP header starts in the bytes: 0 from a queue, 14 or 18 in an Ethernet frame, -1 for none."""
        return self._l3

    @property
    def copied_bytes(self) -> bytes | bytearray:
        """The bytes that are here, as they are now (not fixed up, not copied; only :attr:`copied` of them)."""
        return self._lend()  # (a bytearray, once written, that the caller could write into)

    # -- metadata -------------------------------------------------------------
    @property
    def id(self) -> int:
        return self._meta.id if self._meta else 0

    @property
    def hook(self) -> str:
        """The netfilter hook the packet was queued at (``"INPUT"``...)."""
        h = self._meta.hook if self._meta else 1
        return HOOK_NAMES[h] if 0 <= h < len(HOOK_NAMES) else str(h)

    @property
    def mark(self) -> int:
        if self._mark is not None:
            return self._mark
        return self._meta.mark if self._meta else 0

    @property
    def skb_info(self) -> SkbInfo:
        """What the kernel said of this packet's buffer (NFQA_SKB_INFO; all False for captures and hand-made ones).

        ``gso``: a GSO packet, queued whole (a session attached with ``gso=True``),
        larger than the link's MTU; the kernel cuts it into segments later.
        ``csum_not_ready``: its TCP/UDP checksum field holds only the
        pseudo-header's sum; the kernel (or the card) completes it when it
        sends the packet unchanged.  A rewritten packet gets a full checksum
        from pktlab: the kernel takes a rewritten payload as final (a GSO one
        has its checksums made again per segment).  ``csum_not_verified``: a
        received packet whose checksum nobody has checked yet.
        """
        v = self._skbinfo
        return SkbInfo(bool(v & 2), bool(v & 1), bool(v & 4))

    @property
    def uid(self) -> int | None:
        """The user id owning the local socket the packet belongs to, as the queue said (NFQA_UID).

        None when the kernel gave none: a forwarded packet, one with no local socket (yet), a capture.
        """
        return self._owner[0] if self._owner is not None else None

    @property
    def gid(self) -> int | None:
        """The group id of the local socket the packet belongs to (NFQA_GID); None as for :attr:`uid`."""
        return self._owner[1] if self._owner is not None else None

    @property
    def indev(self) -> str | None:
        """The interface the packet came in on (None: none, e.g. a locally sent one), named in its session's place."""
        return self._name_of(self._meta.indev) if self._meta else None

    @property
    def outdev(self) -> str | None:
        """The interface the packet goes out on (None: not known yet at its hook), named in its session's place."""
        return self._name_of(self._meta.outdev) if self._meta else None

    def _name_of(self, index: int) -> str | None:
        names = getattr(self._send, "if_name", None)  # a lab's interfaces are named in the lab
        return names(index) if names is not None else _if_name(index)

    @property
    def hw(self) -> str | None:
        """Source MAC address when the kernel gave one (not at OUTPUT/PREROUTING of local packets)."""
        raw = self._meta.get_hw() if self._meta else None
        return ":".join(f"{b:02x}" for b in raw[:6]) if raw else None

    # -- bytes ----------------------------------------------------------------
    def __bytes__(self) -> bytes:
        self._need(-1, "bytes(pkt)")
        if self._dirty:
            self._fixup()
        return bytes(self._buf)

    @property
    def raw(self) -> RawBytes:
        return RawBytes(self)

    def set_payload(self, data: bytes, *, fix_checksums: bool = False) -> None:
        """Replace the IP packet (IP header onward) with ``data``.

        A link header in front (a packet of an Ethernet capture) stays, with its
        EtherType set for the new IP version, so the IP header is found where it was.
        """
        data = data if type(data) is bytes else as_bytes(data, "set_payload()")
        if not data:
            raise PacketFormatError("set_payload() got no bytes; an empty packet cannot be sent; use drop() instead")
        if self._eth:
            if self._l3 < 0:
                raise PacketFormatError(
                    "this frame carries no IP packet, so set_payload() has no IP header to replace; "
                    "write the frame's bytes with pkt.raw[...] instead"
                )
            etype = {4: b"\x08\x00", 6: b"\x86\xdd"}.get(data[0] >> 4)
            if etype is None:
                raise PacketFormatError(
                    f"set_payload() got bytes that are not an IPv4 or IPv6 packet (version {data[0] >> 4}); "
                    "an Ethernet frame here carries IP"
                )
            data = bytes(self._buf[: self._l3 - 2]) + etype + data
        self._buf = bytearray(data)
        self._wire = 0  # the new packet is all here
        self._modified = True
        self._dirty = fix_checksums
        self._relayout()

    def set_mark(self, mark: int) -> None:
        """Set the packet's netfilter mark (given with the verdict)."""
        mark = mark if type(mark) is int else as_int(mark, "the mark", 32)
        if not 0 <= mark <= 0xFFFFFFFF:
            raise ValueError(f"mark {mark} does not fit in 32 bits")
        self._mark = mark

    @property
    def modified(self) -> bool:
        return self._modified

    # -- verdicts -------------------------------------------------------------
    def accept(self, *, mark: int | None = None, flow: bool = False) -> Verdict:
        """Return this from a handler to let the packet through.

        ``flow=True`` accepts the rest of its connection too: live, the kernel
        accepts its later packets without queueing them (see
        :mod:`pktlab.kernel.flow_rules`); packets of it that still reach the
        session (already queued, or replayed) get the verdict without the
        handlers.
        """
        if mark is not None:
            self.set_mark(mark)
        if flow:
            self._decide_flow("accept")
        return ACCEPT

    def drop(self, *, flow: bool = False) -> Verdict:
        """Return this from a handler to drop the packet; ``flow=True`` drops the rest of its connection too."""
        if flow:
            self._decide_flow("drop")
        return DROP

    def _decide_flow(self, verdict: str) -> None:
        f = self.flow
        if f is None or f.table is None:
            raise SessionError(
                "flow=True needs a packet of a session's connection (IP, from a queue or a replay); "
                "give this packet its own verdict"
            )
        f.table.decide(f, verdict)

    def repeat(self, *, mark: int | None = None) -> Verdict:
        """Return this to re-inject the packet at the start of its hook (set a mark to avoid a loop)."""
        if mark is not None:
            self.set_mark(mark)
        return REPEAT

    # -- layers ---------------------------------------------------------------
    @property
    def eth(self) -> Ethernet | None:
        """The Ethernet header of a frame read with ``link="ethernet"`` (None for packets from a queue)."""
        return Ethernet(self, 0) if self._eth and len(self._buf) >= 14 else None

    @property
    def version(self) -> int:
        """The IP version (4 or 6), 0 when the packet carries no IP."""
        l3 = self._l3
        return self._buf[l3] >> 4 if 0 <= l3 < len(self._buf) else 0

    @property
    def proto(self) -> int:
        """The transport protocol number (6 TCP, 17 UDP ...), -1 when not IP."""
        return self._upper()[0]

    @property
    def flow(self) -> Any:
        """The connection this packet belongs to (:class:`pktlab.Flow`), or None (not IP, or not from a session).

        The first read starts the session's flow tracking (see :mod:`pktlab.pipeline.flows`).
        """
        f = self._flow
        if f is not None and getattr(f, "is_flow_table", False):
            f = f.observe(self)
            self._flow = f
        return f

    @property
    def transport(self) -> UDP | TCP | ICMP | None:
        """The TCP, UDP, ICMP or ICMPv6 layer, whichever the packet has."""
        p = self._upper()[0]
        return (
            self.tcp if p == 6 else self.udp if p == 17 else self.icmp if p == 1 else self.icmpv6 if p == 58 else None
        )

    @property
    def dns(self) -> DNS | None:
        """The DNS message of UDP port 53 (either direction), or of TCP port 53 after its length prefix."""
        u = self.udp
        if u is not None:
            if 53 not in (u.sport, u.dport):
                return None
            self._need(-1, "pkt.dns")
            return DNS(self, u.payload_offset)
        t = self.tcp
        if t is not None and 53 in (t.sport, t.dport):
            off = t.payload_offset
            self._need(-1, "pkt.dns")
            return DNS(self, off + 2) if len(self._buf) >= off + 2 + 12 else None
        return None

    @property
    def http(self) -> HTTP | None:
        """The HTTP/1.x head at the start of a TCP payload on port 80, 8000 or 8080 (either direction)."""
        return find_http(self)

    @property
    def payload(self) -> bytes | None:
        """The transport payload (after the TCP/UDP/ICMP header)."""
        t = self.transport
        return t.payload if t is not None else None

    @payload.setter
    def payload(self, data: bytes) -> None:
        t = self.transport
        if t is None:
            raise PacketFormatError("this packet has no TCP/UDP/ICMP layer whose payload could be set")
        t.payload = data

    @property
    def scapy(self) -> Any:
        """The packet parsed by scapy (IP or IPv6); costly, for exploring rather than hot paths."""
        from scapy.layers.inet import IP
        from scapy.layers.inet6 import IPv6 as ScapyIPv6
        from scapy.packet import Raw

        data = bytes(self)
        if self._eth:
            from scapy.layers.l2 import Ether

            return Ether(data)
        v = data[0] >> 4 if data else 0
        return IP(data) if v == 4 else ScapyIPv6(data) if v == 6 else Raw(data)

    @scapy.setter
    def scapy(self, pkt: Any) -> None:
        self.set_payload(bytes(pkt))

    # -- answers ---------------------------------------------------------------
    def make_reply(
        self,
        payload: Any = None,
        *,
        segment: Any = None,
        flags: str | int = "PA",
        seq: int | None = None,
        ack: int | None = None,
    ) -> Packet:
        """The packet that answers this one, built but not sent (see :meth:`reply` for the arguments)."""
        return Packet(None, reply_to(self, payload, segment=segment, flags=flags, seq=seq, ack=ack))

    def reply(
        self,
        payload: Any = None,
        *,
        segment: Any = None,
        flags: str | int = "PA",
        seq: int | None = None,
        ack: int | None = None,
    ) -> Packet:
        """Send an answer to this packet's sender, from its destination; returns the answer.

        UDP: ``payload`` is the answer's payload, ports swapped.  ICMP/ICMPv6 echo
        request: an echo reply (``payload`` defaults to the request's data).  TCP:
        a segment from the destination port carrying ``payload`` with ``flags``
        (default ``"PA"``), ``seq`` (default: what the request acknowledged) and
        ``ack`` (default: the end of the request's data), or your own ``segment``
        (TCP header and data).  The handler usually drops the request then.  The
        answer goes out of the session's namespace (a replay: into its output),
        is recorded with verdict "sent", and never comes back through a queue.
        """
        sender = self._send
        if sender is None:
            raise SessionError(
                "this packet did not come from a session, so there is nowhere to send its answer; "
                "pkt.make_reply(...) builds the answer without sending it"
            )
        answer = Packet(None, reply_to(self, payload, segment=segment, flags=flags, seq=seq, ack=ack))
        sender.send(answer, answering=self)
        return answer

    # -- verdict-time fix-ups ---------------------------------------------------
    def _fixup(self) -> None:
        """Recompute IP lengths and checksums after writes (once, before the verdict; in C)."""
        fix_packet(self)

    # -- display --------------------------------------------------------------
    def summary(self) -> str:
        return self.repr_later().summary()

    def _repr_html_(self) -> str:
        """In a notebook: the layers and their fields beside a hex dump, each field's bytes marked."""
        from .display import packet_html

        return packet_html(self)

    def __repr__(self) -> str:
        return str(self.repr_later())

    def repr_later(self) -> PacketRepr:
        """What ``repr(pkt)`` shows, taken now (the packet's first bytes and numbers) and written out when read.

        A handler's failure keeps this of its packet: formatting addresses costs microseconds, which a
        handler that raises on every packet would pay for each one, mostly for text nobody reads.
        """
        l3 = self._l3
        eth_type = (self.eth.type if self.eth else None) if l3 < 0 else None
        head = self._bytes(l3, l3 + 128) if l3 >= 0 else b""
        return PacketRepr(self.id if self._meta is not None else None, self.hook if self._meta is not None else None,
                          len(self), head, l3 >= 0, eth_type, self._modified)  # fmt: skip


class PacketRepr:
    """A packet's ``repr`` taken for later (:meth:`Packet.repr_later`): ``str()`` writes it out, once."""

    __slots__ = ("_id", "_hook", "_size", "_head", "_ip", "_eth_type", "_modified", "_text")

    def __init__(self, pid: int | None, hook: str | None, size: int, head: bytes, ip: bool, eth_type: int | None,
                 modified: bool) -> None:  # fmt: skip
        self._id, self._hook, self._size, self._head = pid, hook, size, head
        self._ip, self._eth_type, self._modified = ip, eth_type, modified
        self._text: str | None = None

    def summary(self) -> str:
        """Protocol, addresses, ports and length (``pkt.summary()``)."""
        if not self._ip:
            return f"non-IP frame (type {self._eth_type:#06x}) len={self._size}" if self._eth_type is not None \
                else f"raw len={self._size}"  # fmt: skip
        s = summarize(self._head)
        where = f"{s['src']}:{s['sport']}" if s["sport"] is not None else str(s["src"])
        to = f"{s['dst']}:{s['dport']}" if s["dport"] is not None else str(s["dst"])
        return f"{s['proto']} {where} > {to} len={self._size}"

    def __str__(self) -> str:
        if self._text is None:
            where = f"#{self._id} {self._hook} " if self._id is not None else ""  # made in the notebook: no hook
            self._text = f"<Packet {where}{self.summary()}{' modified' if self._modified else ''}>"
        return self._text

    __repr__ = __str__


def summarize(head: bytes) -> dict[str, Any]:
    """Protocol, addresses and ports from a packet's first bytes (no exceptions)."""
    out: dict[str, Any] = {"proto": "?", "src": None, "dst": None, "sport": None, "dport": None}
    try:
        v = head[0] >> 4
        if v == 4 and len(head) >= 20:
            ihl = (head[0] & 15) * 4
            p = head[9]
            out["src"] = str(ipaddress.IPv4Address(head[12:16]))
            out["dst"] = str(ipaddress.IPv4Address(head[16:20]))
            off = ihl
            frag = int.from_bytes(head[6:8], "big") & 0x1FFF
        elif v == 6 and len(head) >= 40:
            out["src"] = str(ipaddress.IPv6Address(head[8:24]))
            out["dst"] = str(ipaddress.IPv6Address(head[24:40]))
            try:
                p, off, frag6 = ipv6_upper(head, 0)
            except PacketFormatError:  # extension headers beyond the recorded bytes: protocol unknown ("?")
                return out
            frag = frag6 == LATER_FRAGMENT
        else:
            out["proto"] = "raw"
            return out
        out["proto"] = PROTO_NAMES.get(p, str(p))
        if p in (6, 17) and not frag and len(head) >= off + 4:
            out["sport"], out["dport"] = struct.unpack_from("!HH", head, off)
    except (IndexError, ValueError, struct.error):
        pass
    return out


set_view_classes(IPv4, IPv6, UDP, TCP, ICMP, ICMPv6)
protocol_registry.reserve(dir(Packet))
