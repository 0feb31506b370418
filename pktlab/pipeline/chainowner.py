"""The handler-chain half of a session: handlers, default and error verdicts, the record's views.

:class:`~pktlab.Session` (whose packets come from a kernel queue or a capture)
gets these from here; what a person does to the chain (``@s.handler``,
``enable``, ``df``, ``errors``) lives in this one place.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

from ..errors import HandlerError, MissingToolError
from ..kernel.handler_compile import compile_handler
from ..packet.model import Packet
from ..packet.verdicts import Verdict
from . import HOOKS, export
from .handlers import Handler, HandlerChain, HandlerFailure
from .record import Record
from .tcp_analysis import Followed, follow


def hook(name: str) -> Callable[..., Any]:
    """The pipeline's hook ``name`` (``pktlab.pipeline.HOOKS``, registered by pktlab's front)."""
    try:
        return HOOKS[name]
    except KeyError:
        raise MissingToolError(f"no {name} is registered; import pktlab (its front registers the pipeline's hooks)") \
            from None


class ChainOwner:
    """Handler management, default and error verdicts, and the record of a session."""

    name: str
    chain: HandlerChain
    record: Record
    _default: Verdict
    _on_error: Verdict

    _monitor: Any = None
    table_filter: Any = None  # a BpfProgram the dashboard's packet table shows matches of (controls set it)

    def _verdicts_changed(self) -> None:
        """Called after ``default`` or ``on_error`` changed (a live session tells its dispatcher)."""

    def live_monitor(self, period: float = 0.5, window: float = 300.0) -> Any:
        """The session's one statistics thread, shared by its dashboard and controls (made on first use)."""
        if self._monitor is None:
            self._monitor = hook("monitor")(self, period, window)
        return self._monitor

    def dashboard(self, period: float = 0.5, window: float = 300.0) -> Any:
        """Live plots of this session, updated every ``period`` s (see :mod:`pktlab.notebook.dashboard`)."""
        return hook("dashboard")(self, period, window)

    @property
    def default(self) -> Verdict:
        """The verdict of a packet no handler decided on."""
        return self._default

    @default.setter
    def default(self, value: str | Verdict) -> None:
        self._default = Verdict.parse(value)
        self._verdicts_changed()

    @property
    def on_error(self) -> Verdict:
        """The verdict of a packet whose handler raised."""
        return self._on_error

    @on_error.setter
    def on_error(self, value: str | Verdict) -> None:
        self._on_error = Verdict.parse(value)
        self._verdicts_changed()

    # -- handlers --------------------------------------------------------------
    def handler(
        self,
        fn: Callable[[Packet], Any] | None = None,
        *,
        name: str | None = None,
        before: str | None = None,
        after: str | None = None,
        kernel: bool = False,
    ) -> Any:
        """Decorator: ``@s.handler`` adds (or, same name, replaces) a handler.

        ``kernel=True`` compiles it into nftables rules that run in the kernel, in front of the queue
        (:mod:`pktlab.kernel.handler_compile` says what it may hold); a replay runs it in Python.
        """

        def register(f: Callable[[Packet], Any]) -> Callable[[Packet], Any]:
            self.add_handler(f, name, before=before, after=after, kernel=kernel)
            return f

        return register(fn) if fn is not None else register

    def add_handler(
        self, fn: Callable[[Packet], Any], name: str | None = None, *, kernel: bool = False,
        first_line: int | None = None, **kwargs: Any,
    ) -> Handler:  # fmt: skip
        """Add or replace a handler (see :meth:`HandlerChain.add`); ``kernel=True``: compiled, run in the kernel.

        A kernel handler's rules are installed before the chain changes: if the kernel refuses them, the error
        says why and the chain stays as it was.  ``first_line``: the line number of the ``def`` in messages.
        """
        compiled = None
        if kernel:
            label = name or getattr(fn, "__name__", None) or "handler"
            compiled = compile_handler(fn, family=self.handler_family(), name=label, first_line=first_line)
        return self.chain.add(fn, name, kernel=compiled, **kwargs)

    def offload_handler(self, fn: Callable[[Packet], Any], name: str | None = None) -> Handler:
        """``add_handler(fn, name, kernel=True)``: the handler compiled into nftables rules, run in the kernel."""
        return self.add_handler(fn, name, kernel=True)

    def handler_family(self) -> str:
        """The address family of the packets the handlers see: ``ipv4``, ``ipv6`` or ``both``."""
        return "both"

    @property
    def kernel_rules(self) -> Any:
        """The kernel handlers' nftables rules as a DataFrame: handler, line (of its Python), python, rule,
        packets (what the rule matched in the kernel; live only, None in a replay, where they run in Python)."""
        import pandas as pd

        counts = self.kernel_rule_counts()
        rows = []
        for h in self.chain:
            if h.kernel is None:
                continue
            mine = [c for c in counts or [] if c.handler == h.name]
            for i, r in enumerate(h.kernel.rules):
                packets = mine[i].packets if i < len(mine) else None
                rows.append({"handler": h.name, "line": r.line, "python": r.python, "rule": r.text.replace("@", ""),
                             "packets": packets})  # fmt: skip
        return pd.DataFrame(rows, columns=["handler", "line", "python", "rule", "packets"])

    def kernel_rule_counts(self) -> list[Any] | None:
        """The installed kernel rules' counters (None: the handlers run in Python here)."""
        return None

    @property
    def kernel_decided(self) -> int:
        """Packets the kernel handlers gave a verdict (accept or drop) in the kernel so far (0: none installed)."""
        if not self.chain.kernel_handlers():
            return 0
        return sum(c.packets for c in self.kernel_rule_counts() or [] if c.rule.split()[-1] in ("accept", "drop"))

    def remove_handler(self, name: str) -> None:
        self.chain.remove(name)

    def enable(self, name: str, on: bool = True) -> None:
        """Switch a handler on or off without removing it."""
        self.chain.enable(name, on)

    @property
    def handlers(self) -> list[str]:
        return self.chain.names

    def handler_table(self) -> Any:
        """The handlers as a DataFrame: name, on, packets (whose verdict it gave, in the record), drops, errors."""
        import pandas as pd

        decided: dict[str, list[int]] = {}
        for e in self.record.entries():
            if e.handler is not None:
                n = decided.setdefault(e.handler, [0, 0])
                n[0] += 1
                n[1] += e.verdict == "drop"
        rows = [{"name": h.name, "on": h.enabled, "packets": decided.get(h.name, [0, 0])[0],
                 "drops": decided.get(h.name, [0, 0])[1], "errors": h.errors} for h in self.chain]  # fmt: skip
        return pd.DataFrame(rows, columns=["name", "on", "packets", "drops", "errors"])

    def handler_source(self, name: str) -> str:
        """The source of handler ``name``: its cell (``%%pktlab handler``) or its function's code."""
        import inspect

        h = next((h for h in self.chain if h.name == name), None)
        if h is None:
            have = ", ".join(self.handlers) or "none"
            raise HandlerError(f"no handler {name!r} in {self.name}; its handlers are {have}")
        if h.source:
            return h.source
        try:
            return inspect.getsource(h.fn)
        except (OSError, TypeError):
            return f"# the source of {name} is not available (a function made outside a file or cell): {h.fn!r}"

    # -- looking at what happened -------------------------------------------------
    @property
    def errors(self) -> list[HandlerFailure]:
        """Handler exceptions kept with the packet they failed on (newest last)."""
        return list(self.chain.failures)

    @property
    def df(self) -> Any:
        """The record as a pandas DataFrame (one row per packet)."""
        return self.record.df()

    def flow(self, flow_id: int) -> Any:
        """One flow's packets from the record (``s.df`` rows whose ``flow`` is ``flow_id``), both directions."""
        df = self.df
        if flow_id not in set(df["flow"].dropna()):
            raise KeyError(f"no flow {flow_id} in the record of {self.name}; s.df['flow'] lists the flows it holds")
        return df[df["flow"] == flow_id].reset_index(drop=True)

    def follow(self, flow_id: int, *, delivered: bool = False) -> Followed:
        """Flow ``flow_id``'s two byte streams (``.client``, ``.server``), reassembled like Wireshark's Follow TCP
        Stream: what each side sent, as it reached the session; ``delivered=True``: what went on (drops left out,
        handlers' rewrites applied).  ``.missing`` counts bytes that did not pass or that the record cut (attach
        with ``snaplen=65535`` to keep whole packets)."""
        return follow(self.record.entries(), flow_id, delivered=delivered, rewritten=self.record.rewritten)

    def to_pcap(self, path: str | os.PathLike[str]) -> int:
        """Write the packets seen (up to ``snaplen`` bytes each) to a pcapng file, each with a comment naming its
        session, verdict and handler; :func:`pktlab.to_pcap` merges several sessions into one file."""
        return export.to_pcap(self, path)
