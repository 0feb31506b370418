"""NetPIPE's method: the block schedule, the output format, the saturation point (no kernel needed)."""

from __future__ import annotations

from pathlib import Path

import pytest

from pktlab.measure.netpipe import NetpipeResult, Point, saturation_point, schedule


def test_schedule_follows_netpipe() -> None:
    s = schedule(1 << 20)
    assert s[:8] == [1, 2, 3, 4, 6, 8, 12, 13]  # unperturbed while the increment is small
    assert s == sorted(set(s)) and s[-1] == 1 << 20
    powers = [1 << k for k in range(5, 21)]
    for p in powers:  # from 32 bytes on, every power of two appears with its ±3 neighbours
        assert {p - 3, p, p + 3} & set(s) == ({p - 3, p, p + 3} if p < 1 << 20 else {p - 3, p})
    centres = [x for x in s if x - 3 in s and x + 3 in s]
    growth = [b / a for a, b in zip(centres, centres[1:], strict=False) if a >= 64]
    assert all(1.3 <= g <= 1.6 for g in growth)  # the increment doubles every other step: x1.33 and x1.5
    assert schedule(100, start=1) == [x for x in s if x <= 100]
    with pytest.raises(ValueError):
        schedule(0)


def test_saturation_point_on_synthetic_curves() -> None:
    # a latency + bandwidth model: t = L + n / B; throughput n / t approaches B
    latency, bandwidth = 30e-6, 10e9 / 8
    sizes = schedule(1 << 22)
    curve = [(n, n * 8 / (latency + n / bandwidth) / 1e6) for n in sizes]
    sat = saturation_point(curve)
    half = latency * bandwidth  # the block at which half the bandwidth is reached (n_1/2)
    assert sat is not None and 8 * half <= sat <= 10 * half * 1.7  # 90 % of B needs n = 9 n_1/2
    assert saturation_point(curve, fraction=0.5) <= half * 1.4
    dip = curve[:-3] + [(n, m * 0.5) for n, m in curve[-3:]]  # a collapse at the end (caches) moves nothing
    assert saturation_point(dip) == saturation_point(curve[:-3])
    assert saturation_point([]) is None


def test_np_out_format_and_summary(tmp_path: Path) -> None:
    r = NetpipeResult([Point("no queue", n, 10, 30e-6 + n / 1e9) for n in schedule(4096)], ["no queue"])
    assert r.to_netpipe(tmp_path / "np.out") == len(schedule(4096))
    lines = (tmp_path / "np.out").read_text().splitlines()
    b, mbps, t = lines[-1].split()
    assert int(b) == 4096 and float(mbps) == pytest.approx(4096 * 8 / (30e-6 + 4096 / 1e9) / 1e6, rel=1e-5)
    assert float(t) == pytest.approx(30e-6 + 4096 / 1e9, abs=1e-8)
    df = r.df
    assert list(df.columns) == ["config", "bytes", "repeats", "seconds", "usec", "Mbps"]
    summary = r.summary()
    assert summary["latency us"][0] == pytest.approx(30.001, rel=1e-3)
    assert r.plot() is not None


def test_progress_outside_a_terminal_prints_whole_lines(capsys: pytest.CaptureFixture[str]) -> None:
    from pktlab.measure.netpipe import _progress

    total = 40
    show = _progress(total, "no queue")  # pytest's captured stderr is not a terminal
    for i in range(1, total + 1):
        show(i, Point("no queue", i * 100, 10, 1e-5))
    err = capsys.readouterr().err
    lines = err.splitlines()
    assert "\r" not in err and err.endswith("\n")
    assert 2 <= len(lines) <= 10 and lines[-1].startswith("no queue: 40/40 points")
    assert all(line.startswith("no queue: ") for line in lines)
