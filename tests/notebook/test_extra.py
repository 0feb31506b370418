"""The core installs without Jupyter: a notebook feature asked for without pktlab[notebook] says so in one sentence."""

from __future__ import annotations

import importlib.util

import pytest

import pktlab


def test_dashboard_and_controls_name_the_extra_they_need(monkeypatch: pytest.MonkeyPatch) -> None:
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "ipywidgets" else real(name, *a))
    s = pktlab.replay("lab-udp")
    for open_it, what in ((s.dashboard, "s.dashboard()"), (s.controls, "s.controls()")):
        with pytest.raises(pktlab.MissingToolError) as err:
            open_it()
        assert str(err.value) == (f"{what} needs pktlab's notebook extra (ipywidgets is not installed); "
                                  "install it with pip install 'pktlab[notebook]'")  # fmt: skip
