"""A session's kernel handlers installed: one nftables table in front of its queue, swapped in one transaction.

The table ``pktlab_kh_<pid>_<key>_<hook>_<table>`` (family inet) holds, at the session's hook:

- ``select``, a base chain just in front of the queue rule's table (priority - 2, in front of the flow verdicts'
  chains too): the session's own match (its iptables rule translated by ``iptables-translate``), not a packet
  pktlab sent itself, not a connection the session accepted as a flow (its bit in the connection's mark) — then
  ``jump handlers``;
- ``handlers``: ``jump`` to each handler's first chain, in the chain's order; a handler's ``return`` (or its end)
  comes back here and the next one runs; what none decided goes on to the queue;
- one chain per block of each handler (:mod:`pktlab.kernel.handler_compile`), named ``g<generation>h<i>_<block>``,
  each rule with a ``counter`` and the comment ``<handler>:<line>``;
- ``clear``, a base chain just behind the queue rule's table (priority + 1): takes :data:`KERNEL_ACCEPT` off the
  mark again.

A kernel handler's accept sets :data:`KERNEL_ACCEPT` and ends the table's chains; ``-m mark --mark BIT/BIT -j
ACCEPT`` in front of the queue rule (iptables, with the session's match) then accepts the packet where a verdict
from the queue would have.  Every change (a handler added, replaced, switched off) writes the table's rules again in
one ``nft -f`` transaction (:meth:`KernelHandlers.script`), so a packet meets the old rules or the new ones, never a
mix.  The
table goes with the session (detach), with its process (:func:`sweep_stale`: ``pktlab doctor --clean``, and every
attach) and with a lab's namespace.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass

from ..errors import HandlerError, MissingToolError
from . import netns as _netns
from . import nft_tables
from .handler_compile import KERNEL_ACCEPT, CompiledHandler
from .rules import TABLE_PRIORITY, QueueRule, RuleSet

TABLE_PREFIX = "pktlab_kh_"
_TABLE_RE = re.compile(rf"^table inet (?P<name>{TABLE_PREFIX}(?P<pid>\d+)_\d+_(?P<where>[a-z]+_[a-z]+))$")
_TRANSLATED = re.compile(r"^nft '?add rule (?:ip|ip6) \S+ \S+ (.*?)(?: counter)?'?$")


@dataclass(frozen=True)
class RuleCount:
    """One rule of a kernel handler and the packets it matched."""

    handler: str
    chain: str
    line: int
    rule: str
    packets: int
    bytes: int


def _translate(rule: QueueRule, tool: str) -> str:
    """The session's match (what its queue rule selects) in nftables' words."""
    matches = [*rule.matches()]
    translator = "iptables-translate" if tool == "iptables" else "ip6tables-translate"
    try:
        proc = subprocess.run([translator, "-A", rule.hook, *matches], capture_output=True, text=True, timeout=30,
                              check=False)  # fmt: skip
    except FileNotFoundError:
        raise MissingToolError(f"{translator} is not installed; run `make setup` (Debian's iptables has it)") from None
    out = proc.stdout.strip()
    m = _TRANSLATED.match(out)
    if proc.returncode != 0 or m is None or out.startswith("nft #"):
        raise HandlerError(
            f"the session's match ({' '.join(rule.match) or 'all packets'}"
            f"{', a filter=' if rule.prefix else ''}) has no nftables form ({out or proc.stderr.strip()}), so kernel "
            "handlers cannot select the session's packets: attach with iptables matches nftables knows "
            "(-p, --dport, -s, -d, -i, -o ...) and no filter=, or run the handler in Python"
        )
    return m.group(1)


class KernelHandlers:
    """A session's compiled handlers in its namespace's kernel (see the module's docstring)."""

    def __init__(self, rules: RuleSet, queue_rule: QueueRule, netns: str | None, key: int) -> None:
        self.rules = rules
        self.queue_rule = queue_rule
        self.netns = netns
        self.key = key
        table = (queue_rule.table or "filter").lower()
        self.table = f"{TABLE_PREFIX}{os.getpid()}_{key}_{queue_rule.hook.lower()}_{table}"
        self.installed: list[CompiledHandler] = []
        self.flow_bit: int | None = None  # the session's flow-accept bit: those connections skip its handlers
        self._front = False
        self.gen = 0  # the generation of the handlers' chains (each install makes new ones)
        self._chains: list[str] = []  # the installed generation's chains
        self._next_chains: list[str] = []
        selects = []
        families = {"ipv4": ["iptables"], "ipv6": ["ip6tables"], "both": ["iptables", "ip6tables"]}[queue_rule.family]
        for tool in families:
            nfproto = "ipv4" if tool == "iptables" else "ipv6"
            selects.append(f"meta nfproto {nfproto} {_translate(queue_rule, tool)}")
        self.selects = selects

    def _others_here(self) -> list[str]:
        """Kernel handler tables of other sessions at this hook and table in this namespace."""
        mine = self.table.split("_", 4)[-1]
        return [m.group("name") for m in nft_tables.matching(self.netns, _TABLE_RE)
                if m.group("name") != self.table and m.group("where") == mine]  # fmt: skip

    def script(self, handlers: Sequence[CompiledHandler]) -> str:
        """The nft commands that make the table hold ``handlers`` (in chain order), replacing what it held.

        One transaction: every rule is flushed, the last generation's chains deleted, this generation's made.  A
        packet's walk through the table (select, handlers, a handler's chains) reads one generation of the rules,
        so it meets the old handlers or the new ones, never a mix.
        """
        r = self.queue_rule
        prio = TABLE_PRIORITY.get(r.table or "filter", 0)
        t = f"inet {self.table}"
        hook = r.hook.lower()
        lines = [f"add table {t}",
                 f"add chain {t} select {{ type filter hook {hook} priority {prio - 2}; }}",
                 f"add chain {t} clear {{ type filter hook {hook} priority {prio + 1}; }}",
                 f"add chain {t} handlers", f"flush table {t}"]  # fmt: skip
        lines += [f"delete chain {t} {c}" for c in self._chains]
        self.gen += 1
        names = [[f"g{self.gen}h{i}_{c}" for c in h.chains] for i, h in enumerate(handlers)]
        lines += [f"add chain {t} {c}" for chains in names for c in chains]
        skip_flow = f"ct mark & {self.flow_bit:#x} != {self.flow_bit:#x} " if self.flow_bit else ""
        lines += [f"add rule {t} select {sel} {skip_flow}jump handlers" for sel in self.selects]
        keep = 0xFFFFFFFF & ~KERNEL_ACCEPT
        lines.append(f"add rule {t} clear meta mark & {KERNEL_ACCEPT:#x} == {KERNEL_ACCEPT:#x} "
                     f"meta mark set meta mark & {keep:#x}")  # fmt: skip
        for i, h in enumerate(handlers):
            lines.append(f"add rule {t} handlers jump {names[i][0]}")
            for rule in h.rules:
                text = re.sub(r"@(\w+)", lambda m, i=i: f"g{self.gen}h{i}_{m.group(1)}", rule.text)
                head, verdict = _split_verdict(text)
                words = [f"add rule {t} g{self.gen}h{i}_{rule.chain}", head, "counter", verdict,
                         f"comment {json.dumps(f'{h.name}:{rule.line}')}"]  # fmt: skip
                lines.append(" ".join(w for w in words if w))
        self._next_chains = [c for chains in names for c in chains]
        return "\n".join(lines) + "\n"

    def install(self, handlers: Sequence[CompiledHandler]) -> None:
        """Make the table hold ``handlers`` (all at once; none: the table and its front rule go)."""
        if not handlers:
            self.remove()
            return
        others = self._others_here()
        if others:
            raise HandlerError(
                f"another pktlab session already runs kernel handlers at {self.queue_rule.table}/{self.queue_rule.hook}"
                f" here ({others[0]}); the kernel cannot keep two sessions' handlers apart at one hook: detach it, or "
                "run this handler in Python"
            )
        script = self.script(handlers)
        proc = _netns.run(self.netns, ["nft", "-f", "-"], input=script, check=False)
        if proc.returncode != 0:
            raise HandlerError(_explain(proc.stderr, any(h.rewrites for h in handlers)))
        self._chains = self._next_chains
        if not self._front:
            try:
                self.rules.accept_marked(self.key, self.queue_rule, KERNEL_ACCEPT)
            except BaseException:
                self.remove()
                raise
            self._front = True
        self.installed = list(handlers)

    def remove(self) -> None:
        """Take the table and the front rule away (idempotent)."""
        if self._front:
            self.rules.drop_front(self.key)
            self._front = False
        _netns.run(self.netns, ["nft", "delete", "table", "inet", self.table], check=False)
        self.installed = []
        self._chains = []

    def counts(self) -> list[RuleCount]:
        """Every rule of the installed handlers with its counter, in chain order."""
        if not self.installed:
            return []
        proc = _netns.run(self.netns, ["nft", "-j", "list", "table", "inet", self.table], check=False)
        if proc.returncode != 0:
            return []
        by_chain: dict[str, list[dict[str, int]]] = {}
        for item in json.loads(proc.stdout).get("nftables", []):
            rule = item.get("rule")
            if rule:
                counter = next((e["counter"] for e in rule["expr"] if "counter" in e), {})
                by_chain.setdefault(rule["chain"], []).append(counter)
        out = []
        for i, h in enumerate(self.installed):
            seen: dict[str, int] = {}
            for r in h.rules:
                k = seen.get(r.chain, 0)
                seen[r.chain] = k + 1
                counters = by_chain.get(f"g{self.gen}h{i}_{r.chain}", [])
                c = counters[k] if k < len(counters) else {}
                out.append(RuleCount(h.name, r.chain, r.line, r.text.replace("@", ""), c.get("packets", 0),
                                     c.get("bytes", 0)))  # fmt: skip
        return out


_VERDICTS = ("accept", "drop", "return")


def _split_verdict(text: str) -> tuple[str, str]:
    """A rule's matches and statements, and its verdict (the counter goes between them)."""
    words = text.split()
    if words and words[-1] in _VERDICTS:
        return " ".join(words[:-1]), words[-1]
    if len(words) >= 2 and words[-2] in ("goto", "jump"):
        return " ".join(words[:-2]), " ".join(words[-2:])
    return text, ""


def _explain(stderr: str, rewrites: bool) -> str:
    text = stderr.strip().splitlines()
    first = text[0] if text else "nft failed"
    if rewrites and "Operation not permitted" in stderr:
        return (
            "this kernel refuses header rewrites (nftables payload statements) in a namespace of a user namespace, "
            "where a lab of an ordinary user lives; matches and verdicts compile, rewrites do not: run the handler "
            f"in Python (pktlab re-sends its rewrites from the host), or as root ({first})"
        )
    return f"nft refused the kernel handler's rules: {' '.join(text)[-600:]}"


def sweep_stale(netns: str | None) -> list[str]:
    """Delete the kernel handler tables of pktlab processes that are gone."""
    return nft_tables.sweep(netns, _TABLE_RE)


__all__ = ["KernelHandlers", "RuleCount", "sweep_stale"]
