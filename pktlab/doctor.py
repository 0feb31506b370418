"""What this machine allows: each thing a live session needs, checked for real, with the fix."""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass

from .version import VERSION


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
    replay: Check | None = None
    extras: tuple[Check, ...] = ()  # what a feature beyond live and replay needs (they decide no mode)

    @property
    def live(self) -> bool:
        """True when labs and live queues work here."""
        return all(c.ok for c in self.checks)

    @property
    def mode(self) -> str:
        """``"live"``, ``"replay"`` (captures only) or ``"none"``."""
        if self.live:
            return "live"
        return "replay" if self.replay is not None and self.replay.ok else "none"

    def __str__(self) -> str:
        lines = [str(c) for c in self.checks]
        if self.replay is not None:
            lines.append(str(self.replay))
        lines += [str(c) for c in self.extras]
        failed = ", ".join(c.name for c in self.checks if not c.ok)
        if self.mode == "live":
            lines.append("=> live mode: labs and NFQUEUE sessions work on this machine (replay too)")
        elif self.mode == "replay":
            lines.append(
                f"=> replay only: no live queue here ({failed}); handlers run on captures with "
                "pktlab.replay(...); fix the FAIL lines above for live mode"
            )
        else:
            lines.append(f"=> neither live nor replay mode works here ({failed}); fix the FAIL lines above")
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


def _kernel() -> str:
    for path in ("/proc/self/net/netfilter/nfnetlink_queue", "/proc/net/netfilter/nfnetlink_queue"):
        if os.path.exists(path):
            return "the kernel's NFQUEUE support (nfnetlink_queue) is loaded"
    raise RuntimeError("the kernel shows no NFQUEUE support (no /proc/net/netfilter/nfnetlink_queue)")


def _replay() -> str:
    from .pipeline.replay import replay

    s = replay("lab-udp")
    s.add_handler(lambda p: p.drop() if p.udp and p.udp.dport == 9000 else None, "check")
    st = s.run()
    if st.counters["drop"] != st.packets:
        raise RuntimeError(f"a replay of lab-udp dropped {st.counters['drop']} of {st.packets} packets, not all")
    return f"scapy reads captures and a replay of lab-udp ran its {st.packets} packets through a handler"


def mode() -> str:
    """``"live"`` when this process can make labs and bind queues, else ``"replay"``; quick, no lab made.

    ``PKTLAB_REPLAY=1`` in the environment forces ``"replay"`` (notebooks use it to test their replay path).
    """
    if os.environ.get("PKTLAB_REPLAY", "").lower() in ("1", "true", "yes"):
        return "replay"
    try:
        _tools()
        _kernel()
        _privileges()
        _nfq()
    except Exception:
        return "replay"
    return "live"


def privilege_mode() -> str | None:
    """``"root"``, ``"userns"`` (an ordinary user: labs in user namespaces; no kernel tracepoints) or None (no
    live mode); ``PKTLAB_PRIVILEGE`` forces one.  ``mode()`` says whether live mode works at all."""
    from .kernel import privilege

    return privilege.current().name


def _privileges() -> str:
    from .kernel import privilege

    mode = privilege.current()
    if not mode.live:
        raise RuntimeError(mode.reason)
    if mode.name == "root":
        return f"root mode: {mode.reason}; labs under /var/run/netns, the host's namespace and tracepoints too"
    return (f"user-namespace mode: {mode.reason}; every lab feature works, kernel tracepoints "
            "(pktlab.trace, pktlab.drops) and the host's own namespace need root")  # fmt: skip


def _nfq() -> str:
    import netfilterqueue

    from .kernel import _reader  # noqa: F401 - the compiled parts must load too
    from .pipeline import _capture, _dispatch  # noqa: F401

    nfq = getattr(netfilterqueue, "__version__", "?")
    return f"pktlab {VERSION} with NetfilterQueue {nfq}: its compiled parts load"


def _live_queue() -> str:
    """Make a throwaway lab, bind a queue with a rule in it, pass and rewrite packets, tear down."""
    from .lab.network import Lab
    from .pipeline.session import attach

    with Lab() as lab:
        s = attach(65000, rule="-p udp --dport 9", netns=lab.server)
        try:
            r = lab.udp(3, port=9, idle=0.5)
            if s.record.n != 3 or r.unique != 3:
                raise RuntimeError(f"sent 3 datagrams, the queue saw {s.record.n} and the receiver got {r.unique}")

            def stamp(pkt):  # type: ignore[no-untyped-def]
                pkt.udp.payload = pkt.udp.payload[:4] + b"PKTL"

            s.add_handler(stamp, "stamp")
            r = lab.udp(3, port=9, size=8, idle=0.5, keep=3)
            if r.unique != 3 or any(p[4:] != b"PKTL" for p in r.payloads):
                raise RuntimeError(f"3 datagrams rewritten by a handler, the receiver got {r.unique} rewritten ones")
        finally:
            s.detach()
    return "namespaces, veth, an NFQUEUE rule and a bound queue carried 3 datagrams, and 3 rewritten by a handler"


def run(clean: bool = False) -> Report:
    """Check this machine; with ``clean``, also remove what dead pktlab processes left."""
    checks = [
        _try("kernel", _kernel, "load it as root: modprobe nfnetlink_queue xt_NFQUEUE"),
        _try("tools", _tools, "run `make setup` (apt-get install iptables iproute2)"),
        _try("privileges", _privileges,
             "run as root, or allow unprivileged user namespaces (see docs/how-to/without-root.md)"),
        _try("python packages", _nfq, "run `make setup` (it builds NetfilterQueue and pktlab's compiled parts)"),
    ]
    cleaned: list[str] = []
    from .kernel import privilege

    # before the live check, whose lab would sweep silently; an ordinary user's labs end with their helper
    if clean and checks[2].ok and privilege.current().name == "root":
        from .kernel import flow_rules, kernel_handlers, rules
        from .lab import network as lab

        cleaned = [f"namespace {n}" for n in lab.sweep_stale()] + [f"host rule {t}" for t in rules.sweep_stale(None)]
        cleaned += [f"host flow table {t}" for t in flow_rules.sweep_stale(None)]
        cleaned += [f"host kernel handler table {t}" for t in kernel_handlers.sweep_stale(None)]
    if all(c.ok for c in checks):
        checks.append(_try("live queue", _live_queue, "see the message; `pktlab doctor --clean` removes leftovers"))
    replay = _try("replay", _replay, "run `make setup` (scapy) and keep the repository's datasets/ folder")
    from .measure import drops, kernel_steps

    watch = _try("drops (pktlab.drops)", drops.available, "without it pktlab.drops cannot say why packets were dropped")
    timeline = _try("timeline (pktlab.trace)", kernel_steps.available,
                    "without it pktlab.trace cannot follow packets with the kernel's times")  # fmt: skip
    return Report(checks, cleaned, replay, (watch, timeline))
