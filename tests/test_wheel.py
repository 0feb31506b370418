"""`pip install` from pktlab's wheels works where no C library or header of pktlab's is installed.

`make wheel` (scripts/wheel.sh) builds manylinux wheels of pktlab and NetfilterQueue with the standard tools; this
test installs them into a fresh virtualenv and runs pktlab inside a mount namespace where the system's
libnetfilter_queue, libnfnetlink and libpcap and their development headers are hidden (empty files and folders
bind-mounted over them): as an ordinary user `pktlab doctor` and a replay of a bundled dataset, as root a live lab
with a queue and a handler. The source distribution, built and installed in the same namespace, stops with one
sentence naming the packages. Root only (it mounts, and it switches users); it needs the package registry for the
build tools and the dependencies.
"""

from __future__ import annotations

import glob
import json
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

import pytest

from pktlab.version import VERSION

ROOT = Path(__file__).resolve().parents[1]
USER = "pktlab-student"
pytestmark = pytest.mark.skipif(os.geteuid() != 0 or shutil.which("setpriv") is None or shutil.which("unshare") is None,
                                reason="builds and mounts as root, then switches to an ordinary user")  # fmt: skip
LIBS = ("libnetfilter_queue", "libnfnetlink", "libpcap")  # iptables and ip need libmnl: the wheel carries its own
HEADERS = ("libnetfilter_queue", "libnfnetlink", "pcap", "pcap.h", "pcap-bpf.h", "pcap-namedb.h")

LIVE = """
import json, pktlab
with pktlab.Lab() as lab:
    s = pktlab.attach(7, rule="-p udp", netns=lab.server)
    s.add_handler(lambda pkt: pkt.drop() if pkt.udp.dport == 9001 else None, "no_9001")
    passed, dropped = lab.udp(10).unique, lab.udp(10, port=9001, idle=0.3).unique
    s.detach()
maps = open("/proc/self/maps").read()
print(json.dumps({"passed": passed, "dropped": dropped, "seen": s.record.n,
                  "libs": sorted({line.split()[-1] for line in maps.splitlines() if "netfilter_queue" in line})}))
"""
REPLAY = """
import json, pktlab
r = pktlab.replay("lab-udp")
r.add_handler(lambda pkt: pkt.drop() if int.from_bytes(pkt.udp.payload[:4], "big") % 2 else None, "odd")
st = r.run()
print(json.dumps({"version": pktlab.__version__, "packets": st.packets, "drop": st.counters["drop"]}))
"""


def _hidden(script: str) -> str:
    """A shell script run in a new mount namespace where pktlab's C libraries and headers are hidden."""
    hide = []
    for lib in LIBS:
        hide += [p for p in glob.glob(f"/usr/lib/*/{lib}.*") + glob.glob(f"/usr/lib/{lib}.*") if not os.path.islink(p)]
    files = [p for p in hide + [f"/usr/include/{h}" for h in HEADERS] if os.path.isfile(p)]
    folders = [f"/usr/include/{h}" for h in HEADERS if os.path.isdir(f"/usr/include/{h}")]
    mounts = [f"mount --bind /dev/null {p}" for p in files] + [f"mount --bind $EMPTY {p}" for p in folders]
    check = ("for lib in libnetfilter_queue.so.1 libpcap.so.0.8; do /usr/bin/python3 -c \"import ctypes; "
             "ctypes.CDLL('$lib')\" 2>/dev/null && { echo \"$lib still loads\" >&2; exit 3; }; done\n"
             "[ ! -e /usr/include/pcap/pcap.h ] || { echo 'the headers are still there' >&2; exit 3; }\n")
    return "set -e\nEMPTY=$(mktemp -d)\ntrap 'rmdir $EMPTY' EXIT\n" + "\n".join(mounts) + "\n" + check + script


def _run(script: str, timeout: float = 600) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["unshare", "--mount", "--propagation", "private", "bash", "-c", _hidden(script)],
                          capture_output=True, text=True, timeout=timeout)  # fmt: skip


@pytest.fixture(scope="module")
def place():
    """A folder an ordinary user can read (the wheels, the venv), removed afterwards whatever happened."""
    where = Path(tempfile.mkdtemp(prefix="pktlab-wheel-", dir="/var/tmp"))
    where.chmod(0o755)
    try:
        yield where
    finally:
        shutil.rmtree(where, ignore_errors=True)


def test_the_wheels_install_and_run_where_no_c_library_or_header_is(place: Path) -> None:
    dist = place / "dist"
    subprocess.run(["bash", str(ROOT / "scripts" / "wheel.sh"), str(dist)], check=True, capture_output=True, text=True,
                   timeout=900)  # fmt: skip
    (wheel,) = dist.glob("pktlab-*-manylinux*.whl")
    shown = subprocess.run([str(ROOT / ".venv" / "bin" / "auditwheel"), "show", str(wheel)], capture_output=True,
                           text=True, check=True).stdout  # fmt: skip
    assert 'platform tag: "manylinux_2_' in shown.replace("\n", " "), shown
    grafted = [n for n in zipfile.ZipFile(wheel).namelist() if n.startswith("pktlab.libs/")]
    for lib in (*LIBS, "libmnl"):
        assert any(f"/{lib}-" in n for n in grafted), (lib, grafted)
    assert any(n.startswith("pktlab-") and n.endswith("/data/share/pktlab/datasets/lab-udp.pcap")
               for n in zipfile.ZipFile(wheel).namelist())  # the datasets come with it  # fmt: skip
    venv = place / "venv"
    subprocess.run(["/usr/bin/python3", "-m", "venv", str(venv)], check=True, timeout=120)
    subprocess.run([str(venv / "bin" / "pip"), "install", "-q", *map(str, dist.glob("*.whl"))], check=True,
                   capture_output=True, text=True, timeout=600)  # fmt: skip
    subprocess.run(["chmod", "-R", "a+rX", str(place)], check=True)
    as_user = f"setpriv --reuid={USER} --regid={USER} --init-groups env HOME=/var/tmp"
    out = _run(f"""
cd /
{as_user} {venv}/bin/pktlab doctor > {place}/doctor.txt 2>&1 || true
{as_user} {venv}/bin/python -c '{REPLAY}' > {place}/replay.json
{venv}/bin/python -c '{LIVE}' > {place}/live.json
""")
    assert out.returncode == 0, out.stderr[-2000:]
    doctor = (place / "doctor.txt").read_text()
    assert f"ok    python packages: pktlab {VERSION} with NetfilterQueue 1.1.0" in doctor, doctor
    assert "ok    replay:" in doctor and "=> live mode" in doctor, doctor
    replay = json.loads((place / "replay.json").read_text())
    assert replay == {"version": VERSION, "packets": 20, "drop": 10}
    live = json.loads((place / "live.json").read_text())
    assert (live["passed"], live["dropped"], live["seen"]) == (10, 0, 20), live
    assert live["libs"] and all(".libs/libnetfilter_queue-" in p for p in live["libs"]), live["libs"]


def test_the_source_build_says_what_to_install(place: Path) -> None:
    sdist = place / "sdist"
    subprocess.run([str(ROOT / ".venv" / "bin" / "python"), "-m", "build", "--sdist", "--outdir", str(sdist),
                    str(ROOT)], check=True, capture_output=True, text=True, timeout=600)  # fmt: skip
    (tarball,) = sdist.glob("pktlab-*.tar.gz")
    venv = place / "venv-src"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    out = _run(f"{venv}/bin/pip install --no-deps {tarball} 2>&1 || true")
    said = out.stdout
    why = ("pktlab cannot be compiled here: libnetfilter_queue/libnetfilter_queue.h, pcap/pcap.h not found; install "
           "libnetfilter-queue-dev libpcap-dev (Debian/Ubuntu: apt-get install) or libnetfilter_queue-devel "
           "libpcap-devel (Fedora: dnf install), then run pip again")  # fmt: skip
    assert why in said, said[-3000:]
    assert "fatal error" not in said, said[-3000:]  # stopped before any compile
