"""The iptables rules that feed a queue.

Every rule pktlab installs carries ``-m comment --comment pktlab:<pid>:<session>``
so that it can be found again: ``remove()`` deletes exactly one session's
rules, :func:`sweep_stale` deletes those whose process is dead.  Rules are
added and removed with ``iptables-restore --noflush``, one transaction per
table, so a set of rules appears or disappears at once.  ``--queue-bypass``
is on by default: with no reader bound the kernel accepts the packet
instead of dropping it (fail-open).
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import NamedTuple

from ..errors import MissingToolError, RuleError
from ..options import NETFILTER_HOOKS
from . import netns
from .bpf import compile as _compile
from .proc import pid_alive
from .sender import SENT_MARK

HOOKS = NETFILTER_HOOKS
# Where a session's queue rule goes unless table= says otherwise.  An ACCEPT ends only the chain (the
# table) it is given in; the packet then meets every later table at the hook.  An observing session
# (the default) queues in the mangle table, which every hook has and which runs after conntrack and
# before nat and filter: what it accepts still meets the firewall's rules (the filter table) as if
# pktlab were not there.  A deciding session queues at the top of the filter table where the hook has
# one, like a firewall rule: what it accepts skips the rules below it in that chain.
OBSERVING_TABLE = dict.fromkeys(HOOKS, "mangle")
DECIDING_TABLE = {
    "PREROUTING": "mangle",
    "INPUT": "filter",
    "FORWARD": "filter",
    "OUTPUT": "filter",
    "POSTROUTING": "mangle",
}
TABLE_HOOKS = {
    "raw": {"PREROUTING", "OUTPUT"},
    "mangle": set(HOOKS),
    "filter": {"INPUT", "FORWARD", "OUTPUT"},
    "nat": {"PREROUTING", "INPUT", "OUTPUT", "POSTROUTING"},
}
FAMILIES = {"ipv4": ("iptables",), "ipv6": ("ip6tables",), "both": ("iptables", "ip6tables")}
_NOT_IN_MATCH = {
    "-j",
    "--jump",
    "-g",
    "--goto",
    "-A",
    "--append",
    "-I",
    "--insert",
    "-D",
    "--delete",
    "-R",
    "--replace",
    "-t",
    "--table",
    "-F",
    "--flush",
    "-X",
    "-N",
    "-P",
    "-Z",
}
TAG_PREFIX = "pktlab:"
# Rules in front of a queue rule (offloaded verdicts) run for every packet they see, so they
# carry no comment match (through iptables-nft a comment is a compat match that costs ~4 % of
# the kernel's packet rate here).  Their tag is in their BPF program instead: it starts with
# three loads of constants that the next instruction overwrites, FRONT_MAGIC, the owner's PID
# and the rule's number (see bpf.BpfProgram.tagged).
FRONT_MAGIC = 0x706B746C  # "pktl"
# the netfilter priority of each iptables table (nftables chains of pktlab's go just before or after one)
TABLE_PRIORITY = {"raw": -300, "mangle": -150, "nat": -100, "filter": 0, "security": 50}
_TAG_RE = re.compile(r"^pktlab:(\d+):(.+)$")
# Packets pktlab sends itself (pkt.reply, Session.send) carry SENT_MARK and pass its rules by
# (a native nft mark compare, no compat match): a handler never meets its own answers.
SKIP_SENT = ("-m", "mark", "!", "--mark", f"{SENT_MARK:#x}/{SENT_MARK:#x}")


def _has_control(text: str) -> bool:
    return any(ord(c) < 0x20 or ord(c) == 0x7F for c in text)


def make_tag(session: str, pid: int | None = None) -> str:
    """The comment that marks a session's rules."""
    return f"{TAG_PREFIX}{pid or os.getpid()}:{session}"


def parse_match(match: str | Sequence[str] | None) -> list[str]:
    """Split and check an iptables match (``"-p udp --dport 9000"``)."""
    if match is None:
        return []
    try:
        tokens = shlex.split(match) if isinstance(match, str) else list(match)
    except ValueError as exc:
        raise RuleError(f"cannot read the rule {match!r} ({exc}); check its quotes") from None
    ctl = [t for t in tokens if _has_control(t)]
    if ctl:
        raise RuleError(f"the rule {match!r} holds a control character (a line break?); write it on one line")
    bad = [t for t in tokens if t in _NOT_IN_MATCH]
    if bad:
        raise RuleError(
            f"the rule may only hold match options, not {' '.join(bad)}; pktlab adds the chain "
            "and the NFQUEUE target itself (pick the chain with hook=/--hook)"
        )
    return tokens


@dataclass(frozen=True)
class QueueRule:
    """One NFQUEUE rule: where it hooks, what it matches, which queue it feeds."""

    queue: int
    hook: str = "INPUT"
    match: tuple[str, ...] = ()
    table: str | None = None
    bypass: bool = True
    family: str = "ipv4"
    prefix: tuple[str, ...] = ()  # extra matches put in front (e.g. a BPF filter)
    skip_sent: bool = True  # leave out packets pktlab sent itself (a link's delay line takes them too)
    last: bool = False  # at the end of its chain, not the top (a link's delay line: after the user's rules)
    decide: bool = False  # the filter table's chain (DECIDING_TABLE), not mangle's, unless table= is given

    def __post_init__(self) -> None:
        hook = self.hook.upper()
        object.__setattr__(self, "hook", hook)
        if hook not in HOOKS:
            raise RuleError(f"unknown hook {self.hook!r}; use one of {', '.join(HOOKS)}")
        table = self.table or (DECIDING_TABLE if self.decide else OBSERVING_TABLE)[hook]
        object.__setattr__(self, "table", table)
        if table not in TABLE_HOOKS:
            raise RuleError(f"unknown table {table!r}; use one of {', '.join(TABLE_HOOKS)}")
        if hook not in TABLE_HOOKS[table]:
            raise RuleError(f"table {table} has no {hook} chain; drop table= or pick another hook")
        if self.family not in FAMILIES:
            raise RuleError(f"unknown family {self.family!r}; use ipv4, ipv6 or both")
        if not 0 <= self.queue <= 65535:
            raise RuleError(f"queue number {self.queue} is out of range; use 0..65535")

    def matches(self) -> list[str]:
        """What selects the rule's packets: the prefix (a BPF filter), the match, and not pktlab's own packets."""
        return [*self.prefix, *self.match, *(SKIP_SENT if self.skip_sent else ())]

    def spec(self, tag: str) -> list[str]:
        """The rule's iptables arguments after ``-I CHAIN``."""
        target = ["-j", "NFQUEUE", "--queue-num", str(self.queue)]
        if self.bypass:
            target.append("--queue-bypass")
        return [*self.matches(), "-m", "comment", "--comment", tag, *target]

    def describe(self) -> str:
        m = " ".join(self.match) or "(all packets)"
        return f"{self.family} {self.table}/{self.hook} {m} -> NFQUEUE {self.queue}" + (
            " bypass" if self.bypass else " fail-closed"
        )


@dataclass(frozen=True)
class TargetRule:
    """A tagged rule with a target other than the queue (``("-j", "TRACE")``, ``("-j", "DROP")``), installed
    and removed through :class:`RuleSet` like a queue rule."""

    hook: str
    match: tuple[str, ...]
    target: tuple[str, ...]
    table: str = "raw"
    family: str = "both"
    last: bool = False

    def spec(self, tag: str) -> list[str]:
        return [*self.match, "-m", "comment", "--comment", tag, *self.target]


def front_id(tokens: Sequence[str]) -> tuple[int, int] | None:
    """(pid, number) of a pktlab front rule, from the tag at the start of one of its BPF programs."""
    for i, tok in enumerate(tokens[:-1]):
        if tok != "--bytecode":
            continue
        try:
            words = [tuple(int(x) for x in ins.split()) for ins in tokens[i + 1].split(",")[1:4]]
        except ValueError:
            continue
        tagged = len(words) == 3 and all(len(w) == 4 and w[:3] == (0, 0, 0) for w in words)
        if tagged and words[0][3] == FRONT_MAGIC:
            return words[1][3], words[2][3]
    return None


def restore_join(tokens: Sequence[str]) -> str:
    """One rule line for iptables-restore, whose own tokenizer knows double quotes only.

    iptables-restore reads one rule per line, so a token holding a line break (or any
    other control character) could start a rule of its own: such tokens are refused.
    """
    out = []
    for tok in tokens:
        if _has_control(tok):
            raise RuleError(f"{tok!r} holds a control character (a line break?); rules cannot contain one")
        if tok and not any(c.isspace() or c in "\"'\\" for c in tok):
            out.append(tok)
        else:
            out.append('"' + tok.replace("\\", "\\\\").replace('"', '\\"') + '"')
    return " ".join(out)


def _restore(netns_name: str | None, tool: str, tables: dict[str, list[str]]) -> subprocess.CompletedProcess[str]:
    text = "".join(f"*{t}\n" + "".join(line + "\n" for line in lines) + "COMMIT\n" for t, lines in tables.items())
    return netns.run(netns_name, [f"{tool}-restore", "--noflush"], input=text, check=False)


def _explain(netns_name: str | None, tool: str, table: str, hook: str, spec: list[str], fallback: str) -> str:
    """Ask iptables itself why a rule is bad (``-C`` prints the parser's message)."""
    proc = netns.run(netns_name, [tool, "-t", table, "-C", hook, *spec], check=False)
    msg = proc.stderr.strip().splitlines()
    useful = [m for m in msg if "does a matching rule exist" not in m and not m.startswith("Try `")]
    return (useful[0] if useful else fallback).strip()


class SavedRule(NamedTuple):
    """One rule as ``iptables-save -c`` prints it."""

    table: str
    tokens: list[str]  # "-A", chain, matches..., target
    packets: int  # how many packets have matched it


def saved_ruleset(netns_name: str | None, tool: str = "iptables") -> tuple[list[SavedRule], dict[tuple[str, str], str]]:
    """Every rule of a namespace, with its packet counter, and every built-in chain's policy
    (``{(table, chain): "ACCEPT"}``), from ``iptables-save -c``."""
    proc = netns.run(netns_name, [f"{tool}-save", "-c"], check=False)
    if proc.returncode != 0:
        raise RuleError(f"{tool}-save failed: {proc.stderr.strip()}; is {tool} installed and are you root?")
    table = ""
    out = []
    policies = {}
    for line in proc.stdout.splitlines():
        if line.startswith("*"):
            table = line[1:].strip()
        elif line.startswith("[") and " -A " in line:
            counters, rest = line.split(" ", 1)
            out.append(SavedRule(table, shlex.split(rest), int(counters[1:-1].split(":")[0])))
        elif line.startswith(":"):
            chain, _, policy = line[1:].partition(" ")
            if policy.split(" ")[0] != "-":
                policies[(table, chain)] = policy.split(" ")[0]
    return out, policies


def saved_rules(netns_name: str | None, tool: str = "iptables") -> list[SavedRule]:
    """Every rule of a namespace, with its packet counter, from ``iptables-save -c``."""
    return saved_ruleset(netns_name, tool)[0]


@dataclass(frozen=True)
class Skipped:
    """What a packet accepted at a queue rule no longer meets: the rules below it in its chain, and the
    chain's policy (a verdict ends only the chain it is given in: later tables still run)."""

    table: str
    chain: str
    rules: tuple[SavedRule, ...]
    policy: str

    def text(self) -> str:
        """One sentence for the person attaching, naming what gets skipped and the first drop among it."""
        n = len(self.rules)
        drops = [r for r in self.rules if _target(r.tokens) in ("DROP", "REJECT")]
        parts = [f"{n} rule{'s' if n != 1 else ''} below it"] if n else []
        if self.policy == "DROP":
            parts.append("the chain's DROP policy")
        what = " and ".join(parts)
        if drops:
            what += f", among them `{rule_text(drops[0].tokens)}`"
            if len(drops) > 1:
                what += f" and {len(drops) - 1} more dropping"
        return f"a packet it accepts in {self.table}/{self.chain} skips {what}"


def _target(tokens: Sequence[str]) -> str | None:
    for i, tok in enumerate(tokens[:-1]):
        if tok in ("-j", "--jump", "-g", "--goto"):
            return tokens[i + 1]
    return None


def rule_text(tokens: Sequence[str]) -> str:
    """A saved rule as a person reads it: its matches and target, without ``-A CHAIN`` and pktlab's comment."""
    out: list[str] = []
    skip = 0
    body = list(tokens[2:]) if tokens[:1] == ["-A"] else list(tokens)
    for i, tok in enumerate(body):
        if skip:
            skip -= 1
            continue
        if tok == "-m" and body[i + 1 : i + 2] == ["comment"]:
            skip = 3  # -m comment --comment TEXT
            continue
        out.append(tok)
    return restore_join(out)


def _tag_of(tokens: list[str]) -> str | None:
    for i, tok in enumerate(tokens[:-1]):
        if tok == "--comment" and tokens[i + 1].startswith(TAG_PREFIX):
            return tokens[i + 1]
    return None


def tag_name(tokens: list[str]) -> str | None:
    """The pktlab name in a saved rule's comment (a session's name, ``loss-eth0-1``), or None."""
    m = _TAG_RE.match(_tag_of(tokens) or "")
    return m.group(2) if m else None


def _delete(netns_name: str | None, tool: str, rules: Iterable[SavedRule]) -> int:
    tables: dict[str, list[str]] = defaultdict(list)
    n = 0
    for table, tokens, _ in rules:
        tables[table].append(restore_join(["-D", *tokens[1:]]))
        n += 1
    if tables:
        proc = _restore(netns_name, tool, tables)
        if proc.returncode != 0:
            raise RuleError(f"could not remove pktlab rules with {tool}-restore: {proc.stderr.strip()}")
    return n


def _check_tools(tools: Iterable[str]) -> None:
    import shutil

    for tool in tools:
        for t in (tool, f"{tool}-save", f"{tool}-restore"):
            if shutil.which(t) is None:
                raise MissingToolError(f"{t} is not installed; run `make setup` (apt-get install iptables)")


class RuleSet:
    """The rules one session installed in one namespace."""

    def __init__(self, tag: str, netns_name: str | None = None) -> None:
        self.tag = tag
        self.netns = netns_name
        self.rules: list[QueueRule] = []
        self.front_keys: set[int] = set()

    def install(self, rules: Sequence[QueueRule | TargetRule]) -> None:
        """Insert ``rules`` at the top of their chains, all at once per table."""
        by_tool: dict[str, dict[str, list[str]]] = defaultdict(lambda: defaultdict(list))
        for rule in rules:
            for tool in FAMILIES[rule.family]:
                where = "-A" if rule.last else "-I"
                by_tool[tool][rule.table or ""].append(restore_join([where, rule.hook, *rule.spec(self.tag)]))
        _check_tools(by_tool)
        taken = [t for t in by_tool if self._mine(t)]
        if taken:
            where = f"namespace {self.netns}" if self.netns else "the host namespace"
            raise RuleError(
                f"rules tagged {self.tag!r} are already installed in {where}: another session of this process "
                "has the same name; give this one another name (name=, --name)"
            )
        done: list[str] = []
        for tool, tables in by_tool.items():
            proc = _restore(self.netns, tool, tables)
            if proc.returncode != 0:
                for t in done:
                    _delete(self.netns, t, self._mine(t))
                bad = next(r for r in rules if tool in FAMILIES[r.family])
                why = _explain(self.netns, tool, bad.table or "", bad.hook, bad.spec(self.tag), proc.stderr)
                raise RuleError(f"iptables refused the rule `{' '.join(bad.match)}`: {why}; fix the match syntax")
            done.append(tool)
        self.rules.extend(rules)

    def _mine(self, tool: str) -> list[SavedRule]:
        return [r for r in saved_rules(self.netns, tool) if _tag_of(r.tokens) == self.tag]

    def _tools(self) -> list[str]:
        return sorted({t for r in self.rules for t in FAMILIES[r.family]} or {"iptables"})

    def skipped(self) -> list[Skipped]:
        """Per queue rule of this session: what a packet it accepts skips (rules below it, a DROP policy)."""
        out = []
        for tool in self._tools():
            rules, policies = saved_ruleset(self.netns, tool)
            for queue_rule in self.rules:
                if not isinstance(queue_rule, QueueRule) or tool not in FAMILIES[queue_rule.family]:
                    continue
                where = (queue_rule.table or "", queue_rule.hook)
                chain = [r for r in rules if (r.table, r.tokens[1]) == where]
                mine = [i for i, r in enumerate(chain) if _tag_of(r.tokens) == self.tag]
                if not mine:
                    continue
                # the firewall's rules: pktlab's own (another session's queue, offloads) are the tool's, not yours
                below = tuple(r for r in chain[mine[-1] + 1 :] if front_id(r.tokens) is None and not _tag_of(r.tokens))
                policy = policies.get(where, "ACCEPT")
                if below or policy == "DROP":
                    out.append(Skipped(where[0], where[1], below, policy))
        return out

    def installed(self) -> list[str]:
        """The session's rules as the kernel has them now (iptables-save lines)."""
        return [restore_join(r.tokens) for tool in self._tools() for r in self._mine(tool)]

    def hits(self) -> int:
        """Packets that reached this session's rules so far (iptables' own counters)."""
        return sum(r.packets for tool in self._tools() for r in self._mine(tool))

    def remove(self) -> int:
        """Delete every rule carrying this session's tag (offloads first); return how many."""
        n = 0
        for tool in ("iptables", "ip6tables"):
            try:
                n += _delete(self.netns, tool, self._front(tool))
                n += _delete(self.netns, tool, self._mine(tool))
            except MissingToolError:
                continue
        self.rules.clear()
        self.front_keys.clear()
        return n

    # -- rules in front of the queue rules (offloaded verdicts) ---------------------------
    def _front(self, tool: str, key: int | None = None) -> list[SavedRule]:
        pid = os.getpid()
        out = []
        for r in saved_rules(self.netns, tool):
            fid = front_id(r.tokens)
            if fid is not None and fid[0] == pid and (fid[1] == key if key is not None else fid[1] in self.front_keys):
                out.append(r)
        return out

    def put_front(self, key: int, lines: Sequence[tuple[QueueRule, Sequence[str]]]) -> None:
        """Install the rules of ``key`` just in front of their queue rule, replacing its old ones atomically.

        ``lines`` pairs each queue rule with the arguments of one rule to put in
        front of it (matches, with a BPF program tagged ``(pid, key)``, and the
        target).  Old rules of the same key are deleted and the new ones
        inserted at their place in one ``iptables-restore`` transaction per
        table, so no packet ever meets neither (or both).
        """
        by_tool: dict[str, dict[str, list[str]]] = defaultdict(lambda: defaultdict(list))
        me = (os.getpid(), key)
        for tool in sorted({t for rule, _ in lines for t in FAMILIES[rule.family]}):
            _check_tools([tool])
            pos: dict[tuple[str, str], int] = {}
            seen: dict[tuple[str, str], int] = defaultdict(int)
            old: list[SavedRule] = []
            for r in saved_rules(self.netns, tool):  # in chain order: the first old rule, else the queue rule
                where = (r.table, r.tokens[1])
                seen[where] += 1
                if front_id(r.tokens) == me:
                    old.append(r)
                    pos.setdefault(where, seen[where])
                elif _tag_of(r.tokens) == self.tag and where not in pos:
                    pos[where] = seen[where]
            for r in old:
                by_tool[tool][r.table].append(restore_join(["-D", *r.tokens[1:]]))
            offset: dict[tuple[str, str], int] = defaultdict(int)
            for rule, args in lines:
                if tool not in FAMILIES[rule.family]:
                    continue
                where = (rule.table or "", rule.hook)
                at = pos.get(where)
                if at is None:
                    raise RuleError(f"the queue rule in {rule.table}/{rule.hook} is gone; attach the session again")
                by_tool[tool][where[0]].append(restore_join(["-I", rule.hook, str(at + offset[where]), *args]))
                offset[where] += 1
        for tool, tables in by_tool.items():
            proc = _restore(self.netns, tool, tables)
            if proc.returncode != 0:
                raise RuleError(f"iptables refused the rule: {proc.stderr.strip()}; check the filter and target")
        self.front_keys.add(key)

    def accept_marked(self, key: int, rule: QueueRule, bit: int) -> None:
        """In front of ``rule`` (as rules of ``key``): accept its packets whose mark carries ``bit`` (set by a chain of
        pktlab's in front of the queue's table: a flow verdict, a kernel handler's accept)."""
        tag = _compile("").tagged((FRONT_MAGIC, os.getpid(), key)).match_args()
        self.put_front(key, [(rule, [*rule.matches(), "-m", "mark", "--mark", f"{bit:#x}/{bit:#x}", *tag, "-j",
                                     "ACCEPT"])])  # fmt: skip

    def drop_front(self, key: int) -> int:
        """Delete the rules of ``key``; return how many."""
        n = sum(_delete(self.netns, tool, self._front(tool, key)) for tool in self._tools())
        self.front_keys.discard(key)
        return n

    def front_hits(self, key: int) -> int:
        """Packets that met the first rule of ``key`` in each family (iptables' counters)."""
        total = 0
        for tool in self._tools():
            rules = self._front(tool, key)
            if rules:
                total += rules[0].packets
        return total


def sweep_stale(netns_name: str | None = None) -> list[str]:
    """Delete pktlab rules whose owning process is dead; return their tags."""
    removed = []
    for tool in ("iptables", "ip6tables"):
        try:
            rules = saved_rules(netns_name, tool)
        except (RuleError, MissingToolError):
            continue
        stale = []
        for rule in rules:
            tag = _tag_of(rule.tokens)
            m = _TAG_RE.match(tag or "")
            fid = front_id(rule.tokens)
            if m and not pid_alive(int(m.group(1))):
                stale.append(rule)
                removed.append(tag or "")
            elif fid is not None and not pid_alive(fid[0]):
                stale.append(rule)
                removed.append(f"{TAG_PREFIX}{fid[0]}: offload {fid[1]}")
        _delete(netns_name, tool, stale)
    return removed
