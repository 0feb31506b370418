"""nftables trace events, read from the kernel's netlink messages, and the rules they name.

A packet whose trace flag is set (``meta nftrace set 1``; iptables' ``TRACE``)
makes every nftables chain it crosses send ``NFT_MSG_TRACE`` messages to the
netlink group ``NFNLGRP_NFTRACE`` of its namespace.  pktlab listens on a
netlink socket of its own in each traced namespace (:class:`TraceListener`)
rather than parsing ``nft monitor trace``'s text: the kernel's exact fields
(trace id, table, chain, rule handle, verdict, the packet's header bytes)
arrive as they are, and the socket's inode is what the kernel clock
(:mod:`.kernel_clock`) recognises to stamp each message with the time it was
sent.  Rules are named by their handle, looked up in ``nft -a list ruleset``
(:func:`rule_texts`).
"""

from __future__ import annotations

import os
import re
import select
import socket
import struct
import threading
from collections.abc import Callable
from dataclasses import dataclass

from ..errors import RuleError
from ..kernel import netns as _netns

NETLINK_NETFILTER = 12
NFNLGRP_NFTRACE = 9
SOL_NETLINK = 270
NETLINK_ADD_MEMBERSHIP = 1
NFT_MSG_TRACE = (10 << 8) | 17  # NFNL_SUBSYS_NFTABLES, NFT_MSG_TRACE

# enum nft_trace_attributes, enum nft_trace_types (include/uapi/linux/netfilter/nf_tables.h)
_TABLE, _CHAIN, _RULE_HANDLE, _TYPE, _VERDICT, _ID = 1, 2, 3, 4, 5, 6
_NETWORK_HEADER, _TRANSPORT_HEADER, _IIF, _OIF, _MARK, _NFPROTO, _POLICY = 8, 9, 10, 12, 14, 15, 16
TRACE_TYPES = {1: "policy", 2: "return", 3: "rule"}
FAMILIES = {1: "inet", 2: "ip", 3: "arp", 5: "netdev", 7: "bridge", 10: "ip6"}
_VERDICTS = {0: "drop", 1: "accept", 2: "stolen", 3: "queue", 4: "repeat", 5: "stop",
             -1: "continue", -2: "break", -3: "jump", -4: "goto", -5: "return"}  # fmt: skip


@dataclass(frozen=True)
class TraceMessage:
    """One ``NFT_MSG_TRACE`` message as the kernel sent it."""

    family: str  # the table's family: ip, ip6, inet ...
    trace_id: int
    kind: str  # rule, policy, return
    table: str
    chain: str
    handle: int | None  # the rule's handle (kind "rule" with a rule)
    verdict: str | None  # accept, drop, queue, continue, jump ...
    queue: int | None  # the queue number of a "queue" verdict
    target: str | None  # the chain of a jump or goto
    head: bytes  # the packet from its IP header (network + transport header), when the message carries it
    iif: int | None
    oif: int | None


def _attrs(data: bytes, start: int, end: int) -> dict[int, bytes]:
    out: dict[int, bytes] = {}
    i = start
    while i + 4 <= end:
        ln, typ = struct.unpack_from("=HH", data, i)
        if ln < 4 or i + ln > end:
            break
        out[typ & 0x3FFF] = data[i + 4 : i + ln]
        i += (ln + 3) & ~3
    return out


def _string(b: bytes | None) -> str:
    return b.split(b"\0", 1)[0].decode("utf-8", "replace") if b else ""


def _be32(b: bytes | None) -> int | None:
    return struct.unpack("!I", b[:4])[0] if b and len(b) >= 4 else None


def decode(msg: bytes) -> TraceMessage | None:
    """A trace message from one netlink message (header included); ``None`` if it is not one."""
    if len(msg) < 20:
        return None
    length, mtype = struct.unpack_from("=IH", msg, 0)
    if mtype != NFT_MSG_TRACE or length > len(msg):
        return None
    a = _attrs(msg, 20, length)
    kind = TRACE_TYPES.get(_be32(a.get(_TYPE)) or 0, "?")
    verdict = target = None
    queue = None
    code: int | None = None
    if _VERDICT in a:
        v = _attrs(a[_VERDICT], 0, len(a[_VERDICT]))
        raw = _be32(v.get(1))
        if raw is not None:
            # nft's own verdicts are -1..-5; a queue verdict carries its number in the upper 16 bits
            # (queue 32768 and above would read negative as a signed value)
            code = raw - (1 << 32) if raw >= (1 << 32) - 16 else raw
            target = _string(v.get(2)) or None
    elif _POLICY in a:
        code = _be32(a.get(_POLICY))
    if code is not None:
        verdict = _VERDICTS.get(code if code < 0 else code & 0xFF, str(code))
        if code >= 0 and code & 0xFF == 3:
            queue = code >> 16
    handle = struct.unpack("!Q", a[_RULE_HANDLE][:8])[0] if len(a.get(_RULE_HANDLE, b"")) >= 8 else None
    return TraceMessage(
        family=FAMILIES.get(msg[16], str(msg[16])),
        trace_id=_be32(a.get(_ID)) or 0,
        kind=kind,
        table=_string(a.get(_TABLE)),
        chain=_string(a.get(_CHAIN)),
        handle=handle,
        verdict=verdict,
        queue=queue,
        target=target,
        head=a.get(_NETWORK_HEADER, b"") + a.get(_TRANSPORT_HEADER, b""),
        iif=_be32(a.get(_IIF)),
        oif=_be32(a.get(_OIF)),
    )


def split(datagram: bytes) -> list[bytes]:
    """The netlink messages of one datagram read from a netlink socket."""
    out = []
    i = 0
    while i + 16 <= len(datagram):
        (ln,) = struct.unpack_from("=I", datagram, i)
        if ln < 16:
            break
        out.append(datagram[i : i + ln])
        i += (ln + 3) & ~3
    return out


class TraceListener:
    """A netlink socket in one namespace that receives its nftables trace messages, read by a thread.

    ``on_message(n, message)`` is called for the n-th message (1, 2, ...) in
    the order the kernel queued them on the socket; ``inode`` names the
    socket for the kernel clock.
    """

    def __init__(self, netns: str | None, on_message: Callable[[int, TraceMessage | None], None]) -> None:
        self.netns = netns
        self.on_message = on_message
        self.sock = _netns.call_in(netns, self._open)
        self.inode = os.fstat(self.sock.fileno()).st_ino
        self.overflows = 0  # times the socket's buffer was full (ENOBUFS): messages the kernel could not deliver
        self._n = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._read, name=f"pktlab-nftrace-{netns}", daemon=True)

    @staticmethod
    def _open() -> socket.socket:
        s = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_NETFILTER)
        try:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
            s.bind((0, 0))
            s.setsockopt(SOL_NETLINK, NETLINK_ADD_MEMBERSHIP, NFNLGRP_NFTRACE)
        except OSError as exc:
            s.close()
            raise RuleError(f"cannot listen to nftables trace events ({exc.strerror}); run as root") from None
        return s

    def start(self) -> TraceListener:
        self._thread.start()
        return self

    def _read(self) -> None:
        while not self._stop.is_set():
            ready, _, _ = select.select([self.sock], [], [], 0.1)
            if not ready:
                continue
            try:
                data = self.sock.recv(1 << 16)
            except BlockingIOError:
                continue
            except OSError as exc:
                if exc.errno == 105:  # ENOBUFS: the kernel dropped messages for this socket
                    self.overflows += 1
                    continue
                return
            for raw in split(data):
                self._n += 1
                self.on_message(self._n, decode(raw))

    def stop(self) -> None:
        """Stop reading (after what the socket already holds) and close the socket."""
        self.sock.setblocking(False)
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(2)
        self.sock.close()


_TABLE_LINE = re.compile(r"^table (\S+) (\S+) \{")
_CHAIN_LINE = re.compile(r"^\s*chain (\S+) \{")
_RULE_LINE = re.compile(r"^\s*(.+?) # handle (\d+)$")
_COUNTER = re.compile(r"\s*counter packets (\d+) bytes \d+")


def rule_texts(netns: str | None) -> dict[tuple[str, str, str, int], str]:
    """Every rule of a namespace's ruleset by (family, table, chain, handle), as ``nft`` writes it (no counters);
    pktlab's own rules named for what made them (:func:`label`)."""
    return {k: named for k, (named, _, _) in _labelled(netns).items()}


def drop_counters(netns: str | None) -> dict[tuple[str, str, str, int], tuple[str, int]]:
    """The rules of a namespace that drop and count: (family, table, chain, handle) -> (rule, packets counted)."""
    return {k: (named, n) for k, (named, rule, n) in _labelled(netns).items() if n is not None and _DROPS.search(rule)}


def parse_ruleset(text: str) -> dict[tuple[str, str, str, int], str]:
    """The rules of ``nft -a list ruleset``'s output by (family, table, chain, handle), counters left out."""
    return {k: rule for k, (rule, _, _) in _parse(text).items()}


def label(name: str, rule: str) -> str:
    """What a rule pktlab installed is, for a person: the link condition or the session that made it.

    ``name`` is the pktlab name in the rule's comment (``loss-eth0-1``, ``delay-eth0``, a session's
    name) and ``rule`` its text as nft writes it.
    """
    if m := re.fullmatch(r"loss-(.+)-\d+", name):
        share = re.search(r"meta random & 2147483647 < (\d+)", rule)
        what = f"{int(share.group(1)) / 2**31:.1%} loss" if share else "random loss"
        return f"link condition: {what} arriving on {m.group(1)}"
    if re.fullmatch(r"trace-\d+", name):
        return "pktlab.trace: the packet is followed from here"
    if m := re.fullmatch(r"delay-(.+)", name):
        queue = re.search(r"queue num (\d+)", rule)
        return f"link condition: the delay line of {m.group(1)}" + (f" (queue {queue.group(1)})" if queue else "")
    return f"pktlab session {name}: {rule}"


_DROPS = re.compile(r"\bdrop$")


def _labelled(netns: str | None) -> dict[tuple[str, str, str, int], tuple[str, str, int | None]]:
    """The ruleset: (family, table, chain, handle) -> (the rule as a person reads it, as nft writes it, its counter).

    nft does not show iptables' comments, where pktlab's rules carry their name; iptables-save does,
    in the same order within each chain, so a rule's position in its chain joins the two views.
    """
    from ..errors import MissingToolError
    from ..kernel.rules import saved_rules, tag_name

    names: dict[tuple[str, str, str, int], str] = {}
    for family, tool in (("ip", "iptables"), ("ip6", "ip6tables")):
        try:
            saved = saved_rules(netns, tool)
        except (RuleError, MissingToolError):
            continue
        seen: dict[tuple[str, str, str], int] = {}
        for r in saved:
            where = (family, r.table, r.tokens[1])
            seen[where] = seen.get(where, -1) + 1
            if (name := tag_name(r.tokens)) is not None:
                names[(*where, seen[where])] = name
    out = {}
    listed = _netns.run(netns, ["nft", "-a", "list", "ruleset"], check=False).stdout
    for key, (rule, packets, index) in _parse(listed).items():
        name = names.get((*key[:3], index))
        out[key] = (label(name, rule) if name else rule, rule, packets)
    return out


def _parse(text: str) -> dict[tuple[str, str, str, int], tuple[str, int | None, int]]:
    """(family, table, chain, handle) -> (the rule's text without its counter, its packet count, its position)."""
    out: dict[tuple[str, str, str, int], tuple[str, int | None, int]] = {}
    family = table = chain = ""
    index = 0
    for line in text.splitlines():
        if m := _TABLE_LINE.match(line):
            family, table, chain = m.group(1), m.group(2), ""
        elif m := _CHAIN_LINE.match(line):
            chain, index = m.group(1), 0
        elif chain and (m := _RULE_LINE.match(line)) and not line.strip().startswith(("type ", "chain ")):
            c = _COUNTER.search(m.group(1))
            rule = _COUNTER.sub("", m.group(1)).strip()
            out[(family, table, chain, int(m.group(2)))] = (rule, int(c.group(1)) if c else None, index)
            index += 1
    return out
