#!/usr/bin/env bash
# A JupyterHub for a class on this machine (run as root): `make hub STUDENTS=20`, or scripts/hub.sh directly.
# Idempotent: it sets up what is missing (pktlab's environment, JupyterHub, configurable-http-proxy, the students'
# accounts), then runs the hub in the foreground until it is stopped (Ctrl-C, or SIGTERM to its PID): the hub
# stops every student's server, their kernels take their labs down, and nothing of theirs is left.
# Settings (environment): STUDENTS (how many accounts, default 3), PKTLAB_HUB_PREFIX (their names: PREFIX01 ...,
# default student), PKTLAB_HUB_GROUP (default pktlab-students), PKTLAB_HUB_IP / PKTLAB_HUB_PORT (default
# 127.0.0.1:8000; 0.0.0.0 for a class on the network: put TLS in front), PKTLAB_HUB_STATE (the hub's database,
# secrets and the students' first passwords; default /var/lib/pktlab-hub), PKTLAB_HUB_IDLE (seconds before an idle
# server is stopped, default 3600), PKTLAB_HUB_CPUS / PKTLAB_HUB_MEMORY_MB (each student's bound, default 1 / 2048),
# PKTLAB_HUB_TEACHER (the teacher's account, who grades in the hub; default teacher), PKTLAB_HUB_SHARED (nbgrader's
# exchange and each role's configuration, readable by all; default /srv/pktlab-hub).
set -euo pipefail
cd "$(dirname "$0")/.."
repo=$PWD
[ "$(id -u)" = 0 ] || { echo "hub: run as root: it makes the students' accounts and runs their servers as them" >&2; exit 2; }

bash scripts/setup.sh  # pktlab's environment, JupyterHub in it (the [hub] extra) and configurable-http-proxy
proxy=$repo/.venv/node/node_modules/.bin/configurable-http-proxy
[ -x "$proxy" ] || { echo "hub: configurable-http-proxy is missing (scripts/setup.sh installs it with npm)" >&2; exit 1; }

students=${STUDENTS:-3}
prefix=${PKTLAB_HUB_PREFIX:-student}
group=${PKTLAB_HUB_GROUP:-pktlab-students}
state=${PKTLAB_HUB_STATE:-/var/lib/pktlab-hub}
teacher=${PKTLAB_HUB_TEACHER:-teacher}
shared=${PKTLAB_HUB_SHARED:-/srv/pktlab-hub}
[[ "$students" =~ ^[0-9]+$ ]] && ((students >= 1 && students <= 999)) || { echo "hub: STUDENTS=$students: give 1 to 999" >&2; exit 2; }
[[ "$prefix" =~ ^[a-z][a-z0-9-]{0,20}$ ]] || { echo "hub: PKTLAB_HUB_PREFIX=$prefix: give lower-case letters, digits and - (a Unix user name)" >&2; exit 2; }
[[ "$teacher" =~ ^[a-z][a-z0-9-]{0,30}$ ]] || { echo "hub: PKTLAB_HUB_TEACHER=$teacher: give lower-case letters, digits and - (a Unix user name)" >&2; exit 2; }
install -d -m 700 "$state"
getent group "$group" >/dev/null || groupadd "$group"
account() {  # account USER [useradd options...]: made with a random first password, once
    local user=$1; shift
    id -u "$user" >/dev/null 2>&1 && return 1
    useradd --create-home --shell /bin/bash "$@" "$user"
    chmod 700 "$(getent passwd "$user" | cut -d: -f6)"
    local password
    password=$(.venv/bin/python -c "import secrets; print(secrets.token_urlsafe(9))")
    echo "$user:$password" | chpasswd
    echo "$user $password" >> "$state/passwords"
}
created=0
for n in $(seq 1 "$students"); do
    account "$(printf "%s%02d" "$prefix" "$n")" --gid "$group" && created=$((created + 1))
done
if id -nG "$teacher" 2>/dev/null | tr ' ' '\n' | grep -qx "$group"; then
    echo "hub: $teacher is in the students' group $group: the teacher must be an account of their own" >&2; exit 2
fi
account "$teacher" --user-group || true
chmod 600 "$state/passwords" 2>/dev/null || true
echo "hub: $students student account(s) (${prefix}01 ...; $created new) and the teacher $teacher;"
echo "hub: first passwords in $state/passwords (root only); change one with: echo USER:PASSWORD | chpasswd"
# the teacher's course and copy of the assignments, nbgrader's exchange (before the grading folders are hidden)
.venv/bin/python -m pktlab.hub.classroom "$shared" "$teacher" "$repo/notebooks/assignments"

# students must not read the assignments' held-back captures and reference solutions: the hub (and every server
# it starts) runs in a mount namespace of its own where those folders are empty; the teacher grades from a copy
# in their own home (pktlab.hub.classroom, above)
hidden=()
for d in notebooks/assignments/*/grading; do [ -d "$d" ] && hidden+=("$repo/$d"); done
export PATH="$repo/.venv/bin:$PATH" PKTLAB_HUB_STATE="$state" PKTLAB_HUB_PROXY="$proxy" PKTLAB_HUB_GROUP="$group"
export PKTLAB_HUB_NOTEBOOKS="$repo/notebooks" PKTLAB_HUB_TEACHER="$teacher" PKTLAB_HUB_SHARED="$shared"
echo "hub: http://${PKTLAB_HUB_IP:-127.0.0.1}:${PKTLAB_HUB_PORT:-8000}/ (Ctrl-C stops it)"
cd "$state"
exec unshare --mount --propagation private -- sh -c '
    for d in "$@"; do mount -t tmpfs -o ro,size=4k,mode=0755 pktlab-hidden "$d" || exit 97; done
    exec "'"$repo"'/.venv/bin/jupyterhub" -f "'"$repo"'/classroom/jupyterhub_config.py"' sh "${hidden[@]}"
