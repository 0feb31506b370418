"""``s.controls()``: ipywidgets to pause, step, inspect and steer a session (a live queue or a replay).

Pause/Resume (packets wait in the kernel queue; its length and what the
kernel did beyond ``max_len`` are shown), Step (the next waiting packet is
held and shown in an inspector with its protocol view; Accept or Drop gives
its verdict), one toggle per handler, the default and error verdicts, and a
tcpdump filter for the dashboard's packet table.  Labels refresh from the
session's monitor thread.
"""

from __future__ import annotations

import threading
from typing import Any

from ..errors import PktlabError
from .livestats import Sample


class Controls:
    """The control panel of one session."""

    def __init__(self, session: Any, period: float = 0.5) -> None:
        import ipywidgets as w

        self.session = session
        self._lock = threading.Lock()
        layout = w.Layout(width="auto")
        self.pause = w.Button(description="Pause", icon="pause", layout=layout)
        self.resume = w.Button(description="Resume", icon="play", layout=layout)
        self.step = w.Button(description="Step", icon="step-forward", layout=layout)
        self.state = w.HTML()
        self.depth = w.HTML()
        self.inspector = w.HTML("<i>Step holds the next waiting packet here.</i>")
        self.accept = w.Button(description="Accept", button_style="success", disabled=True)
        self.drop = w.Button(description="Drop", button_style="danger", disabled=True)
        self.default = w.Dropdown(options=["accept", "drop"], value=str(session.default), description="default")
        self.on_error = w.Dropdown(options=["accept", "drop"], value=str(session.on_error), description="on error")
        self.filter = w.Text(placeholder="tcpdump filter for the packet table", description="table")
        self.filter_msg = w.HTML()
        self.toggles = w.VBox()
        self._handler_names: list[str] = []
        self._inspected: Any = None
        self.pause.on_click(lambda _: self._do(session.pause))
        self.resume.on_click(lambda _: self._do(session.resume))
        self.step.on_click(lambda _: self._do(self._step))
        self.accept.on_click(lambda _: self._do(lambda: self._decide("accept")))
        self.drop.on_click(lambda _: self._do(lambda: self._decide("drop")))
        self.default.observe(lambda ch: self._do(lambda: setattr(session, "default", ch["new"])), names="value")
        self.on_error.observe(lambda ch: self._do(lambda: setattr(session, "on_error", ch["new"])), names="value")
        self.filter.observe(lambda ch: self._set_filter(ch["new"]), names="value")
        self.box = w.VBox([
            w.HBox([self.pause, self.resume, self.step, self.state]),
            self.depth,
            w.HBox([self.default, self.on_error]),
            w.HBox([self.filter, self.filter_msg]),
            w.HTML("<b>handlers</b>"),
            self.toggles,
            w.HTML("<b>inspector</b>"),
            self.inspector,
            w.HBox([self.accept, self.drop]),
        ])  # fmt: skip
        self._refresh_toggles()
        self.refresh(None)
        self._monitor = session.live_monitor(period, 300.0)
        self._monitor.subscribe(self.refresh)

    def _do(self, fn: Any) -> None:
        try:
            fn()
            self.refresh(None)
        except PktlabError as exc:
            self.state.value = f"<span style='color:#d62728'>{exc}</span>"

    # -- step and inspect ---------------------------------------------------------------
    def _step(self) -> None:
        s = self.session
        if self._inspected is not None:
            raise PktlabError("decide on the inspected packet first (Accept or Drop)")
        if not s.paused:
            raise PktlabError("Step works on a paused session: press Pause first")
        held = s.step_and_hold()  # the one packet step() reads is held for the inspector
        if held is None:
            self.inspector.value = "<i>no packet was waiting</i>"
            return
        self._inspected = held
        self.inspector.value = self._inspected.packet._repr_html_()
        self.accept.disabled = self.drop.disabled = False

    def _decide(self, verdict: str) -> None:
        h = self._inspected
        if h is None:
            raise PktlabError("no packet in the inspector; press Step")
        h.give(verdict, by="inspector")
        self.inspector.value = f"<i>{h.packet.summary()} -> {verdict}</i>"
        self._inspected = None
        self.accept.disabled = self.drop.disabled = True

    # -- handlers and filter ------------------------------------------------------------
    def _refresh_toggles(self) -> None:
        import ipywidgets as w

        names = list(self.session.handlers)
        if names == self._handler_names:
            for cb in self.toggles.children:
                cb.value = self.session.chain[cb.description].enabled
            return
        boxes = []
        for n in names:
            cb = w.Checkbox(value=self.session.chain[n].enabled, description=n, indent=False)
            cb.observe(lambda ch, n=n: self._do(lambda: self.session.enable(n, ch["new"])), names="value")
            boxes.append(cb)
        self.toggles.children = boxes
        self._handler_names = names

    def _set_filter(self, text: str) -> None:
        from ..kernel import bpf

        if not text.strip():
            self.session.table_filter = None
            self.filter_msg.value = ""
            return
        try:
            self.session.table_filter = bpf.compile(text)
            self.filter_msg.value = "<span style='color:#2ca02c'>ok</span>"
        except PktlabError as exc:
            self.filter_msg.value = f"<span style='color:#d62728'>{exc}</span>"

    def refresh(self, s: Sample | None) -> None:
        """Update the labels (called by the monitor thread, and after each click)."""
        with self._lock:
            sess = self.session
            st = "PAUSED" if sess.paused else ("running" if sess.attached else "detached")
            self.state.value = f"<b class='pktlab-state'>{st}</b>"
            k = sess.kernel_counters()
            if k is not None:
                mode = "passed unseen (fail-open)" if sess.source.fail_open else "dropped (fail-closed)"
                self.depth.value = (
                    f"waiting in the kernel: <span class='pktlab-waiting'>{k.queue_total}</span> of "
                    f"{sess.source.max_len}; beyond that the kernel {mode}: queue_dropped {k.queue_dropped}, "
                    f"held by the notebook: {len(sess.held)}"
                )
            elif sess.is_replay:
                self.depth.value = (
                    f"read from the capture: <span class='pktlab-read'>{sess.status().packets}</span>; "
                    f"held by the notebook: {len(sess.held)}"
                )
            self._refresh_toggles()

    def _ipython_display_(self) -> None:
        from IPython.display import display

        display(self.box)

    def close(self) -> None:
        self._monitor.unsubscribe(self.refresh)
