"""A trace's timeline made readable: rows, text, hooks per host (synthetic events; the kernel path: integration)."""

from __future__ import annotations

from pktlab.measure.timeline import Trace, TracedPacket, TraceEvent


def ev(t_us: int, kind: str, hook: str, text: str = "", verdict: str | None = None, own: bool = False) -> TraceEvent:
    return TraceEvent("client", "abc", 1_000_000_000 + t_us * 1000, "ip", "filter", hook.lower(), hook, kind, text,
                      verdict, own)  # fmt: skip


def trace() -> Trace:
    evs = [
        ev(0, "packet", "OUTPUT", "ip saddr 10.77.1.1 ip daddr 10.77.1.2 udp dport 9000", own=True),
        ev(3, "rule", "OUTPUT", "udp dport 9000 counter", "continue"),
        ev(5, "policy", "OUTPUT", verdict="accept"),
        ev(9, "packet", "POSTROUTING", "ip saddr 10.77.1.1", own=True),
    ]
    return Trace([TracedPacket(("10.77.1.1", "10.77.1.2", "1"), [("client", evs)])], "udp", ["client"])


def test_rows_carry_times_since_the_packet_entered() -> None:
    rows = trace().rows()
    assert [r["t_us"] for r in rows] == [0.0, 3.0, 5.0, 9.0] and [r["dt_us"] for r in rows] == [0.0, 3.0, 2.0, 4.0]
    assert {r["host"] for r in rows} == {"client"} and rows[2]["verdict"] == "accept"
    assert list(trace().df.columns)[:3] == ["packet", "host", "hook"]


def test_text_and_hooks() -> None:
    tr = trace()
    text = tr.text()
    assert text.splitlines()[0] == "packet 0: ip saddr 10.77.1.1 ip daddr 10.77.1.2 udp dport 9000"
    assert "rule udp dport 9000 counter -> continue" in text and "policy accept" in text
    assert tr.packets[0].hooks("client") == ["OUTPUT", "POSTROUTING"] and tr.packets[0].hooks("server") == []
    assert "no packet matching udp crossed client" in Trace([], "udp", ["client"]).text()


def test_the_plot_orders_events_and_claims_no_time_axis() -> None:
    fig = trace().plot()
    assert "not time" in fig.xaxis[0].axis_label
    (line,) = [r for r in fig.renderers if r.glyph.__class__.__name__ == "Line"]
    assert list(line.data_source.data["t"]) == [0, 1, 2, 3]  # steps, in order along the path
