#!/usr/bin/env bash
# The Littlest JupyterHub (TLJH) on one VM for a workshop room: install the kit into the
# learners' environment and configure the hub. Run as root on the VM, from a clone of the
# repository, AFTER TLJH itself is installed (https://tljh.jupyter.org, "Installing on your
# own server"):
#
#   sudo deploy/tljh/install.sh                 # each learner gets an embedded PostgreSQL 18
#   sudo ZDLAB_ROOM=room.json deploy/tljh/install.sh
#       # one shared PostgreSQL: room.json made first by an admin with tools/provision_room.py
#       # (a role and a database per learner; each learner is handed only their own URL)
#
# What it does, and why (docs/jupyterhub.md has the long version):
# 1. the kit needs Python >= 3.11; TLJH's learner environment (/opt/tljh/user) may be older.
#    If so, a Python 3.11 environment is created beside it (/opt/zdlab) with TLJH's own
#    conda, and registered as the learners' `python3` kernel, so the notebooks' kernel is it;
# 2. pip-installs the pinned requirements.txt and the kit into that environment;
# 3. puts the learner copies of the notebooks in /etc/skel, so every learner TLJH creates
#    finds them in their home folder;
# 4. writes /opt/tljh/config/jupyterhub_config.d/zdlab.py (telemetry off; a learner name and
#    port per learner; DATABASE_URL when given) and reloads the hub.
#
# Validated, not run: tests/test_deploy.py checks this script's syntax and the hub snippet it
# writes (run against a fake spawner); no TLJH VM runs in CI.
set -euo pipefail

say() { printf 'zdlab-tljh: %s\n' "$*"; }
die() { printf 'zdlab-tljh: %s\n' "$*" >&2; exit 1; }

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
tljh="${TLJH_PREFIX:-/opt/tljh}"
user_env="$tljh/user"
config_d="$tljh/config/jupyterhub_config.d"
kit_env="${ZDLAB_ENV:-/opt/zdlab}"

[ "$(id -u)" -eq 0 ] || die "run me as root (sudo), on the TLJH VM."
[ -x "$user_env/bin/python" ] || die "no TLJH learner environment at $user_env: install TLJH first (https://tljh.jupyter.org)."
[ -f "$repo/requirements.txt" ] || die "run me from a clone of the kit's repository."

# 1. A Python the kit supports (requirements.txt needs >= 3.11.5).
if "$user_env/bin/python" -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11, 5) else 1)'; then
  py="$user_env/bin/python"
  say "the TLJH learner environment has Python $("$py" -c 'import platform; print(platform.python_version())'): installing the kit into it"
else
  conda="$user_env/bin/mamba"
  [ -x "$conda" ] || conda="$user_env/bin/conda"
  if [ ! -x "$kit_env/bin/python" ]; then
    say "the TLJH learner environment's Python is older than 3.11.5: creating $kit_env with Python 3.11"
    "$conda" create --yes --prefix "$kit_env" "python=3.11"
  fi
  py="$kit_env/bin/python"
fi

# 2. The pinned requirements and the kit itself (not editable: learners must not change it).
"$py" -m pip install --no-cache-dir -r "$repo/requirements.txt"
"$py" -m pip install --no-cache-dir --no-deps "$repo"
if [ "$py" != "$user_env/bin/python" ]; then
  # The notebooks ask for the kernel `python3`: make that the kit's Python for every learner.
  "$py" -m ipykernel install --prefix "$user_env" --name python3 --display-name "Python 3 (Zero-Downtime Lab)"
fi

# 3. The learner copies of the notebooks, for every account TLJH creates from now on.
tmp="$(mktemp -d)"
cp -r "$repo/solutions" "$tmp/solutions"
"$py" "$repo/tools/make_notebooks.py" --solutions "$tmp/solutions" --notebooks "$tmp/notebooks" >/dev/null
install -d /etc/skel/zdlab
cp "$tmp"/notebooks/*.ipynb /etc/skel/zdlab/
rm -rf "$tmp"
say "notebooks copied to /etc/skel/zdlab (accounts created before now: copy them into ~/zdlab yourself)"

# 4. The hub's configuration for the kit.
install -d -m 0700 "$config_d"
install -m 0644 "$repo/deploy/tljh/zdlab_config.py" "$config_d/zdlab.py"
if [ -n "${ZDLAB_ROOM:-}" ]; then
  # Only the hub reads this file (0600); each learner sees only their own URL, as DATABASE_URL.
  install -m 0600 "$ZDLAB_ROOM" "$tljh/config/zdlab-room.json"
  say "learners will share one server, each as a role of their own in a database of their own"
else
  rm -f "$tljh/config/zdlab-room.json"
  say "each learner gets an embedded PostgreSQL 18 of their own, on a port derived from their hub user id"
fi
tljh-config set services.cull.timeout 3600
tljh-config reload
say "done: log in, and open zdlab/00_setup.ipynb"
