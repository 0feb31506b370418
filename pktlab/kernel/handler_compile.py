"""A Python handler translated into nftables rules: what runs in the kernel instead of the queue.

``compile_handler(fn)`` reads the handler's source and accepts a small part of Python, the part that says what
nftables can say about one packet:

- ``if`` / ``elif`` / ``else`` on header fields of the built-in views: ``pkt.ip.src`` / ``dst`` / ``ttl`` /
  ``proto`` / ``dscp`` / ``len`` / ``id``, ``pkt.ipv6.src`` / ``dst`` / ``hlim`` / ``dscp`` / ``plen`` / ``nh``,
  ``pkt.tcp.sport`` / ``dport`` / ``window`` / ``flagbits``, ``pkt.tcp.flags.syn`` (and the other flags),
  ``pkt.tcp.flags == "SA"``, ``pkt.udp.sport`` / ``dport`` / ``len``, ``pkt.icmp.type`` / ``code``,
  ``pkt.icmpv6.type`` / ``code``, ``pkt.proto``; whether a layer is there (``pkt.tcp is not None``);
- comparisons with constants (``==``, ``!=``, ``<``, ``<=``, ``>``, ``>=``, chained too), ``in`` / ``not in`` a
  literal set, list, tuple or ``range``, prefixes as ``ip_address(pkt.ip.src) in ip_network("10.0.0.0/8")``;
  ``and``, ``or``, ``not``; constants may be names of the handler's module (read when it is compiled);
- assignments of constants to ``pkt.ip.src`` / ``dst`` / ``ttl`` / ``dscp``, ``pkt.ipv6.src`` / ``dst`` /
  ``hlim`` / ``dscp``, ``pkt.tcp.sport`` / ``dport``, ``pkt.udp.sport`` / ``dport`` (the kernel fixes the
  checksums, as nftables' payload statement does), and ``pkt.set_mark(n)``;
- ``return pkt.accept()`` (``mark=n`` too), ``return pkt.drop()``, and ``return`` / ``return None`` or the end of
  the function: on to the next handler (the queue).

A field of a layer is read or written only where the code has made sure the layer is there (``if pkt.tcp is not
None and pkt.tcp.dport == 22``), as the Python handler must too (there ``pkt.tcp`` is None and ``.dport`` raises):
so the rules and the function decide every packet alike.  Anything else (a loop, a call, the payload, state) is
refused before anything is installed, with the line and the construct.

How control flow becomes rules: each block is a chain of its own; an ``if`` jumps (``goto``) to its branch's chain
and each branch goes on to the chain of what follows it, so a condition is evaluated once, before the branch's
rewrites, as Python does.  A branch that only rewrites and returns is one rule.  Accepting sets the bit
:data:`KERNEL_ACCEPT` of the mark, which the session's rule in front of its queue accepts (an nftables ``accept``
ends only its own table's chains); :mod:`pktlab.kernel.kernel_handlers` installs the rules.
"""

from __future__ import annotations

import ast
import inspect
import ipaddress
import textwrap
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from ..errors import KernelHandlerError

KERNEL_ACCEPT = 0x10000000  # one bit of skb->mark: "a kernel handler accepted this packet" (cleared behind the queue)

# (view, field) -> (nft expression, kind, writable); kind: "u<bits>", "addr4", "addr6"
FIELDS: dict[tuple[str, str], tuple[str, str, bool]] = {
    ("ip", "src"): ("ip saddr", "addr4", True),
    ("ip", "dst"): ("ip daddr", "addr4", True),
    ("ip", "ttl"): ("ip ttl", "u8", True),
    ("ip", "proto"): ("ip protocol", "u8", False),
    ("ip", "dscp"): ("ip dscp", "u6", True),
    ("ip", "len"): ("ip length", "u16", False),
    ("ip", "id"): ("ip id", "u16", False),
    ("ipv6", "src"): ("ip6 saddr", "addr6", True),
    ("ipv6", "dst"): ("ip6 daddr", "addr6", True),
    ("ipv6", "hlim"): ("ip6 hoplimit", "u8", True),
    ("ipv6", "dscp"): ("ip6 dscp", "u6", True),
    ("ipv6", "plen"): ("ip6 length", "u16", False),
    ("ipv6", "nh"): ("ip6 nexthdr", "u8", False),
    ("tcp", "sport"): ("tcp sport", "u16", True),
    ("tcp", "dport"): ("tcp dport", "u16", True),
    ("tcp", "window"): ("tcp window", "u16", False),
    ("tcp", "flagbits"): ("tcp flags", "u8", False),
    ("udp", "sport"): ("udp sport", "u16", True),
    ("udp", "dport"): ("udp dport", "u16", True),
    ("udp", "len"): ("udp length", "u16", False),
    ("icmp", "type"): ("icmp type", "u8", False),
    ("icmp", "code"): ("icmp code", "u8", False),
    ("icmpv6", "type"): ("icmpv6 type", "u8", False),
    ("icmpv6", "code"): ("icmpv6 code", "u8", False),
}
# a layer's presence: what pkt.<layer> is not None means
LAYERS = {
    "ip": "meta nfproto ipv4",
    "ipv6": "meta nfproto ipv6",
    "tcp": "meta l4proto tcp",
    "udp": "meta l4proto udp",
    "icmp": "meta l4proto icmp",
    "icmpv6": "meta l4proto ipv6-icmp",
}
TCP_FLAGS = ("fin", "syn", "rst", "psh", "ack", "urg", "ece", "cwr")
_OPS = {ast.Eq: "==", ast.NotEq: "!=", ast.Lt: "<", ast.LtE: "<=", ast.Gt: ">", ast.GtE: ">="}
_NEGATE = {"==": "!=", "!=": "==", "<": ">=", "<=": ">", ">": "<=", ">=": "<"}
_FLIP = {"==": "==", "!=": "!=", "<": ">", "<=": ">=", ">": "<", ">=": "<="}
_CONSTRUCTS = {
    ast.For: "a for loop", ast.While: "a while loop", ast.With: "a with block", ast.Try: "a try block",
    ast.Raise: "raise", ast.Import: "an import", ast.ImportFrom: "an import", ast.FunctionDef: "a function",
    ast.Global: "global", ast.Nonlocal: "nonlocal", ast.Delete: "del", ast.AugAssign: "an augmented assignment",
    ast.AnnAssign: "an annotated assignment", ast.Assert: "assert", ast.Match: "a match statement",
    ast.ClassDef: "a class",
}  # fmt: skip
MAX_CONJUNCTS = 64
FALLBACK = "; without kernel=True the handler runs in Python as it is"


@dataclass(frozen=True)
class KernelRule:
    """One nftables rule of a compiled handler: its chain (within the handler), its text, the Python line."""

    chain: str
    text: str
    line: int
    python: str


@dataclass(frozen=True)
class CompiledHandler:
    """A handler as nftables rules: ``chains`` in the order they must be made, ``rules`` in chain order."""

    name: str
    chains: tuple[str, ...]
    rules: tuple[KernelRule, ...]
    rewrites: bool  # it writes header fields (nftables payload statements)
    source: str = field(repr=False, default="")

    def describe(self) -> str:
        """The rules next to the Python lines they came from."""
        out = []
        for chain in self.chains:
            out.append(f"chain {chain}:")
            for r in self.rules:
                if r.chain == chain:
                    out.append(f"  {r.text.replace('@', ''):<60}  # line {r.line}: {r.python}")
        return "\n".join(out)


@dataclass(frozen=True)
class _Lit:
    """One match of a rule, and what it tells of the layers (present / absent) where it holds."""

    text: str
    present: frozenset[str] = frozenset()
    absent: frozenset[str] = frozenset()


_Conj = tuple[_Lit, ...]


class _Facts:
    """What is known of the packet's layers on a path: present, absent."""

    def __init__(self, present: frozenset[str] = frozenset(), absent: frozenset[str] = frozenset()) -> None:
        self.present, self.absent = present, absent

    def plus(self, conj: _Conj) -> _Facts:
        present, absent = set(self.present), set(self.absent)
        for lit in conj:
            present |= lit.present
            absent |= lit.absent
        return _Facts(frozenset(present), frozenset(absent))

    @staticmethod
    def common(conjs: list[_Conj], base: _Facts) -> _Facts:
        """What holds whichever conjunct matched."""
        if not conjs:
            return base
        each = [base.plus(c) for c in conjs]
        present = frozenset.intersection(*(f.present for f in each))
        return _Facts(present, frozenset.intersection(*(f.absent for f in each)))


def _source_of(fn: Callable[..., Any] | str) -> tuple[str, int]:
    if isinstance(fn, str):
        return textwrap.dedent(fn), 1
    try:
        lines, first = inspect.getsourcelines(fn)
    except (OSError, TypeError):
        raise KernelHandlerError(f"the source of {getattr(fn, '__name__', fn)!r} is not available (a function made "
                                 f"outside a file or cell), so it cannot be compiled{FALLBACK}") from None  # fmt: skip
    return textwrap.dedent("".join(lines)), first


def _constants(fn: Callable[..., Any] | str) -> dict[str, Any]:
    if isinstance(fn, str):
        return {}
    names = dict(getattr(fn, "__globals__", {}))
    code = getattr(fn, "__code__", None)
    if code is not None and fn.__closure__:  # type: ignore[union-attr]
        for name, cell in zip(code.co_freevars, fn.__closure__, strict=False):  # type: ignore[union-attr]
            try:
                names[name] = cell.cell_contents
            except ValueError:
                continue
    return names


def compile_handler(fn: Callable[..., Any] | str, *, family: str = "ipv4", name: str | None = None,
                    first_line: int | None = None) -> CompiledHandler:  # fmt: skip
    """Translate handler ``fn`` (a function, or the source of one) into nftables rules; raise if it cannot be.

    ``family`` is the session's (``ipv4``, ``ipv6`` or ``both``): with one family, ``pkt.ip`` (or ``pkt.ipv6``)
    is known to be there.  ``first_line`` numbers the ``def`` line in messages (a cell's body starts at 1).
    """
    source, first = _source_of(fn)
    if first_line is not None:
        first = first_line
    try:
        tree = ast.parse(source)
    except SyntaxError as exc:
        raise KernelHandlerError(f"the handler does not parse: {exc.msg} (line {exc.lineno})") from None
    defs = [n for n in tree.body if isinstance(n, ast.FunctionDef)]
    if len(defs) != 1 or len(tree.body) != 1:
        raise KernelHandlerError(f"a kernel handler is one function of the packet (def name(pkt): ...){FALLBACK}")
    fdef = defs[0]
    if fdef.decorator_list:  # @s.handler(kernel=True) is the one decorator: it compiled us
        fdef.decorator_list = []
    args = fdef.args
    if len(args.args) != 1 or args.vararg or args.kwarg or args.kwonlyargs or args.posonlyargs:
        raise KernelHandlerError(f"a kernel handler takes exactly one argument, the packet{FALLBACK}")
    present = {"ipv4": frozenset({"ip"}), "ipv6": frozenset({"ipv6"})}.get(family, frozenset())
    absent = {"ipv4": frozenset({"ipv6"}), "ipv6": frozenset({"ip"})}.get(family, frozenset())
    c = _Compiler(fdef.args.args[0].arg, source.splitlines(), first, _constants(fn))
    c.block(fdef.body, c.new_chain("main"), _Facts(present, absent))
    label = name or fdef.name
    return CompiledHandler(label, tuple(c.chains), tuple(r for ch in c.chains for r in c.rules[ch]), c.rewrites,
                           source)  # fmt: skip


class _Compiler:
    def __init__(self, param: str, lines: list[str], first: int, consts: dict[str, Any]) -> None:
        self.param = param
        self.lines = lines
        self.first = first
        self.consts = consts
        self.chains: list[str] = []
        self.rules: dict[str, list[KernelRule]] = {}
        self.rewrites = False

    # -- errors and rules ------------------------------------------------------------------
    def refuse(self, node: ast.AST, what: str, *, said: bool = False) -> KernelHandlerError:
        """The error for ``what`` at ``node``'s line (``said``: ``what`` is a whole sentence already)."""
        n = getattr(node, "lineno", 1)
        text = self.lines[n - 1].strip() if 0 < n <= len(self.lines) else ""
        why = what if said else f"{what} cannot run in the kernel"
        return KernelHandlerError(f"line {n + self.first - 1} ({text}): {why}{FALLBACK}")

    def new_chain(self, name: str) -> str:
        if name in self.rules:
            name = f"{name}_{len(self.chains)}"
        self.chains.append(name)
        self.rules[name] = []
        return name

    def emit(self, chain: str, node: ast.AST, text: str) -> None:
        n = getattr(node, "lineno", 1)
        py = self.lines[n - 1].strip() if 0 < n <= len(self.lines) else ""
        self.rules[chain].append(KernelRule(chain, text, n + self.first - 1, py))

    # -- statements ------------------------------------------------------------------------
    def block(self, stmts: list[ast.stmt], chain: str, facts: _Facts, after: str | None = None) -> bool:
        """Compile ``stmts`` into ``chain``; True if every path through them returns.

        ``after``: the chain of what follows them in an enclosing block (a path that falls off their end goes
        there; None: off the end of the handler, on to the next one).
        """
        for i, st in enumerate(stmts):
            if isinstance(st, ast.Pass) or (isinstance(st, ast.Expr) and isinstance(st.value, ast.Constant)
                                            and isinstance(st.value.value, str)):  # fmt: skip
                continue
            if isinstance(st, ast.Return):
                self.emit(chain, st, self.verdict(st))
                return True
            if isinstance(st, ast.Assign | ast.Expr):
                self.emit(chain, st, self.statement(st, facts))
                continue
            if isinstance(st, ast.If):
                return self.branch(st, stmts[i + 1 :], chain, facts, after)
            raise self.refuse(st, _CONSTRUCTS.get(type(st), type(st).__name__))
        if after is not None:
            self.emit(chain, stmts[-1] if stmts else ast.Pass(lineno=1), f"goto @{after}")
        return False

    def branch(self, st: ast.If, rest: list[ast.stmt], chain: str, facts: _Facts, after: str | None) -> bool:
        conjs = self.dnf(st.test, facts, True)
        if len(conjs) > MAX_CONJUNCTS:
            raise self.refuse(st, f"a condition of more than {MAX_CONJUNCTS} alternatives (as rules)")
        then_facts, else_facts = _Facts.common(conjs, facts), _Facts.common(self.dnf(st.test, facts, False), facts)
        inline = self.inline(st.body, facts, conjs)
        then = None
        if inline is not None:  # one rule per conjunct, ending in a verdict: its rewrites and its verdict
            for conj, text in inline:
                self.emit(chain, st, " ".join([*(lit.text for lit in conj), text]))
            if not st.orelse:  # the packets the condition did not take go on with the next rules, here
                return self.block(rest, chain, else_facts, after)
        else:
            then = self.new_chain(f"{chain}_if{st.lineno}")
            for conj in conjs:
                self.emit(chain, st, " ".join([*(lit.text for lit in conj), f"goto @{then}"]))
        orelse = self.new_chain(f"{chain}_else{st.lineno}") if st.orelse else None
        cont = self.new_chain(f"{chain}_after{st.lineno}") if rest else None
        nxt = cont or after  # where a branch that does not return goes on
        if orelse or nxt:  # where the packets go that the condition did not take (else: off the end, on)
            self.emit(chain, st, f"goto @{orelse or nxt}")
        then_ends = self.block(st.body, then, then_facts, nxt) if then is not None else True
        else_ends = self.block(st.orelse, orelse, else_facts, nxt) if orelse is not None else False
        if cont is None:
            return then_ends and else_ends
        if then_ends and else_ends:  # nothing reaches what follows the if
            self.chains.remove(cont)
            del self.rules[cont]
            return True
        return self.block(rest, cont, else_facts if then_ends else then_facts if else_ends else facts, after)

    def inline(self, body: list[ast.stmt], facts: _Facts, conjs: list[_Conj]) -> list[tuple[_Conj, str]] | None:
        """A branch of rewrites and a return as one rule per conjunct (None: it needs a chain of its own)."""
        if not body or not isinstance(body[-1], ast.Return):
            return None
        if any(not isinstance(s, ast.Assign | ast.Expr) for s in body[:-1]):
            return None
        out = []
        for conj in conjs:
            f = facts.plus(conj)
            stmts = [self.statement(s, f) for s in body[:-1]]  # type: ignore[arg-type]
            out.append((conj, " ".join([*stmts, self.verdict(body[-1])])))  # type: ignore[arg-type]
        return out

    def verdict(self, st: ast.Return) -> str:
        v = st.value
        if v is None or (isinstance(v, ast.Constant) and v.value is None):
            return "return"
        if isinstance(v, ast.Call) and self.is_pkt_attr(v.func) and not v.args:
            what = v.func.attr  # type: ignore[attr-defined]
            kw = {k.arg: k.value for k in v.keywords}
            if what == "drop" and not kw:
                return "drop"
            if what == "accept" and set(kw) <= {"mark"}:
                if "mark" in kw:
                    mark = self.mark_value(kw["mark"])
                    return f"meta mark set {mark | KERNEL_ACCEPT:#x} accept"
                return f"meta mark set meta mark | {KERNEL_ACCEPT:#x} accept"
            if "flow" in kw:
                raise self.refuse(st, "a flow verdict (flow=True: the flow table is pktlab's, in Python)")
            raise self.refuse(st, f"pkt.{what}(...)")
        raise self.refuse(st, "returning anything but pkt.accept(), pkt.drop() or None")

    def mark_value(self, node: ast.expr) -> int:
        mark = self.constant(node)
        if not isinstance(mark, int) or isinstance(mark, bool) or not 0 <= mark <= 0xFFFFFFFF:
            raise self.refuse(node, f"mark {mark!r} (a mark is an int of 32 bits)")
        if mark & KERNEL_ACCEPT:
            raise self.refuse(node, f"mark {mark:#x} (bit {KERNEL_ACCEPT:#x} is pktlab's own)")
        return mark

    def statement(self, st: ast.Assign | ast.Expr, facts: _Facts) -> str:
        if isinstance(st, ast.Expr):
            call = st.value
            if (isinstance(call, ast.Call) and self.is_pkt_attr(call.func) and call.func.attr == "set_mark"  # type: ignore[attr-defined]
                    and len(call.args) == 1 and not call.keywords):  # fmt: skip
                return f"meta mark set {self.mark_value(call.args[0]):#x}"
            raise self.refuse(st, "a call" if isinstance(call, ast.Call) else "an expression statement")
        if len(st.targets) != 1:
            raise self.refuse(st, "an assignment to several targets")
        view, fname = self.field_of(st.targets[0], st, facts)
        expr, kind, writable = FIELDS[view, fname]
        if not writable:
            raise self.refuse(st, f"writing pkt.{view}.{fname}")
        self.rewrites = True
        return f"{expr} set {self.value(st.value, kind, st)}"

    # -- expressions -----------------------------------------------------------------------
    def is_pkt_attr(self, node: ast.AST) -> bool:
        return isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id == self.param

    def layer_of(self, node: ast.AST) -> str | None:
        """``pkt.tcp`` -> "tcp"."""
        if self.is_pkt_attr(node) and node.attr in LAYERS:  # type: ignore[attr-defined]
            return node.attr  # type: ignore[attr-defined,no-any-return]
        return None

    def field_of(self, node: ast.AST, where: ast.AST, facts: _Facts) -> tuple[str, str]:
        """``pkt.tcp.dport`` -> ("tcp", "dport"), after checking the layer is known to be there."""
        if isinstance(node, ast.Attribute):
            layer = self.layer_of(node.value)
            if layer is not None and (layer, node.attr) in FIELDS:
                if layer not in facts.present:
                    raise self.refuse(where, f"pkt.{layer}.{node.attr} is used where the packet may have no {layer} "
                                             f"layer (pkt.{layer} is None then, and Python raises): test pkt.{layer} "
                                             "is not None first", said=True)  # fmt: skip
                return layer, node.attr
        raise self.refuse(where, f"{ast.unparse(node)}")

    def constant(self, node: ast.expr) -> Any:
        if isinstance(node, ast.Constant):
            return node.value
        if isinstance(node, ast.Name) and node.id in self.consts:
            return self.consts[node.id]
        if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub) and isinstance(node.operand, ast.Constant):
            return -node.operand.value
        if isinstance(node, ast.Set | ast.List | ast.Tuple):
            return [self.constant(e) for e in node.elts]
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Name | ast.Attribute) and not node.keywords:
            fname = node.func.id if isinstance(node.func, ast.Name) else node.func.attr
            if fname == "range" and 1 <= len(node.args) <= 2:
                return range(*[self.constant(a) for a in node.args])
            if fname == "ip_network" and len(node.args) == 1:
                try:
                    return ipaddress.ip_network(self.constant(node.args[0]))
                except ValueError as exc:
                    raise self.refuse(node, f"the prefix {ast.unparse(node)} ({exc})") from None
        raise self.refuse(node, f"{ast.unparse(node)} (only constants can be compared with a field)")

    def value(self, node: ast.expr, kind: str, where: ast.AST) -> str:
        """A constant of the field's kind as nft writes it."""
        v = self.constant(node)
        return self.scalar(v, kind, where)

    def scalar(self, v: Any, kind: str, where: ast.AST) -> str:
        if kind.startswith("u"):
            bits = int(kind[1:])
            if not isinstance(v, int) or isinstance(v, bool) or not 0 <= v < 1 << bits:
                raise self.refuse(where, f"the value {v!r} for a field of {bits} bits")
            return str(v)
        want = 4 if kind == "addr4" else 6
        try:
            addr = ipaddress.ip_address(v)
        except ValueError:
            raise self.refuse(where, f"the value {v!r} for an IPv{want} address") from None
        if addr.version != want:
            raise self.refuse(where, f"the IPv{addr.version} address {v} for an IPv{want} field")
        return str(addr)

    def dnf(self, e: ast.expr, facts: _Facts, positive: bool) -> list[_Conj]:
        """The condition ``e`` (or its negation) as OR of ANDs of matches; [] never matches, [()] always."""
        if isinstance(e, ast.BoolOp):
            conj_op = isinstance(e.op, ast.And) == positive  # and / not-or: every operand
            out: list[_Conj] = [()]
            if conj_op:
                for v in e.values:
                    nxt = []
                    for c in out:
                        nxt += [c + d for d in self.dnf(v, facts.plus(c), positive)]
                    out = nxt
                return out
            out = []
            f = facts
            for v in e.values:  # a later operand is reached only where the earlier ones did not hold
                out += self.dnf(v, f, positive)
                f = _Facts.common(self.dnf(v, f, not positive), f)
            return out
        if isinstance(e, ast.UnaryOp) and isinstance(e.op, ast.Not):
            return self.dnf(e.operand, facts, not positive)
        if isinstance(e, ast.Compare) and len(e.ops) > 1:  # a < b < c: a < b and b < c
            parts = [ast.Compare(left=a, ops=[op], comparators=[b]) for a, op, b in
                     zip([e.left, *e.comparators[:-1]], e.ops, e.comparators, strict=True)]  # fmt: skip
            for p in parts:
                ast.copy_location(p, e)
            return self.dnf(ast.BoolOp(op=ast.And(), values=parts), facts, positive)  # type: ignore[arg-type]
        return [(self.literal(e, facts, positive),)]

    def literal(self, e: ast.expr, facts: _Facts, positive: bool) -> _Lit:
        layer = self.layer_of(e)
        if layer is not None:  # if pkt.tcp:
            return self.presence(layer, positive)
        if isinstance(e, ast.Attribute) and isinstance(e.value, ast.Attribute) and e.value.attr == "flags":
            if self.layer_of(e.value.value) != "tcp":
                raise self.refuse(e, ast.unparse(e))
            self.field_of(ast.Attribute(value=e.value.value, attr="flagbits"), e, facts)
            if e.attr not in TCP_FLAGS:
                raise self.refuse(e, f"the TCP flag {e.attr!r} (the flags are {', '.join(TCP_FLAGS)})")
            bit = 1 << TCP_FLAGS.index(e.attr)
            return _Lit(f"tcp flags & {bit:#04x} {'==' if positive else '!='} {bit:#04x}")
        if not isinstance(e, ast.Compare):
            raise self.refuse(e, f"the condition {ast.unparse(e)}")
        left, op, right = e.left, e.ops[0], e.comparators[0]
        if isinstance(op, ast.Is | ast.IsNot):
            layer = self.layer_of(left)
            if layer is None or not (isinstance(right, ast.Constant) and right.value is None):
                raise self.refuse(e, "'is' other than pkt.<layer> is None")
            return self.presence(layer, positive == isinstance(op, ast.IsNot))
        if isinstance(op, ast.In | ast.NotIn):
            return self.membership(e, left, right, facts, positive == isinstance(op, ast.In))
        sym = _OPS.get(type(op))
        if sym is None:
            raise self.refuse(e, f"the comparison {ast.unparse(e)}")
        if self.is_field(left):
            ref, const = left, right
        elif self.is_field(right):
            ref, const, sym = right, left, _FLIP[sym]
        else:
            raise self.refuse(e, f"the comparison {ast.unparse(e)} (one side must be a header field)")
        if not positive:
            sym = _NEGATE[sym]
        if self.is_flags(ref):  # pkt.tcp.flags == "SA"
            self.field_of(ast.Attribute(value=ref.value, attr="flagbits"), e, facts)  # type: ignore[attr-defined]
            if sym not in ("==", "!="):
                raise self.refuse(e, "ordering TCP flags")
            return _Lit(f"tcp flags {sym} {self.flag_value(self.constant(const), e):#04x}")
        if self.is_pkt_attr(ref):  # pkt.proto
            return _Lit(f"meta l4proto {sym} {self.scalar(self.constant(const), 'u8', e)}")
        view, fname = self.field_of(ref, e, facts)
        expr, kind, _ = FIELDS[view, fname]
        if kind.startswith("addr") and sym not in ("==", "!="):
            raise self.refuse(e, "ordering addresses (use ip_address(...) in ip_network(...) for a prefix)")
        return _Lit(f"{expr} {sym} {self.value(const, kind, e)}")

    def is_flags(self, node: ast.AST) -> bool:
        return isinstance(node, ast.Attribute) and node.attr == "flags" and self.layer_of(node.value) == "tcp"

    def is_field(self, node: ast.AST) -> bool:
        if self.is_pkt_attr(node):
            return node.attr == "proto"  # type: ignore[attr-defined]
        return self.is_flags(node) or (
            isinstance(node, ast.Attribute) and self.layer_of(node.value) is not None
            and (self.layer_of(node.value), node.attr) in FIELDS  # fmt: skip
        )

    def flag_value(self, v: Any, where: ast.AST) -> int:
        if isinstance(v, int) and not isinstance(v, bool) and 0 <= v < 256:
            return v
        if isinstance(v, str):
            letters = [n[0].upper() for n in TCP_FLAGS]
            if all(ch in letters for ch in v.upper()):
                return sum(1 << letters.index(ch) for ch in set(v.upper()))
        raise self.refuse(where, f"the TCP flags {v!r} (letters of FSRPAUEC, or a number)")

    def presence(self, layer: str, present: bool) -> _Lit:
        expr = LAYERS[layer]
        key, _, val = expr.rpartition(" ")
        if present:
            return _Lit(expr, present=frozenset({layer}))
        return _Lit(f"{key} != {val}", absent=frozenset({layer}))

    def membership(self, e: ast.Compare, left: ast.expr, right: ast.expr, facts: _Facts, positive: bool) -> _Lit:
        sym = "" if positive else "!= "
        if isinstance(left, ast.Call) and isinstance(left.func, ast.Name | ast.Attribute):  # ip_address(f) in net
            fname = left.func.id if isinstance(left.func, ast.Name) else left.func.attr
            if fname != "ip_address" or len(left.args) != 1:
                raise self.refuse(e, ast.unparse(left))
            view, f = self.field_of(left.args[0], e, facts)
            expr, kind, _ = FIELDS[view, f]
            net = self.constant(right)
            if not isinstance(net, ipaddress.IPv4Network | ipaddress.IPv6Network):
                raise self.refuse(e, f"{ast.unparse(right)} (an ip_network(...) is needed on the right of in)")
            if (net.version == 4) != (kind == "addr4"):
                raise self.refuse(e, f"the IPv{net.version} prefix {net} for an address of the other family")
            return _Lit(f"{expr} {sym}{net}")
        if not self.is_field(left) or self.is_flags(left):
            raise self.refuse(e, f"{ast.unparse(left)} in ... (the left of in must be a header field)")
        if self.is_pkt_attr(left):
            expr, kind = "meta l4proto", "u8"
        else:
            view, f = self.field_of(left, e, facts)
            expr, kind, _ = FIELDS[view, f]
        values = self.constant(right)
        if isinstance(values, range):
            if values.step != 1 or len(values) == 0:
                raise self.refuse(e, f"{ast.unparse(right)} (a range of step 1 that is not empty)")
            lo, hi = self.scalar(values[0], kind, e), self.scalar(values[-1], kind, e)
            return _Lit(f"{expr} {sym}{lo}-{hi}")
        if isinstance(values, str) or not isinstance(values, list | tuple | set | frozenset) or not values:
            raise self.refuse(e, f"{ast.unparse(right)} (in needs a set, list, tuple or range of constants)")
        items = ", ".join(self.scalar(v, kind, e) for v in values)
        return _Lit(f"{expr} {sym}{{ {items} }}")
