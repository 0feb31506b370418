"""Configurations measured in alternation, each run in a fresh process (with its own lab)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterable
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


def iperf_udp64(lab: pktlab.Lab, port: int, seconds: float) -> tuple[float, float]:
    """Received datagrams per second and loss fraction of one iperf3 run of 64-byte UDP datagrams at full speed.

    From the lab's client to an iperf3 server in its server, sender pinned to the first CPU, receiver to the last.
    """
    cpus = sorted(os.sched_getaffinity(0))
    server = lab.server.popen(["iperf3", "-s", "-1", "-p", str(port), "-A", str(cpus[-1])], stdout=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:  # until the server listens
            probe = lab.server.run(["ss", "-ltn", f"sport = :{port}"], check=False)
            if str(port) in probe.stdout:
                break
            time.sleep(0.05)
        out = lab.client.run(
            [
                "iperf3", "-c", lab.server.addr, "-p", str(port), "-A", str(cpus[0]),
                "-u", "-l", "64", "-b", "0", "-t", str(seconds), "-J",
            ],  # fmt: skip
            timeout=seconds + 30,
        ).stdout
    finally:
        try:
            server.wait(10)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()
    end = json.loads(out)["end"]["sum"]
    got = end["packets"] - end["lost_packets"]
    return got / end["seconds"], end["lost_packets"] / max(1, end["packets"])
