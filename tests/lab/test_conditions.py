"""Link conditions' parsing and description (the kernel side: tests/integration/test_link_conditions.py)."""

from __future__ import annotations

import pytest

from pktlab import LabError
from pktlab.lab.conditions import Conditions, parse_loss, parse_rate, parse_time


def test_times_rates_and_losses_are_read_as_people_write_them() -> None:
    assert parse_time("20ms", "delay") == pytest.approx(0.02)
    assert parse_time("500us", "delay") == pytest.approx(0.0005)
    assert parse_time("1.5s", "delay") == 1.5 and parse_time(0.01, "delay") == 0.01 and parse_time(0, "delay") == 0
    assert parse_rate("10mbit") == 10e6 and parse_rate("1Gbit") == 1e9 and parse_rate("2mbps") == 16e6
    assert parse_rate(0) == 0 and parse_rate(64000) == 64000
    assert parse_loss("1%") == pytest.approx(0.01) and parse_loss(0.25) == 0.25 and parse_loss(0) == 0


@pytest.mark.parametrize(
    ("fn", "value", "why"),
    [
        (lambda v: parse_time(v, "delay"), "20 parsecs", "not a time"),
        (lambda v: parse_time(v, "delay"), "11s", "out of range"),
        (lambda v: parse_time(v, "delay"), True, "not a time"),
        (parse_rate, "fast", "not a rate"),
        (parse_rate, "100bit", "out of range"),
        (parse_rate, "40gbit", "out of range"),
        (parse_loss, "lots", "not a share"),
        (parse_loss, 1.0, "out of range"),
        (parse_loss, "-5%", "out of range"),
    ],
)
def test_what_cannot_be_a_condition_says_why(fn, value, why) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(LabError, match=why):
        fn(value)


def test_conditions_describe_themselves() -> None:
    assert Conditions().describe() == "no conditions"
    c = Conditions(delay=0.02, jitter=0.005, loss=0.01, rate=10e6)
    assert c.describe() == "delay 20 ms ± 5 ms, loss 1 %, rate 10 Mbit/s"
