"""The tutorials of the docs: every notebook of notebooks/ run top to bottom in replay mode, outputs kept.

Usage: python scripts/docs_notebooks.py OUTDIR.  Replay mode (PKTLAB_REPLAY=1) makes the pages the same
on every machine, root or not; a notebook that fails stops the build with its error.
"""

from __future__ import annotations

import os
import sys
import tempfile
import time
from pathlib import Path

import nbformat
from nbclient import NotebookClient

ROOT = Path(__file__).resolve().parents[1]


def main(out: Path) -> int:
    os.environ["PKTLAB_REPLAY"] = "1"
    out.mkdir(parents=True, exist_ok=True)
    for path in sorted((ROOT / "notebooks").glob("*.ipynb")):
        t0 = time.monotonic()
        nb = nbformat.read(path, as_version=4)
        with tempfile.TemporaryDirectory(prefix="pktlab-docs-") as work:  # what a notebook writes stays out of docs/
            NotebookClient(nb, timeout=300, kernel_name="python3", resources={"metadata": {"path": work}}).execute()
        nbformat.write(nb, out / path.name)
        print(f"docs: {path.name} run in replay mode ({time.monotonic() - t0:.1f} s)", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(Path(sys.argv[1])))
