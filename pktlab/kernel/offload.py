"""Offloaded verdicts: decisions the kernel applies by itself, at kernel speed.

``Session.offload("tcp dst port 22", "drop")`` compiles the filter with
libpcap and puts an iptables rule in front of the session's NFQUEUE rule:
matching packets get their verdict there and never reach the queue.  The
rule also carries the session's own match and filter, so an offload only
ever decides packets the session would have seen.  Offloading the same
filter again replaces the rule in one iptables-restore transaction.  The
rule is named by a tag inside its BPF program rather than by a comment
match, which would cost ~4 % of the kernel's packet rate (see rules.py).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import TYPE_CHECKING

from ..errors import SessionError
from .bpf import BpfProgram
from .rules import FRONT_MAGIC

if TYPE_CHECKING:
    from .rules import QueueRule

VERDICTS = ("accept", "drop", "mark")


@dataclass(frozen=True)
class Offload:
    """One offloaded verdict: packets matching ``program`` get ``verdict`` (and ``mark``) in the kernel."""

    expr: str
    verdict: str
    mark: int | None
    program: BpfProgram
    key: int

    def describe(self) -> str:
        if self.verdict == "mark":
            return f"{self.expr} -> mark {self.mark} (then on to the queue)"
        mark = f" with mark {self.mark}" if self.mark is not None else ""
        return f"{self.expr} -> {self.verdict}{mark}"

    def lines(self, rule: QueueRule) -> list[list[str]]:
        """The iptables rules (matches and target) that apply this offload in front of ``rule``."""
        tagged = self.program.tagged((FRONT_MAGIC, os.getpid(), self.key))
        match = [*rule.matches(), *tagged.match_args()]
        out = []
        if self.mark is not None:
            out.append([*match, "-j", "MARK", "--set-mark", str(self.mark)])
        if self.verdict in ("accept", "drop"):
            out.append([*match, "-j", self.verdict.upper()])
        return out


def parse_verdict(verdict: object, mark: int | None) -> tuple[str, int | None]:
    """Check an offload's verdict and mark; return them normalised."""
    name = str(verdict).lower()
    if name not in VERDICTS:
        raise SessionError(f"an offloaded verdict is accept, drop or mark, not {verdict!r}")
    if mark is not None and (not isinstance(mark, int) or isinstance(mark, bool) or not 0 <= mark <= 0xFFFFFFFF):
        raise SessionError(f"mark {mark!r} is not valid; use an integer 0..4294967295")
    if name == "mark" and mark is None:
        raise SessionError("an offloaded 'mark' verdict needs the mark: offload(expr, 'mark', mark=N)")
    if name == "drop" and mark is not None:
        raise SessionError("a dropped packet keeps no mark; give mark= with 'accept' or 'mark'")
    return name, mark
