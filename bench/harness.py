"""Configurations measured in alternation, each run in a fresh process (with its own lab)."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable, Iterable
from typing import Any


def alternate(
    script: str, names: Iterable[str], repeats: int, show: Callable[[str, Any], str], timeout: float = 180
) -> dict[str, list[Any]]:
    """``repeats`` rounds of ``script --one NAME`` for every name; each prints its result as JSON on its last line.

    ``show(name, result)`` is the progress line written to stderr after each run.
    """
    names = list(names)
    runs: dict[str, list[Any]] = {k: [] for k in names}
    for _ in range(repeats):
        for name in names:
            out = subprocess.run(
                [sys.executable, script, "--one", name], capture_output=True, text=True, timeout=timeout, check=True
            ).stdout
            result = json.loads(out.strip().splitlines()[-1])
            runs[name].append(result)
            print(f"  {name}: {show(name, result)}", file=sys.stderr)
    return runs
