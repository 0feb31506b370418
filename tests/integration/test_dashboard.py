"""Dashboard and controls on a real queue, driven without a browser (the browser test drives the page)."""

from __future__ import annotations

import time

from bokeh.models import DatetimeAxis, Plot

import pktlab
from pktlab import Lab
from pktlab.lab.network import wait_until
from tests.conftest import needs_live


@needs_live
def test_dashboard_updates_at_2_hz_and_stops_on_detach(lab: Lab, queue_num: int) -> None:
    s = pktlab.attach(queue_num, rule="-p udp --dport 9000", netns=lab.server)
    d = s.dashboard()
    try:
        assert d.period == 0.5  # 2 Hz; that the thread keeps it under load is measured in bench/, not asserted here
        flow = lab.start_udp(3000, rate=1000, idle=1.0)
        assert wait_until(lambda: s.record.n > 0 and d.updates >= 4, timeout=30)
        assert flow.wait().unique == 3000 and s.record.n == 3000
        # synchronise on the monitor: the first update that starts after the last packet shows all of them
        seen = d.updates
        assert wait_until(lambda: d.updates >= seen + 2, timeout=30)
        assert f"<span class='pktlab-packets'>{s.record.n}</span>" in d.counter.text
        assert max(d.rates.data["pps"]) > 0 and d.table.data["dport"][:1] == [9000]
        assert len(d.rates.data["t"]) <= d.keep  # bounded
    finally:
        s.detach()
    n = d.updates
    time.sleep(1.2)
    assert d.updates == n and not d.running  # stopped with the session


@needs_live
def test_controls_pause_step_inspect_and_resume(lab: Lab, queue_num: int) -> None:
    s = pktlab.attach(queue_num, rule="-p udp --dport 9000", netns=lab.server)
    s.add_handler(lambda p: None, "look")
    c = s.controls()
    try:
        c.pause.click()
        assert s.paused and "PAUSED" in c.state.value
        flow = lab.start_udp(5, rate=100, idle=3.0, keep=5)
        assert wait_until(lambda: s.kernel_counters().queue_total == 5)
        c.refresh(None)
        assert "waiting in the kernel: <span class='pktlab-waiting'>5</span>" in c.depth.value
        c.step.click()
        assert "udp" in c.inspector.value and not c.accept.disabled and len(s.held) == 1
        c.accept.click()
        assert len(s.held) == 0 and c.accept.disabled and s.record.n == 1
        c.toggles.children[0].value = False
        assert not s.chain["look"].enabled
        c.default.value = "drop"
        assert str(s.default) == "drop"
        c.default.value = "accept"
        c.filter.value = "udp and dst prot 9"
        assert "libpcap cannot compile" in c.filter_msg.value
        c.filter.value = "udp"
        assert s.table_filter is not None
        c.resume.click()
        r = flow.wait()
        assert r.unique == 5 and s.record.n == 5
    finally:
        s.detach()
    assert "detached" in c.state.value  # the monitor's last look, made as the session detached


def test_replay_has_a_dashboard_too() -> None:
    s = pktlab.replay("lab-udp-sizes")
    d = s.dashboard(period=0.05)
    first = d.packet_table.view.filter
    s.run(pace=10.0)
    assert wait_until(lambda: d.updates >= 3)
    d.close()
    assert sum(d.table.data["size"]) > 0 and d.kernel.data["t"] == []
    # each update replaces the table view's filter: what makes BokehJS redraw a table whose row count stays
    assert d.packet_table.view.filter is not first


def test_the_plots_read_at_a_glance() -> None:
    d = pktlab.replay("lab-udp-sizes").dashboard(period=0.05)
    try:
        figs = [f for f in d.layout.select({"type": Plot}) if isinstance(f.xaxis[0], DatetimeAxis)]
        # rate, verdicts, kernel queue: four time labels at 420 px (labels one second apart overlapped)
        assert len(figs) == 3 and all(f.xaxis[0].ticker.desired_num_ticks == 4 for f in figs)
        (rate,) = [f for f in figs if f.title.text == "rate"]
        (mbps,) = [r for r in rate.renderers if r.glyph.y == "mbps"]
        # packets of one size make Mbps and packets/s one line: dashed, so the one under it shows
        assert mbps.glyph.line_dash == [6]  # bokeh's "dashed"
        (pps,) = [r for r in rate.renderers if r.glyph.y == "pps"]
        assert pps.glyph.line_dash == [] and mbps.glyph.line_width > pps.glyph.line_width
    finally:
        d.close()


def test_a_failing_update_is_said_in_the_page_not_swallowed() -> None:
    s = pktlab.replay("lab-udp-sizes")
    d = s.dashboard(period=0.05)

    def broken(*args, **kwargs):  # type: ignore[no-untyped-def]
        raise RuntimeError("no sample today")

    d.monitor.stats.sample = broken
    s.run(pace=10.0)
    assert wait_until(lambda: "could not update" in d.counter.text, timeout=10)
    d.close()
    assert "RuntimeError: no sample today" in d.counter.text and d.monitor.failures >= 1
