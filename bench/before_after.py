"""Configurations of a benchmark measured with two checkouts of pktlab, alternated in one run.

Each measurement runs ``SCRIPT --one CONFIG`` (the scripts' own way of measuring one configuration in a fresh
process with its own lab) with ``PYTHONPATH`` set to a checkout (built in place: ``python setup.py build_ext
--inplace``); who goes first alternates from round to round.  Prints every run and, per configuration, the median
of each checkout and their ratio.  A result that is a dict is reported by its first number, or by the field
``BENCH_FIELD`` names (e.g. ``BENCH_FIELD=cpu_us`` for bench_queue's reader CPU per packet, steadier than its rate).

Run: `.venv/bin/python bench/before_after.py BEFORE_DIR SCRIPT ROUNDS CONFIG...` (as root), e.g.
`bench/before_after.py /tmp/before bench_queue.py 3 "(a) bare NetfilterQueue accept" "(b) pktlab, no handler"`.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent


def measure(tree: Path, script: str, config: str) -> Any:
    env = dict(os.environ, PYTHONPATH=str(tree))
    out = subprocess.run([sys.executable, str(HERE / script), "--one", config], capture_output=True, text=True,
                         env=env, cwd=HERE, check=False, timeout=900)  # fmt: skip
    if out.returncode:
        raise SystemExit(f"{script} --one {config!r} with {tree} failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def number(v: Any) -> float:
    field = os.environ.get("BENCH_FIELD")
    if isinstance(v, dict):
        return float(v[field]) if field else float(next(iter(v.values())))
    if isinstance(v, list):
        return float(v[0])
    return float(v)


def main(argv: list[str]) -> int:
    if len(argv) < 4:
        print(__doc__)
        return 2
    before, script, rounds, configs = Path(argv[0]).resolve(), argv[1], int(argv[2]), argv[3:]
    trees = {"before": before, "after": HERE.parent}
    runs: dict[tuple[str, str], list[float]] = {(t, c): [] for c in configs for t in trees}
    for r in range(rounds):
        for c in configs:
            for t in sorted(trees, reverse=r % 2 == 1):
                v = number(measure(trees[t], script, c))
                runs[(t, c)].append(v)
                print(f"round {r + 1} {t:6} {c}: {v:,.3f}", flush=True)
    what = f", {os.environ['BENCH_FIELD']}" if os.environ.get("BENCH_FIELD") else ""
    print(f"\n{script}{what}, medians of {rounds} alternated rounds (before: {before})\n")
    print("| configuration | before | after | after / before |\n|---|---|---|---|")
    for c in configs:
        b, a = statistics.median(runs[("before", c)]), statistics.median(runs[("after", c)])
        print(f"| {c} | {b:,.3f} | {a:,.3f} | {a / b:.2f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
