#!/usr/bin/env bash
# `make lab`: JupyterLab on the notebooks, as an ordinary user (live through user namespaces).
# Run by root, it serves as the user the set-up made (pktlab-student), from a copy of the notebooks in that
# user's home (the user must be able to save them); run by anyone else, as that user, on notebooks/.
set -euo pipefail
cd "$(dirname "$0")/.."
port=${LAB_PORT:-8888}
args=(--no-browser --ip=127.0.0.1 "--port=$port")
if [ "$(id -u)" != 0 ]; then
    exec .venv/bin/jupyter lab "${args[@]}" --ServerApp.root_dir=notebooks
fi
user=${LAB_USER:-pktlab-student}
home=$(getent passwd "$user" | cut -d: -f6) || { echo "lab: no user $user; run \`make setup\` as root" >&2; exit 2; }
if ! runuser -u "$user" -- "$PWD/.venv/bin/python" -c "import pktlab" 2>/dev/null; then
    echo "lab: $user cannot read $PWD (a folder on the way is closed to other users); clone pktlab where" \
         "every user can read it (e.g. /opt or /srv), or run make lab as an ordinary user" >&2
    exit 2
fi
mkdir -p "$home/notebooks"
cp -rn notebooks/. "$home/notebooks/"  # the user's copies are theirs: never overwritten
chown -R "$user:" "$home/notebooks"
echo "lab: JupyterLab as $user (an ordinary user: live labs through user namespaces) on $home/notebooks"
exec runuser -u "$user" -- env -i HOME="$home" PATH="$PWD/.venv/bin:/usr/bin:/bin:/usr/sbin:/sbin" LANG=C.UTF-8 \
    "$PWD/.venv/bin/jupyter" lab "${args[@]}" "--ServerApp.root_dir=$home/notebooks"
