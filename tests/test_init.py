"""The public front."""

from __future__ import annotations

import subprocess
import sys
import types

import pktlab


def test_all_is_exactly_the_public_api() -> None:
    # submodules show up as attributes once imported; everything else must be in __all__
    public = {
        n for n in dir(pktlab) if not n.startswith("_") and not isinstance(getattr(pktlab, n), types.ModuleType)
    } - {"annotations"}
    exported_modules = {n for n in pktlab.__all__ if isinstance(getattr(pktlab, n), types.ModuleType)}
    assert exported_modules == {"bpf", "datasets"}  # the two submodules that are part of the API by name
    assert set(pktlab.__all__) - {"__version__"} == public | exported_modules
    for name in pktlab.__all__:
        assert hasattr(pktlab, name)


def test_import_is_light() -> None:
    code = "import sys, pktlab; print(','.join(m for m in ('pandas','scapy','IPython','bokeh') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert out == ""


def test_python_dash_m_pktlab_runs_the_command_line() -> None:
    out = subprocess.run([sys.executable, "-m", "pktlab", "--help"], capture_output=True, text=True, check=True).stdout
    assert "usage: pktlab" in out and "doctor" in out and "demo" in out
