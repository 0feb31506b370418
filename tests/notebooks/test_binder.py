"""The Binder path: the pinned Python, binder/postBuild and every notebook in replay mode, as an unprivileged user."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

from tests.conftest import root_only

ROOT = Path(__file__).parents[2]


def test_runtime_pins_a_python_pyproject_accepts() -> None:
    import tomllib

    pin = (ROOT / "binder" / "runtime.txt").read_text().strip()
    m = re.fullmatch(r"python-3\.(\d+)", pin)
    req = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["requires-python"]
    need = re.fullmatch(r">=3\.(\d+)", req)
    assert m and need and int(m.group(1)) >= int(need.group(1)), f"binder/runtime.txt {pin!r} vs requires-python {req}"


@root_only("switches to the unprivileged user nobody; the notebooks then run without any privilege")
def test_postbuild_then_every_notebook_in_replay_mode_as_nobody() -> None:
    proc = subprocess.run(
        ["bash", str(ROOT / "scripts" / "binder_check.sh")], capture_output=True, text=True, timeout=1200, check=False
    )
    tail = (proc.stdout + proc.stderr)[-3000:]
    assert proc.returncode == 0, tail
    assert "pktlab.mode(): replay" in proc.stdout and "binder_check: passed" in proc.stdout, tail
