#!/usr/bin/env bash
# Idempotent set-up: Debian packages, then a virtualenv in .venv with pktlab and its test tools.
# Safe to run again; it only does what is missing.
set -euo pipefail
cd "$(dirname "$0")/.."

APT_PACKAGES=(python3-dev python3-venv iptables nftables libnetfilter-queue-dev libpcap-dev netpipe-tcp iperf3 iputils-ping tcpdump iproute2 procps coreutils util-linux build-essential chromium bpftrace tshark curl openssl)
missing=()
for p in "${APT_PACKAGES[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
    echo "setup: installing Debian packages: ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    # an earlier set-up stopped mid-install (Ctrl-C) leaves packages unpacked but not configured,
    # and apt-get then refuses everything until this is run
    if [ -n "$(dpkg --audit 2>/dev/null)" ]; then
        echo "setup: finishing an interrupted package installation (dpkg --configure -a)"
        dpkg --configure -a >/dev/null
    fi
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

# the NFQUEUE target and the queue itself (built in on some kernels, modules on others)
for m in nfnetlink_queue xt_NFQUEUE xt_comment xt_bpf xt_TRACE nft_compat; do modprobe -q "$m" 2>/dev/null || true; done
# the kernel's tracepoints, for pktlab.drops (bpftrace reads them there)
if [ ! -e /sys/kernel/tracing/events ]; then mount -t tracefs nodev /sys/kernel/tracing 2>/dev/null || true; fi

# Debian's Python: every user of the machine can run it (a Python under /root, pyenv's say, only root can),
# and pktlab's live mode runs notebooks as ordinary users and its lab helper in their user namespaces
PY=${PYTHON:-/usr/bin/python3}
if [ -f .venv/pyvenv.cfg ] && [ "$(sed -n 's/^home = //p' .venv/pyvenv.cfg)" != "$(dirname "$(readlink -f "$PY")")" ]; then
    echo "setup: .venv was made from another Python than $PY; making it again"
    rm -rf .venv
fi
if [ ! -x .venv/bin/python ]; then
    echo "setup: creating .venv"
    "$PY" -m venv .venv
fi
stamp=.venv/.pktlab-installed
want=$(find pyproject.toml setup.py pktlab -name '*.pyx' -o -name '*.pxd' -o -name pyproject.toml -o -name setup.py | sort | xargs cat | sha256sum | cut -d' ' -f1)
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
    echo "setup: installing pktlab and its dependencies into .venv"
    .venv/bin/pip install -q --upgrade pip
    # NetfilterQueue is built from source against Debian's libnetfilter-queue-dev; pktlab's
    # compiled parts (pktlab/**/*.pyx) are built against that same NetfilterQueue, so the
    # build tools go into the venv and pktlab is built without an isolated build environment.
    .venv/bin/pip install -q "setuptools>=77" "Cython>=3.0" wheel
    .venv/bin/pip install -q --no-binary netfilterqueue "NetfilterQueue==1.1.0"
    .venv/bin/pip install -q --no-build-isolation -e '.[dev]'
    echo "$want" > "$stamp"
fi
.venv/bin/python -c "import netfilterqueue, pyroute2, scapy, pktlab" || { echo "setup: import check failed" >&2; exit 1; }

# a class's hub (scripts/hub.sh, and its test): JupyterHub's proxy, configurable-http-proxy, from npm, beside the venv
if [ ! -x .venv/node/node_modules/.bin/configurable-http-proxy ]; then
    if ! command -v npm >/dev/null; then
        if [ "$(id -u)" = 0 ]; then
            echo "setup: installing Debian's nodejs and npm (for JupyterHub's proxy)"
            DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends nodejs npm >/dev/null
        else
            echo "setup: npm is not installed (apt-get install nodejs npm, as root); the hub will not start" >&2
        fi
    fi
    if command -v npm >/dev/null; then
        echo "setup: installing configurable-http-proxy from npm into .venv/node"
        npm install --silent --no-audit --no-fund --prefix .venv/node "configurable-http-proxy@5" >/dev/null
    fi
fi

# Two ordinary users for the tests of user-namespace mode (live labs without root): the suite runs again as
# the first; the second is the other student of the two-users test.  Root only; nothing to do for anyone else.
if [ "$(id -u)" = 0 ]; then
    for u in pktlab-student pktlab-student2; do
        id -u "$u" >/dev/null 2>&1 || useradd --system --create-home --home-dir "/var/lib/$u" --shell /bin/bash "$u"
    done
fi
