"""Flow verdicts in the kernel: the rest of a connection decided at its hook, without the queue.

A handler's ``pkt.accept(flow=True)`` or ``pkt.drop(flow=True)`` decides the
packet's whole connection.  This kernel gives queue messages no conntrack
attributes (``CONFIG_NETFILTER_NETLINK_GLUE_CT`` is off), so the decision
travels on the packet's mark:

* accept: the session owns a bit of the mark (a slot of :data:`SLOTS`, free
  in its namespace); the deciding packet gets the verdict ACCEPT with the bit
  set; an nftables chain of pktlab's at the same hook, right behind the queue
  rule's table (priority + 1), copies the bit into the connection's mark
  (``ct mark``) and clears it from the packet's.  A chain just in front of
  the queue rule's table (priority - 1) copies the bit back from the
  connection to every later packet, both directions, and
  ``-m mark --mark BIT/BIT -j ACCEPT`` in front of the queue rule accepts it
  in the kernel; the chain behind clears the bit again.  (An nftables accept
  would end only its own chain: the queue rule would still see the packet.
  iptables-nft makes ``-m mark`` native nftables expressions, where
  ``-m connmark`` would run xt_connmark through the compat layer for every
  packet.)
* drop: a dropped packet's connection is never confirmed by conntrack, so a
  mark cannot outlive it; pktlab adds the flow (addresses, protocol, ports,
  both directions) to an nftables set of its table, and a chain just in
  front of the queue rule's table (priority - 1) drops the set's packets,
  counting them per flow (its lookups join that chain with the first flow
  dropped: until then no packet pays for them).  TCP and UDP only: other protocols' flow drops are
  made by pktlab for the packets that reach the session.

Conntrack accounting (``nf_conntrack_acct``) gives each accepted
connection's packet counts; ctnetlink (pyroute2) lists the connections
carrying the bit and clears it (:meth:`FlowRules.clear`).  Conntrack runs at
priority -200, so a queue in the raw table at PREROUTING or OUTPUT, before
it, cannot decide flows.
"""

from __future__ import annotations

import os
import re
import socket
from dataclasses import dataclass
from typing import Any

from ..errors import SessionError
from . import netns as _netns
from . import nft_tables
from .rules import TABLE_PRIORITY, QueueRule, RuleSet

SLOTS = [1 << (16 + i) for i in range(12)]  # the accept bit of each session deciding flows: 0x10000..0x8000000
ALL_BITS = sum(SLOTS)
TABLE_PREFIX = "pktlab_flows_"
_TABLE_RE = re.compile(rf"^table inet (?P<name>{TABLE_PREFIX}(?P<pid>\d+)_\d+_s(?P<slot>\d+))$")
_ACCT = "/proc/sys/net/netfilter/nf_conntrack_acct"


@dataclass(frozen=True)
class KernelFlow:
    """One connection decided in the kernel, as conntrack has it."""

    verdict: str  # accept or drop
    proto: int
    src: str
    sport: int | None
    dst: str
    dport: int | None
    packets: int | None  # both directions, counted by the kernel since the connection began (None: no accounting)
    bytes: int | None


class FlowRules:
    """A session's flow verdicts in the kernel: its mark bits, its chain behind the queue, its rules in front."""

    def __init__(self, rules: RuleSet, queue_rule: QueueRule, netns: str | None, key: int) -> None:
        if queue_rule.table == "raw" and queue_rule.hook in ("PREROUTING", "OUTPUT"):
            raise SessionError(
                "flow verdicts need conntrack, which runs after the raw table at PREROUTING and OUTPUT; "
                "attach the session in another table (table='mangle') to decide flows"
            )
        self.rules = rules
        self.queue_rule = queue_rule
        self.netns = netns
        self.key = key
        self.slot = self._free_slot()
        self.accept_bit = SLOTS[self.slot]
        self.table = f"{TABLE_PREFIX}{os.getpid()}_{key}_s{self.slot}"
        self._acct_before: str | None = None
        self._drop_rules = False  # the set lookups join the chain in front with the first flow dropped
        self.installed = False

    def _free_slot(self) -> int:
        used = {int(m.group("slot")) for m in nft_tables.matching(self.netns, _TABLE_RE)}
        free = [i for i in range(len(SLOTS)) if i not in used]
        if not free:
            raise SessionError(
                f"{len(SLOTS)} sessions in this namespace already decide flows in the kernel (the mark has room for "
                "no more); detach one of them"
            )
        return free[0]

    def install(self) -> None:
        """The chains around the queue and the rule in front of it; conntrack accounting on in the namespace."""
        if self.installed:
            return
        r = self.queue_rule
        prio = TABLE_PRIORITY.get(r.table or "filter", 0)
        a = self.accept_bit
        keep = 0xFFFFFFFF & ~a
        key4 = "ipv4_addr . ipv4_addr . inet_proto . inet_service . inet_service"
        key6 = "ipv6_addr . ipv6_addr . inet_proto . inet_service . inet_service"
        chain = (
            f"table inet {self.table} {{\n"
            f"  set drop4 {{ type {key4}; counter; }}\n"
            f"  set drop6 {{ type {key6}; counter; }}\n"
            f"  chain before {{\n    type filter hook {r.hook.lower()} priority {prio - 1};\n"
            f"    ct mark & {a:#x} == {a:#x} meta mark set meta mark | {a:#x}\n  }}\n"
            f"  chain after {{\n    type filter hook {r.hook.lower()} priority {prio + 1};\n"
            f"    meta mark & {a:#x} == {a:#x} ct mark set ct mark | {a:#x} meta mark set meta mark & {keep:#x}\n"
            f"  }}\n}}\n"
        )
        proc = _netns.run(self.netns, ["nft", "-f", "-"], input=chain, check=False)
        if proc.returncode != 0:
            raise SessionError(f"nft could not add the flow verdicts' chains: {proc.stderr.strip()}")
        self._drop_rules = False
        try:
            self.put_front()
            self._accounting_on()
        except BaseException:
            _netns.run(self.netns, ["nft", "delete", "table", "inet", self.table], check=False)
            raise
        self.installed = True

    def put_front(self) -> None:
        """The rule in front of the queue rule that accepts the connections carrying the bit (again, after the
        session's rules were taken out of the path and put back)."""
        self.rules.accept_marked(self.key, self.queue_rule, self.accept_bit)

    def drop(self, proto: int, a: tuple[str, int | None], b: tuple[str, int | None]) -> bool:
        """Drop the flow between endpoints ``a`` and ``b`` in the kernel from now on; False for other than TCP/UDP."""
        if proto not in (6, 17) or a[1] is None or b[1] is None:
            return False
        name = "drop6" if ":" in a[0] else "drop4"
        p = "tcp" if proto == 6 else "udp"
        if not self._drop_rules:
            tup = "saddr . {0} daddr . meta l4proto . th sport . th dport"
            rules = (f"add rule inet {self.table} before ip {tup.format('ip')} @drop4 drop\n"
                     f"add rule inet {self.table} before ip6 {tup.format('ip6')} @drop6 drop\n")  # fmt: skip
            proc = _netns.run(self.netns, ["nft", "-f", "-"], input=rules, check=False)
            if proc.returncode != 0:
                raise SessionError(f"nft could not add the flow drop rules: {proc.stderr.strip()}")
            self._drop_rules = True
        elems = f"{{ {a[0]} . {b[0]} . {p} . {a[1]} . {b[1]}, {b[0]} . {a[0]} . {p} . {b[1]} . {a[1]} }}"
        proc = _netns.run(self.netns, ["nft", "add", "element", "inet", self.table, name, elems], check=False)
        if proc.returncode != 0:
            raise SessionError(f"nft could not add the flow to the kernel's drop set: {proc.stderr.strip()}")
        return True

    def _accounting_on(self) -> None:
        if os.path.exists(_ACCT):
            self._acct_before = _netns.call_in(self.netns, _set_accounting, "1", thread=True)
        else:
            self._acct_before = None

    def remove(self) -> None:
        """Clear the bits from every connection, remove the chain and the rules, restore accounting."""
        if not self.installed:
            return
        self.installed = False
        try:
            self.clear()
        finally:
            self.rules.drop_front(self.key)
            _netns.run(self.netns, ["nft", "delete", "table", "inet", self.table], check=False)
            if self._acct_before not in (None, "1"):
                _netns.call_in(self.netns, _set_accounting, str(self._acct_before), thread=True)

    def flows(self) -> list[KernelFlow]:
        """The flows decided in the kernel, with its packet counts: accepted (conntrack) and dropped (the set)."""
        if not self.installed:
            return []
        accepted = _netns.call_in(self.netns, _accepted_flows, self.accept_bit, thread=True)
        return accepted + self._dropped()

    def _dropped(self) -> list[KernelFlow]:
        """The drop sets' flows, both directions of each counted together."""
        import json

        acc: dict[tuple[Any, ...], tuple[int, int, tuple[str, int, str, int], str]] = {}
        for name in ("drop4", "drop6"):
            proc = _netns.run(self.netns, ["nft", "-j", "list", "set", "inet", self.table, name], check=False)
            if proc.returncode != 0:
                continue
            for item in json.loads(proc.stdout).get("nftables", []):
                for e in item.get("set", {}).get("elem", []):
                    el = e.get("elem", e)
                    src, dst, proto, sport, dport = el["val"]["concat"]
                    c = el.get("counter", {})
                    key = (proto, frozenset({(src, sport), (dst, dport)}))
                    packets, nbytes, first, _ = acc.get(key, (0, 0, (src, sport, dst, dport), proto))
                    acc[key] = (packets + c.get("packets", 0), nbytes + c.get("bytes", 0), first, proto)
        return [KernelFlow("drop", 6 if proto == "tcp" else 17, first[0], first[1], first[2], first[3], packets, nbytes)
                for packets, nbytes, first, proto in acc.values()]  # fmt: skip

    def clear(self, which: set[tuple[int, str, int | None, str, int | None]] | None = None) -> int:
        """Take flows off the kernel's hands (all, or those whose (proto, src, sport, dst, dport) is given)."""
        if not self.installed:
            return 0
        n = _netns.call_in(self.netns, _clear_accepted, self.accept_bit, which, thread=True)
        for f in self._dropped():
            if which is None or (f.proto, f.src, f.sport, f.dst, f.dport) in which:
                p = "tcp" if f.proto == 6 else "udp"
                name = "drop6" if ":" in f.src else "drop4"
                elems = (f"{{ {f.src} . {f.dst} . {p} . {f.sport} . {f.dport}, "
                         f"{f.dst} . {f.src} . {p} . {f.dport} . {f.sport} }}")  # fmt: skip
                _netns.run(self.netns, ["nft", "delete", "element", "inet", self.table, name, elems], check=False)
                n += 1
        return n


def _set_accounting(value: str) -> str:
    """Write conntrack's accounting switch of the calling thread's namespace; return what it was."""
    with open(_ACCT) as f:
        before = f.read().strip()
    if before != value:
        with open(_ACCT, "w") as f:
            f.write(value)
    return before


def _accepted_flows(accept_bit: int) -> list[KernelFlow]:
    """The connections carrying ``accept_bit`` in the calling thread's namespace."""
    from pyroute2.netlink.nfnetlink.nfctsocket import NFCTSocket

    out = []
    for family in (socket.AF_INET, socket.AF_INET6):
        ct = NFCTSocket(nfgen_family=family)
        try:
            out += [_flow(m, "accept") for m in ct.dump(mark=accept_bit, mark_mask=accept_bit)]
        finally:
            ct.close()
    return out


def _clear_accepted(accept_bit: int, which: set[tuple[int, str, int | None, str, int | None]] | None) -> int:
    """Take ``accept_bit`` off the connections (all, or those in ``which``); how many."""
    from pyroute2.netlink.nfnetlink.nfctsocket import NFCTAttrTuple, NFCTSocket

    n = 0
    for family in (socket.AF_INET, socket.AF_INET6):
        ct = NFCTSocket(nfgen_family=family)
        try:
            for m in list(ct.dump(mark=accept_bit, mark_mask=accept_bit)):
                f = _flow(m, "")
                if which is not None and (f.proto, f.src, f.sport, f.dst, f.dport) not in which:
                    continue
                tup = NFCTAttrTuple.from_netlink(family, m.get_attr("CTA_TUPLE_ORIG"))
                mark = (m.get_attr("CTA_MARK") or 0) & ~ALL_BITS
                try:
                    if f.proto in (6, 17):
                        ct.entry("set", mark=mark, tuple_orig=tup)
                    else:  # ctnetlink finds ICMP entries by fields pyroute2's tuple lacks: forget the entry
                        ct.entry("del", tuple_orig=tup)
                    n += 1
                except Exception:  # the connection ended meanwhile: nothing to clear
                    continue
        finally:
            ct.close()
    return n


def _flow(m: Any, verdict: str) -> KernelFlow:
    t = m.get_attr("CTA_TUPLE_ORIG")
    ip = t.get_attr("CTA_TUPLE_IP")
    pr = t.get_attr("CTA_TUPLE_PROTO")
    src = ip.get_attr("CTA_IP_V4_SRC") or ip.get_attr("CTA_IP_V6_SRC")
    dst = ip.get_attr("CTA_IP_V4_DST") or ip.get_attr("CTA_IP_V6_DST")
    packets = nbytes = None
    for name in ("CTA_COUNTERS_ORIG", "CTA_COUNTERS_REPLY"):
        c = m.get_attr(name)
        if c is not None:
            packets = (packets or 0) + (c.get_attr("CTA_COUNTERS_PACKETS") or 0)
            nbytes = (nbytes or 0) + (c.get_attr("CTA_COUNTERS_BYTES") or 0)
    return KernelFlow(verdict, pr.get_attr("CTA_PROTO_NUM"), src, pr.get_attr("CTA_PROTO_SRC_PORT"), dst,
                      pr.get_attr("CTA_PROTO_DST_PORT"), packets, nbytes)  # fmt: skip


def sweep_stale(netns: str | None) -> list[str]:
    """Delete the flow tables of pktlab processes that are gone (their marks would decide connections still)."""
    return nft_tables.sweep(netns, _TABLE_RE)
