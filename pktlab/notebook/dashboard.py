"""``s.dashboard()``: live bokeh plots of a session, in the notebook, without a bokeh server.

A :class:`Dashboard` owns a bokeh layout (packets/s and Mbps over the last
minutes, verdicts per second stacked by kind, the handler time histogram,
the kernel's queue depth and drops, a table of the newest packets and a
counter line) and updates its data sources from the session's
:class:`~pktlab.notebook.livestats.Monitor` thread, twice a second by default.  In a
notebook it is shown through jupyter_bokeh's ``BokehModel`` (an ipywidget:
JupyterLab 4 and the classic Notebook), whose model changes are synced to
the page as they happen, also while other cells run (as
:class:`~pktlab.notebook.bokeh_widget.LiveBokehModel`, so that a view drawn
while updates flow does not freeze).
"""

from __future__ import annotations

import threading
from typing import Any

from .livestats import HIST_EDGES_US, VERDICT_NAMES, Sample

COLOURS = {"accept": "#2ca02c", "drop": "#d62728", "repeat": "#1f77b4", "sent": "#9467bd"}


def _load_bokehjs() -> None:
    """BokehJS into the page (BokehModel's view needs it), from this install: no CDN, no network.

    With every display, not once per kernel: a page reloaded without saving, a notebook
    reopened or a second tab has no BokehJS until an output loads it, and the dashboard
    cell run again there would show "could not create a view" instead of the plots.  The
    price is BokehJS inline (about 4 MB) in each dashboard's output.
    """
    from bokeh.io import output_notebook
    from bokeh.resources import INLINE

    output_notebook(INLINE, hide_banner=True)


class Dashboard:
    """Live plots of one session (a live queue or a replay); ``close()`` stops the updates."""

    def __init__(self, session: Any, period: float = 0.5, window: float = 300.0) -> None:
        from bokeh.layouts import column, row
        from bokeh.models import ColumnDataSource, DataRange1d, DataTable, DateFormatter, Div, LinearAxis, TableColumn
        from bokeh.plotting import figure

        self.session = session
        self.period = period  # seconds between updates
        self._lock = threading.Lock()
        self.keep = max(2, int(window / period))
        self.rates = ColumnDataSource({"t": [], "pps": [], "mbps": [], "errors": []})
        self.verdicts = ColumnDataSource({"t": [], **{v: [] for v in VERDICT_NAMES}})
        self.kernel = ColumnDataSource({"t": [], "depth": [], "drops": []})
        self.hist = ColumnDataSource(
            {"left": [0.05, *HIST_EDGES_US], "right": [*HIST_EDGES_US, HIST_EDGES_US[-1] * 1.8],
             "count": [0] * (len(HIST_EDGES_US) + 1)}
        )  # fmt: skip
        self.table = ColumnDataSource({c: [] for c in ("time", "proto", "src", "dst", "dport", "size", "verdict",
                                                        "handler")})  # fmt: skip
        self.counter = Div(text=self._counter_text(None), name="pktlab-counter")
        kw: dict[str, Any] = {"height": 240, "width": 420, "x_axis_type": "datetime", "tools": "pan,wheel_zoom,reset"}
        # packets/s on the left axis, Mbps on its own right axis (one axis flattened the smaller to zero)
        pps = figure(title="rate", y_range=DataRange1d(start=0), **kw)
        pps.yaxis.axis_label = "packets/s"
        pps.line("t", "pps", source=self.rates, legend_label="packets/s", color="#1f77b4")
        # dashed and wider: with packets of one size the two lines coincide, and a solid Mbps line hid packets/s
        mbps = pps.line("t", "mbps", source=self.rates, legend_label="Mbps", color="#ff7f0e", y_range_name="mbps",
                        line_dash="dashed", line_width=2)  # fmt: skip
        pps.extra_y_ranges = {"mbps": DataRange1d(start=0, renderers=[mbps])}
        pps.add_layout(LinearAxis(y_range_name="mbps", axis_label="Mbps"), "right")
        ver = figure(title="verdicts per second", y_range=DataRange1d(start=0), **kw)
        ver.yaxis.axis_label = "packets/s"
        ver.varea_stack(list(VERDICT_NAMES), x="t", source=self.verdicts, color=[COLOURS[v] for v in VERDICT_NAMES],
                        legend_label=list(VERDICT_NAMES))  # fmt: skip
        hist = figure(title=f"time in the handlers, packets of the last {period:g} s", x_axis_type="log", height=240,
                      width=420, y_range=DataRange1d(start=0), tools="pan,wheel_zoom,reset")  # fmt: skip
        hist.xaxis.axis_label = "µs per packet"
        hist.yaxis.axis_label = "packets"
        hist.quad(left="left", right="right", top="count", bottom=0, source=self.hist, color="#9467bd")
        ker = figure(title="kernel queue", y_range=DataRange1d(start=0, min_interval=1), **kw)
        ker.yaxis.axis_label = "packets"
        ker.line("t", "depth", source=self.kernel, legend_label="waiting", color="#8c564b")
        ker.line("t", "drops", source=self.kernel, legend_label="dropped (total)", color="#d62728")
        for fig in (pps, ver, ker):  # legends under the plot, not over the data
            fig.xaxis.ticker.desired_num_ticks = 4  # time labels a second apart overlapped at 420 px
            legend = fig.legend[0]
            legend.orientation = "horizontal"
            fig.add_layout(legend, "below")
        cols = [TableColumn(field=c, title=c, formatter=DateFormatter(format="%H:%M:%S.%3N")) if c == "time"
                else TableColumn(field=c, title=c) for c in self.table.data]  # fmt: skip
        tbl = DataTable(source=self.table, columns=cols, width=860, height=260, index_position=None)
        self.packet_table = tbl  # the newest packets (a bokeh DataTable)
        self.layout = column(self.counter, row(pps, ver), row(hist, ker), tbl, name="pktlab-dashboard")
        self.monitor = session.live_monitor(period, window)  # the statistics thread it is drawn from
        self.monitor.subscribe(self.update, on_error=self._show_error)
        self.updates = 0
        self._model: Any = None

    def _counter_text(self, s: Sample | None) -> str:
        name = getattr(self.session, "name", "?")
        if s is None:
            return f"<b>{name}</b>: packets <span class='pktlab-packets'>0</span>"
        depth = (
            ""
            if s.queue_depth is None
            else f", waiting in the kernel <span class='pktlab-depth'>{s.queue_depth}</span>"
        )
        flows = f", flows decided <span class='pktlab-flows'>{s.flows_decided}</span>" if s.flows_decided else ""
        kernel = (f", decided by kernel handlers <span class='pktlab-kernel-decided'>{s.kernel_decided}</span>"
                  if s.kernel_decided else "")  # fmt: skip
        return (f"<b>{name}</b>: packets <span class='pktlab-packets'>{s.packets}</span>, "
                f"{s.pps:,.0f} packets/s, {s.mbps:,.2f} Mbps{depth}{flows}{kernel}")  # fmt: skip

    def update(self, s: Sample) -> None:
        """Push one sample into the plots (called by the monitor thread)."""
        from bokeh.models import AllIndices

        from ..packet.model import summarize

        with self._lock:
            t = s.t * 1000.0  # bokeh datetimes are ms
            doc = self.layout.document
            hold = doc is not None
            if hold:
                doc.hold("combine")
            try:
                self.rates.stream({"t": [t], "pps": [s.pps], "mbps": [s.mbps], "errors": [s.errors_ps]},
                                  rollover=self.keep)  # fmt: skip
                self.verdicts.stream({"t": [t], **{v: [s.verdicts_ps[v]] for v in VERDICT_NAMES}}, rollover=self.keep)
                if s.queue_depth is not None:
                    self.kernel.stream({"t": [t], "depth": [s.queue_depth], "drops": [s.kernel_drops]},
                                       rollover=self.keep)  # fmt: skip
                self.hist.data["count"] = list(s.hist_counts)
                rows: dict[str, list[Any]] = {c: [] for c in self.table.data}
                keep = self.session.table_filter if hasattr(self.session, "table_filter") else None
                for e in s.latest:
                    if keep is not None and not keep.matches(e.head):
                        continue
                    summ = summarize(e.head)
                    rows["time"].append(e.time * 1000.0)
                    rows["proto"].append(summ.get("proto"))
                    rows["src"].append(summ.get("src"))
                    rows["dst"].append(summ.get("dst"))
                    rows["dport"].append(summ.get("dport"))
                    rows["size"].append(e.size)
                    rows["verdict"].append(e.verdict)
                    rows["handler"].append(e.handler or "")
                self.table.data = rows
                # BokehJS redraws a DataTable when its view's indices change; with as many rows as before
                # (a full table) they do not, and the table kept its first rows (seen in JupyterLab). A new
                # filter object is a change of the view itself, which makes the table redraw.
                self.packet_table.view.filter = AllIndices()
                self.counter.text = self._counter_text(s)
            finally:
                if hold:
                    doc.unhold()
            self.updates += 1

    def widget(self) -> Any:
        """The dashboard as an ipywidget (jupyter_bokeh's BokehModel, with patches any view can join)."""
        if self._model is None:
            from .bokeh_widget import LiveBokehModel

            self._model = LiveBokehModel(self.layout)
        return self._model

    def _ipython_display_(self) -> None:
        from IPython.display import display

        _load_bokehjs()
        display(self.widget())

    def _show_error(self, reason: str) -> None:
        """Say in the page that an update failed, and why, instead of freezing silently."""
        from html import escape

        name = escape(str(getattr(self.session, "name", "?")))
        self.counter.text = (f"<b>{name}</b>: <span class='pktlab-error' style='color:#d62728'>"
                             f"the dashboard could not update: {escape(reason)}</span>")  # fmt: skip

    def close(self) -> None:
        """Stop updating (the plots stay as they are)."""
        self.monitor.unsubscribe(self.update)

    @property
    def running(self) -> bool:
        return self.monitor.running and self.update in self.monitor._subs
