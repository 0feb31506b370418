"""Configurations measured in alternation, each run in a fresh process (with its own lab)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from typing import Any

import pktlab


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


def run_one_if_asked(configs: dict[str, Callable[[pktlab.Lab], Any]], topology: str = "pair") -> int | None:
    """As the child ``script --one NAME``: measure that configuration in a fresh lab, print its result as JSON.

    Returns the exit code then, None in the parent (no ``--one``).
    """
    if len(sys.argv) != 3 or sys.argv[1] != "--one":
        return None
    with pktlab.Lab(topology) as lab:
        print(json.dumps(configs[sys.argv[2]](lab)))
    return 0


@contextmanager
def iperf3_server(lab: pktlab.Lab, port: int, cpu: int | None = None) -> Iterator[None]:
    """A one-shot iperf3 server in the lab's server, listening when the block starts, reaped when it ends."""
    argv = ["iperf3", "-s", "-1", "-p", str(port), *(["-A", str(cpu)] if cpu is not None else [])]
    server = lab.server.popen(argv, stdout=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:  # until the server listens
            probe = lab.server.run(["ss", "-ltn", f"sport = :{port}"], check=False)
            if str(port) in probe.stdout:
                break
            time.sleep(0.05)
        yield
    finally:
        try:
            server.wait(10)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()


def iperf_udp64(lab: pktlab.Lab, port: int, seconds: float) -> tuple[float, float]:
    """Received datagrams per second and loss fraction of one iperf3 run of 64-byte UDP datagrams at full speed.

    From the lab's client to an iperf3 server in its server, sender pinned to the first CPU, receiver to the last.
    """
    cpus = sorted(os.sched_getaffinity(0))
    with iperf3_server(lab, port, cpus[-1]):
        out = lab.client.run(
            [
                "iperf3", "-c", lab.server.addr, "-p", str(port), "-A", str(cpus[0]),
                "-u", "-l", "64", "-b", "0", "-t", str(seconds), "-J",
            ],  # fmt: skip
            timeout=seconds + 30,
        ).stdout
    end = json.loads(out)["end"]["sum"]
    got = end["packets"] - end["lost_packets"]
    return got / end["seconds"], end["lost_packets"] / max(1, end["packets"])
