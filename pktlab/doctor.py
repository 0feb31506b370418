"""What this machine allows: each thing a live session needs, checked for real, with the fix."""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass

from . import kernel


@dataclass(frozen=True)
class Check:
    name: str
    ok: bool
    detail: str

    def __str__(self) -> str:
        return f"{'ok  ' if self.ok else 'FAIL'}  {self.name}: {self.detail}"


@dataclass(frozen=True)
class Report:
    checks: list[Check]
    cleaned: list[str]

    @property
    def live(self) -> bool:
        """True when labs and live queues work here."""
        return all(c.ok for c in self.checks)

    def __str__(self) -> str:
        lines = [str(c) for c in self.checks]
        if self.live:
            lines.append("=> live mode: labs and NFQUEUE sessions work on this machine")
        else:
            failed = ", ".join(c.name for c in self.checks if not c.ok)
            lines.append(f"=> no live mode here ({failed}); fix the FAIL lines above")
        lines += [f"cleaned: {c}" for c in self.cleaned]
        return "\n".join(lines)

    def _repr_html_(self) -> str:
        from html import escape

        return "<pre>" + escape(str(self)) + "</pre>"


def _try(name: str, fn, fix: str) -> Check:  # type: ignore[no-untyped-def]
    try:
        return Check(name, True, fn())
    except Exception as exc:
        return Check(name, False, f"{exc}; {fix}")


def _tools() -> str:
    missing = [t for t in ("iptables", "iptables-save", "iptables-restore", "ip") if shutil.which(t) is None]
    if missing:
        raise RuntimeError(f"{', '.join(missing)} not found")
    return "iptables, iptables-save, iptables-restore and ip are installed"


def _privileges() -> str:
    if not kernel.has_net_admin():
        raise RuntimeError(f"running as uid {os.geteuid()} without CAP_NET_ADMIN")
    return "root" if os.geteuid() == 0 else "CAP_NET_ADMIN"


def _nfq() -> str:
    import netfilterqueue

    from . import _hot  # noqa: F401 - the compiled hot path must load too

    return f"NetfilterQueue {getattr(netfilterqueue, '__version__', '?')} and pktlab._hot load"


def _live_queue() -> str:
    """Make a throwaway lab, bind a queue with a rule in it, pass a packet, tear down."""
    from .lab import Lab
    from .session import attach

    with Lab() as lab:
        s = attach(65000, rule="-p udp --dport 9", netns=lab.server)
        try:
            r = lab.udp(3, port=9, idle=0.5)
            if s.record.n != 3 or r.unique != 3:
                raise RuntimeError(f"sent 3 datagrams, the queue saw {s.record.n} and the receiver got {r.unique}")
        finally:
            s.detach()
    return "namespaces, veth, an NFQUEUE rule and a bound queue carried 3 datagrams"


def run(clean: bool = False) -> Report:
    """Check this machine; with ``clean``, also remove what dead pktlab processes left."""
    checks = [
        _try("tools", _tools, "run `make setup` (apt-get install iptables iproute2)"),
        _try("privileges", _privileges, "run as root (sudo)"),
        _try("python packages", _nfq, "run `make setup` (it builds NetfilterQueue and pktlab._hot)"),
    ]
    cleaned: list[str] = []
    if clean and checks[1].ok:  # before the live check, whose lab would sweep silently
        from . import lab, rules

        cleaned = [f"namespace {n}" for n in lab.sweep_stale()] + [f"host rule {t}" for t in rules.sweep_stale(None)]
    if all(c.ok for c in checks):
        checks.append(_try("live queue", _live_queue, "see the message; `pktlab doctor --clean` removes leftovers"))
    return Report(checks, cleaned)
