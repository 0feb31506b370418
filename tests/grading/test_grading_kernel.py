"""nbgrader's grading kernel, contained, over Unix sockets: two start at once, both answer, nothing is left."""

from __future__ import annotations

import asyncio
import json
import os
from pathlib import Path

from pktlab.grading.kernel import COURSE_ROOT, SandboxedKernelManager
from tests.conftest import needs_live

PROBE = (
    "import json, os, socket\n"
    "open('written-by-kernel', 'w').write('x')\n"
    "print(json.dumps({'cwd': os.getcwd(), 'tmp': sorted(os.listdir('/tmp'))}))\n"
)


async def _run_one(work: Path) -> tuple[dict, dict, str]:
    km = SandboxedKernelManager(kernel_name="python3")
    await km.start_kernel(cwd=str(work))
    sockets = km.sockets
    kc = km.client()
    kc.start_channels()
    try:
        await kc.wait_for_ready(timeout=60)
        out: list[str] = []
        reply = await kc.execute_interactive(
            PROBE, timeout=60, output_hook=lambda m: out.append(m["content"].get("text", ""))
        )
        assert reply["content"]["status"] == "ok", reply["content"]
        info = dict(km.get_connection_info())
    finally:
        kc.stop_channels()
        await km.shutdown_kernel(now=True)
    assert sockets is not None
    return json.loads("".join(out)), info, sockets


@needs_live
def test_two_grading_kernels_start_at_once_over_unix_sockets_and_leave_nothing(tmp_path: Path, monkeypatch) -> None:
    course = tmp_path / "course"
    works = [course / "autograded" / s / "firewall" for s in ("ann", "bob")]
    for w in works:
        w.mkdir(parents=True)
    monkeypatch.setenv(COURSE_ROOT, str(course))

    async def both() -> list[tuple[dict, dict, str]]:
        return await asyncio.gather(*(_run_one(w) for w in works))

    ran = asyncio.run(both())
    for (w, (seen, info, sockets)), (_, _, other) in zip(zip(works, ran, strict=True), ran[::-1], strict=True):
        # no TCP port to be handed twice: the kernel listens on Unix sockets in a folder of its own
        assert info["transport"] == "ipc" and info["ip"].startswith(sockets + os.sep), info
        assert seen["cwd"] == str(w.resolve()), seen  # it ran in the submission's folder, writable there
        assert (w / "written-by-kernel").read_text() == "x"
        # its /tmp is private: its own sockets' folder is bound in, the other kernel's is not there
        assert Path(sockets).name in seen["tmp"] and Path(other).name not in seen["tmp"], (seen, other)
        assert not Path(sockets).exists(), f"{sockets} left after the kernel ended"
