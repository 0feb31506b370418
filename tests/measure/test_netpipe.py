"""NetPIPE's method: the block schedule, the output format, the saturation point, steal-free trials, the
comparison of runs (no kernel needed: loopback and synthetic runs)."""

from __future__ import annotations

from pathlib import Path

import pytest

from pktlab.measure import netpipe as np_mod
from pktlab.measure.netpipe import NetpipeResult, Point, compare_runs, saturation_point, schedule


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


def test_steps_carry_the_increment_that_sets_each_trials_round_trips() -> None:
    s = np_mod.steps(1 << 20)
    assert [n for n, _ in s] == schedule(1 << 20)
    assert s[:3] == [(1, 1), (2, 1), (3, 1)] and dict(s)[1 << 17] == 1 << 16  # the increment after its update
    assert np_mod.steps(1 << 20, start=65536)[:4] == [(65533, 32768), (65536, 32768), (65539, 32768), (98301, 32768)]


def test_trial_round_trips_follow_nptcps_rule() -> None:
    """NPtcp's RUNTM rule: at the previous block's pace a trial lasts 2 RUNTM over the step's scale, at least 3."""
    for previous, inc, one_way in [(131069, 32768, 42e-6), (1024, 256, 9e-6), (1, 1, 5e-6)]:
        n = np_mod.trial_round_trips(0.1, previous, inc, one_way)
        scale = previous / (previous - inc + 1)
        assert n == int(0.1 / (scale * one_way))
        assert abs(n * 2 * one_way - 0.2 / scale) <= 2 * one_way  # the trial's length at the previous pace
    assert np_mod.trial_round_trips(0.1, 1 << 20, 1 << 18, 0.5) == 3  # a slow block: NetPIPE's TRIALS at least
    assert np_mod.trial_round_trips(0.1, 4, 1, 0.0) == np_mod.MAX_ROUND_TRIPS  # a clock that said 0: bounded


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
    assert list(df.columns) == ["config", "bytes", "repeats", "seconds", "usec", "Mbps", "stolen", "clean"]
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


def _runs(curve: dict[int, list[float]]) -> list[NetpipeResult]:
    """Runs whose Mbps at each size are the given lists (run i takes element i)."""
    n = len(next(iter(curve.values())))
    return [NetpipeResult([Point("x", b, 30, b * 8 / (m[i] * 1e6)) for b, m in curve.items()], ["x"]) for i in range(n)]


def test_compare_runs_finds_a_collapse_but_not_a_slow_mode_in_single_runs() -> None:
    sizes = [b for b in schedule(1 << 20) if b > 64 * 1024]
    ref = _runs({b: [20_000.0] * 7 for b in sizes})
    # steal: every size drops to a third in two of seven runs (a different pair for each size)
    noisy = {b: [20_000.0 / 3 if i in (k % 7, (k + 3) % 7) else 20_000.0 for i in range(7)]
             for k, b in enumerate(sizes)}  # fmt: skip
    table = compare_runs(_runs(noisy), ref)
    assert list(table["bytes"]) == sizes and not table["collapsed"].any()
    assert table["median run ratio"].median() == pytest.approx(1.0)
    # issue 21: from 256 KiB on, a third of the reference in every run
    collapse = {b: [20_000.0 / 3 if b >= 256 * 1024 else 20_000.0] * 7 for b in sizes}
    table = compare_runs(_runs(collapse), ref)
    assert list(table.loc[table["collapsed"], "bytes"]) == [b for b in sizes if b >= 256 * 1024]
    # the reference in its slow mode in one run only: the fastest-run ratio moves, the median does not
    ref_noisy = _runs({b: [60_000.0] + [20_000.0] * 6 for b in sizes})
    table = compare_runs(_runs({b: [20_000.0] * 7 for b in sizes}), ref_noisy)
    assert (table["ratio of fastest"] < 0.5).all() and not table["collapsed"].any()
    with pytest.raises(ValueError, match="same number of runs"):
        compare_runs(ref[:3], ref)


def test_steal_ticks_reads_proc_stat() -> None:
    everything = np_mod.steal_ticks()
    assert everything >= 0 and np_mod.steal_ticks([0]) <= everything + 100  # ticks only grow; cpu0 is part of all


def test_trials_with_steal_are_set_aside(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    """The client's loop on loopback, with the host's steal faked: disturbed trials are replaced, then given up on."""
    import json
    import socket
    import threading

    ls = socket.socket()
    ls.bind(("127.0.0.1", 0))
    port = ls.getsockname()[1]
    ls.close()
    server = threading.Thread(target=np_mod.serve, args=(port, "tcp"), daemon=True)
    server.start()
    ticks = iter(range(1, 10_000))
    stealing = {"sizes": {1000}}  # every trial of 1000-byte blocks has steal; 2000: every other trial
    calls = {"n": 0}

    def fake_steal(cpus=None):  # type: ignore[no-untyped-def]
        calls["n"] += 1
        size = current["size"]
        if size in stealing["sizes"] or (size == 2000 and calls["n"] % 4 == 0):
            return next(ticks)  # a new value each reading: steal during the trial
        return 0

    current = {"size": 0}
    from pktlab.measure import _pingpong

    real = _pingpong.round_trips

    def trip(fd: int, size: int, count: int) -> float:
        current["size"] = size
        return real(fd, size, count)

    monkeypatch.setattr(_pingpong, "round_trips", trip)
    monkeypatch.setattr(np_mod, "steal_ticks", fake_steal)
    for _ in range(50):  # the server thread listens once it has bound
        try:
            np_mod.run_client("127.0.0.1", port, [(500, 250), (1000, 500), (2000, 1000)], 0.001, 3, 5, "tcp")
            break
        except ConnectionRefusedError:
            threading.Event().wait(0.05)
    server.join(5)
    points = [json.loads(line) for line in capsys.readouterr().out.splitlines() if line.startswith("{")]
    assert [p["bytes"] for p in points] == [500, 1000, 2000]
    assert points[0]["stolen"] == 0 and points[0]["clean"]
    assert points[1]["stolen"] == 9 and not points[1]["clean"]  # every trial stolen: the budget, 3 x 3 trials
    assert points[2]["stolen"] >= 1 and points[2]["clean"]
