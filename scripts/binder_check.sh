#!/usr/bin/env bash
# The Binder path, as far as a machine without Docker can prove it: as an unprivileged user, in a fresh
# virtualenv of the Python that binder/runtime.txt pins, run binder/postBuild's steps on a copy of the
# repository, then run every notebook in replay mode (pktlab.mode() must find "replay" by itself: no root).
# What it cannot check: repo2docker's image build itself (it needs a Docker engine).
# Usage (as root): scripts/binder_check.sh [WORKDIR]   (default: a new temporary folder, removed at the end)
set -euo pipefail
cd "$(dirname "$0")/.."
repo=$(pwd)

[ "$(id -u)" = 0 ] || { echo "binder_check: run as root (it switches to the unprivileged user nobody)" >&2; exit 2; }
pin=$(tr -d '[:space:]' < binder/runtime.txt)
[[ $pin =~ ^python-(3\.[0-9]+)$ ]] || { echo "binder_check: binder/runtime.txt says '$pin', not python-3.X" >&2; exit 2; }
version=${BASH_REMATCH[1]}
python=/usr/bin/python$version
if [ ! -x "$python" ] || ! "$python" -c "import ensurepip" 2>/dev/null; then
    echo "binder_check: installing Debian's python$version with venv"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "python$version" "python$version-venv" >/dev/null
fi
"$python" - "$repo/pyproject.toml" <<'PY'
import re, sys, tomllib
req = tomllib.load(open(sys.argv[1], "rb"))["project"]["requires-python"]
m = re.fullmatch(r">=\s*(\d+)\.(\d+)", req)
if not m or sys.version_info[:2] < (int(m[1]), int(m[2])):
    sys.exit(f"binder_check: binder/runtime.txt pins Python {sys.version.split()[0]}; pyproject.toml requires {req}")
PY

own_work=0
work=${1:-}
if [ -z "$work" ]; then
    work=$(mktemp -d /tmp/pktlab-binder.XXXXXX)
    own_work=1
fi
cleanup() { if [ "$own_work" = 1 ]; then rm -rf "$work"; fi; }
trap cleanup EXIT
mkdir -p "$work/home" "$work/repo"
# the repository as a clone would have it (tracked and new files, no build products, no .venv)
git ls-files -co --exclude-standard -z | tar -C "$repo" --null -T - -cf - | tar -C "$work/repo" -xf -
chown -R nobody:nogroup "$work"
chmod 755 "$work"

# Binder's pods allow no user namespaces (their seccomp profile refuses unshare(CLONE_NEWUSER)); this machine
# does, so PKTLAB_PRIVILEGE=root stands for that here: without root, no live mode, as on Binder
as_nobody() {
    runuser -u nobody -- env -i HOME="$work/home" PATH="$work/env/bin:/usr/bin:/bin:/usr/sbin:/sbin" \
        LANG=C.UTF-8 PIP_NO_INPUT=1 PKTLAB_PRIVILEGE=root "$@"
}
echo "binder_check: fresh venv of $("$python" --version) as nobody in $work"
as_nobody "$python" -m venv "$work/env"
echo "binder_check: binder/postBuild"
(cd "$work/repo" && as_nobody bash binder/postBuild)
echo "binder_check: the test runner and what repo2docker's image brings (ipykernel, nbclient), as nobody"
as_nobody pip install -q --no-cache-dir "pytest>=8" "pytest-timeout>=2.3" "nbclient>=0.10" "nbformat>=5.10" "ipykernel>=6.29"
echo "binder_check: every notebook in replay mode, as nobody"
cd "$work/repo"
as_nobody python -c "import pktlab; m = pktlab.mode(); print('pktlab.mode():', m); assert m == 'replay', m"
as_nobody python -m pytest -q -p no:cacheprovider tests/notebooks -k "replay or committed"
echo "binder_check: passed"
