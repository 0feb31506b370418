"""Regenerating the datasets from new lab traffic gives the same protocol content."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from tests.conftest import needs_live

pytestmark = needs_live
ROOT = Path(__file__).resolve().parents[2]


def test_regenerated_datasets_show_the_same_protocol_content(tmp_path: Path) -> None:
    env = {**os.environ, "PKTLAB_DATASETS_OUT": str(tmp_path)}
    subprocess.run([sys.executable, str(ROOT / "scripts" / "make_datasets.py")], env=env, check=True, timeout=300,
                   capture_output=True)  # fmt: skip
    sys.path.insert(0, str(ROOT / "scripts"))
    try:
        import make_datasets
    finally:
        sys.path.pop(0)
    committed = json.loads((ROOT / "datasets" / "MANIFEST.json").read_text())
    fresh = {e["name"]: e for e in json.loads((tmp_path / "MANIFEST.json").read_text())}
    assert set(fresh) == {e["name"] for e in committed}
    for e in committed:
        old, new = ROOT / "datasets" / e["file"], tmp_path / fresh[e["name"]]["file"]
        if e["name"] == "lab-malformed":
            assert [len(d) for _, d in make_datasets.read_raw(old)] == [len(d) for _, d in make_datasets.read_raw(new)]
            continue
        assert make_datasets.content(old) == make_datasets.content(new), e["name"]
