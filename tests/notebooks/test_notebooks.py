"""Every notebook in notebooks/ runs top to bottom in a real kernel (live mode needs root)."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from tests.conftest import needs_live
from tests.notebooks.expected import SMALL_COSTS, check_live_output

NOTEBOOKS = sorted((Path(__file__).parents[2] / "notebooks").rglob("*.ipynb"))  # assignments/ too


def test_notebooks_are_committed_without_outputs() -> None:
    import nbformat

    for path in NOTEBOOKS:
        nb = nbformat.read(path, as_version=4)
        dirty = [i for i, c in enumerate(nb.cells) if c.cell_type == "code" and (c.outputs or c.execution_count)]
        assert not dirty, f"{path.name}: clear the outputs of cells {dirty}"


def _run(path: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, mode: str) -> str:
    import nbformat
    from nbclient import NotebookClient

    monkeypatch.setenv("PKTLAB_NETPIPE_MAX", "65536")  # 04-netpipe-nat: the reduced run
    monkeypatch.setenv("PKTLAB_NETPIPE_QUICK", "1")  # with trials ten times shorter than NPtcp's
    monkeypatch.setenv("PKTLAB_CACHE_MAX", "4096")  # 06-packet-cache: files up to 4 KiB
    monkeypatch.setenv("PKTLAB_FILTER_COUNT", "10000")  # 07-filter-costs: datagrams per measurement
    monkeypatch.setenv("PKTLAB_FILTER_ROUNDS", "1")  # 07-filter-costs: one round of the alternating runs
    for var, value in SMALL_COSTS.items():  # 08-copy-costs: fewer and shorter runs
        monkeypatch.setenv(var, value)
    nb = nbformat.read(path, as_version=4)
    NotebookClient(nb, timeout=120, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}).execute()
    text = "\n".join(
        o.get("text", "") if o.get("output_type") == "stream" else str(o.get("data", {}).get("text/plain", ""))
        for c in nb.cells
        if c.cell_type == "code"
        for o in c.outputs
    )
    assert "Traceback" not in text
    assert f"mode: {mode}" in text
    nbformat.write(nb, tmp_path / path.name)  # the executed copy, for a person to look at
    return text


@needs_live
@pytest.mark.skipif(shutil.which("chromium") is not None,
                    reason="the browser walk runs every notebook live and checks the same outputs "
                    "(tests/browser/test_notebook_walk.py)")  # fmt: skip
@pytest.mark.parametrize("path", NOTEBOOKS, ids=[f"{p.parent.name}-{p.stem}" for p in NOTEBOOKS])
def test_notebook_runs_top_to_bottom_live(path: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("PKTLAB_REPLAY", raising=False)
    check_live_output(path.stem, _run(path, tmp_path, monkeypatch, "live"))


@pytest.mark.skipif(os.geteuid() == 0,
                    reason="as root, test_binder.py runs these very tests as the unprivileged user nobody, "
                    "where the notebooks find replay mode by themselves (no PKTLAB_REPLAY)")  # fmt: skip
@pytest.mark.parametrize("path", NOTEBOOKS, ids=[f"{p.parent.name}-{p.stem}" for p in NOTEBOOKS])
def test_notebook_runs_top_to_bottom_in_replay_mode(
    path: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    text = _run(path, tmp_path, monkeypatch, "replay")
    if path.stem == "01-quickstart":
        assert "replayed 40, accepted 40" in text
        assert "600-byte datagrams passed: 0; 100-byte datagrams passed: 20" in text
        assert "trimmed by pktlab" in text and "replayed 40; 2 errors kept" in text  # big ones: trimmed first
    if path.stem == "02-protocol-views":
        assert "received 5 of 5; UDP checksums right: 5" in text and "PKTLAB" in text
    if path.stem == "04-netpipe-nat":
        import pktlab

        n = pktlab.datasets.load("lab-tcp").packets_expected  # every packet of the capture goes to the server
        assert "live mode only" in text and f"packets rewritten: {n} | same bytes out of both: True" in text
        assert "the same packets rewritten the same way as the views NAT: True" in text  # the compiled one, in Python
    if path.stem == "10-dpi":
        assert "live mode only" in text
        assert "flows per name and verdict: {('www.lab.example', 'accept'): 1, ('blocked.lab.example', 'drop'): 1}" \
            in text  # fmt: skip
    if path.stem == "06-packet-cache":
        assert "second request answered by the cache: 3 blocks, 1300 bytes, same as the server's: True" in text
        assert "download times: live mode only" in text
    if path.stem == "08-copy-costs":
        assert "measured in live mode only" in text and "ns to read the last byte" in text
    if path.stem == "09-slow-web-page":  # the committed capture: its figures are fixed
        assert "replayed 184 packets" in text and "SYN to SYN-ACK 41 ms" in text
        assert "packets sent again: 8; duplicate ACKs: 26; out of order: 6" in text and "the page itself: True" in text
        assert "link conditions, drops and traces: live mode only" in text
        if "tshark's" in text:
            assert "tshark's retransmissions: 8; pktlab's: 8; the same frames: True" in text
    if path.stem == "07-filter-costs":
        assert "the kernel side: live mode only" in text and "snap length: live mode only" in text
        assert "64 instructions:" in text and "µs per packet in user space" in text
    if path.stem == "05-kernel-view":
        assert "lab-udp-sizes: 40 packets, 40 matched the filter" in text
        assert "lab-tftp: 7 packets, 0 matched the filter" in text
        assert "live mode only" in text
        # the recorded traces: the same timeline and drops as live
        assert "echo-request" in text and "pktlab queue 2" in text and "received by eth0" in text
        assert "NO_SOCKET" in text and "NETFILTER_DROP by ip filter FORWARD" in text and "handler no_9302" in text
