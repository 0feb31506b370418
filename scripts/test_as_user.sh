#!/usr/bin/env bash
# The live suite again as an ordinary user (user-namespace mode): run by `make test` as root.
# Usage: scripts/test_as_user.sh USER [pytest arguments...]
# The user must be able to read the checkout and run its venv; a checkout under a directory the user
# cannot enter (/root, say) is copied, venv included, to a fresh directory under /var/tmp first.
set -euo pipefail
cd "$(dirname "$0")/.."
user=$1; shift
[ "$(id -u)" = 0 ] || { echo "test_as_user: run as root (it switches to $user)" >&2; exit 2; }
as_user() { runuser -u "$user" -- env -i HOME="$(getent passwd "$user" | cut -d: -f6)" \
    PATH=/usr/bin:/bin:/usr/sbin:/sbin PYTHONDONTWRITEBYTECODE=1 LANG=C.UTF-8 \
    ${PKTLAB_SOAK_SECONDS:+PKTLAB_SOAK_SECONDS=$PKTLAB_SOAK_SECONDS} "$@"; }
where=$PWD
copy=""
if ! as_user "$where/.venv/bin/python" -c "import os, sys; sys.path.insert(0, '$where'); os.stat('$where/pyproject.toml'); import pktlab" 2>/dev/null; then
    copy=$(mktemp -d /var/tmp/pktlab-usertest.XXXXXX)
    trap 'rm -rf "$copy"' EXIT
    chmod 755 "$copy"
    echo "test_as_user: $user cannot read $where; running from a copy in $copy"
    cp -a . "$copy/repo"
    where=$copy/repo
fi
cd "$where"
echo "test_as_user: the live suite as $user ($(as_user .venv/bin/python -c 'import pktlab.kernel.privilege as p; print(p.current().reason)'))"
status=0
as_user .venv/bin/python -m pytest -q -p no:cacheprovider "$@" || status=$?
if [ -n "$copy" ]; then
    # what the root pass skipped because ordinary users could not read the checkout: two users at once, a killed
    # kernel, and JupyterLab run by an ordinary user; from the readable copy, as root
    echo "test_as_user: the tests that switch to ordinary users, from the copy"
    .venv/bin/python -m pytest -q -p no:cacheprovider tests/integration/test_userns.py tests/browser || status=$?
fi
exit $status
