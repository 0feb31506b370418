"""The README's main job, ``make demo`` (``python -m pktlab demo``), run as it is: its figures and its teardown."""

from __future__ import annotations

import re
import subprocess
import sys

from tests.conftest import needs_live

pytestmark = needs_live


def test_the_demo_shows_each_step_working_and_leaves_nothing() -> None:
    proc = subprocess.run([sys.executable, "-m", "pktlab", "demo"], capture_output=True, text=True, timeout=120,
                          check=False)  # fmt: skip
    out = proc.stdout
    assert proc.returncode == 0, out + proc.stderr
    assert "1. no handler:           sent 2000, received 2000 (missing 0)" in out, out
    assert "2. filter = drop_odd:    sent 2000, received 1000 (expected 1000)" in out, out
    assert "3. filter = stamp:       received 5, payload b'pktlab was here'" in out, out
    assert re.search(r"4\. filter = flaky:       received 2000 of 2000; 200 errors kept", out), out
    assert re.search(r"\(default verdict\)\s+accept\s+4800", out), out
    assert "detached: 0 pktlab rules left" in out and "lab down: 0 namespaces left" in out, out
