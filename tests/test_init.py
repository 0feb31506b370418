"""The public front."""

from __future__ import annotations

import subprocess
import sys

import pktlab


def test_all_is_exactly_the_public_api() -> None:
    public = {n for n in dir(pktlab) if not n.startswith("_")} - {
        # submodules show up as attributes once imported
        "display",
        "doctor",
        "errors",
        "handlers",
        "kernel",
        "lab",
        "netns",
        "packet",
        "custom",
        "record",
        "rules",
        "session",
        "source",
        "verdicts",
        "views",
        "magic",
        "offload",
        "tracing",
        "chainowner",
        "grading",
        "replayer",
        "throughput",
        "holding",
        "livestats",
        "dashboard",
        "controls",
        "traffic",
        "cli",
        "annotations",
    }
    assert set(pktlab.__all__) - {"__version__"} == public
    for name in pktlab.__all__:
        assert hasattr(pktlab, name)


def test_import_is_light() -> None:
    code = "import sys, pktlab; print(','.join(m for m in ('pandas','scapy','IPython','bokeh') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert out == ""
