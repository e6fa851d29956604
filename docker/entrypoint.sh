#!/usr/bin/env bash
# Entrypoint of the compose `lab` service: wait for the database, make sure JupyterLab has a
# token, then hand over to `zdlab lab`. It also runs outside Docker (tests/test_docker_path.py
# runs it against Debian's PostgreSQL 15), so nothing here assumes the image's paths.
#
# Environment:
#   DATABASE_URL    server to use (compose: postgresql://postgres:workshop@db:5432/workshop).
#                   Unset: no wait; `zdlab lab` starts the kit's embedded PostgreSQL 18 inside
#                   this container instead (data in $ZDLAB_HOME/.zdlab, gone with the container).
#   ZDLAB_DB_WAIT   seconds to wait for DATABASE_URL to answer (default 60).
#   JUPYTER_TOKEN   token for JupyterLab; unset or empty: a random one is generated and printed.
#   JUPYTER_IP      interface JupyterLab binds (default 0.0.0.0: needed inside a container;
#                   compose publishes it on the host's 127.0.0.1 only).
#   JUPYTER_PORT    port JupyterLab listens on (default 8888).
#   ZDLAB_LAB_PORT  host port compose publishes it on, only for the URL printed (default JUPYTER_PORT).
#   ZDLAB_HOME      the kit's folder (default: the folder above this script).
#   ZDLAB_PYTHON    interpreter with the kit installed (default: $ZDLAB_HOME/.venv/bin/python
#                   if it exists, else python3).
set -euo pipefail

say() { printf 'zdlab-entrypoint: %s\n' "$*"; }
die() { printf 'zdlab-entrypoint: %s\n' "$*" >&2; exit 1; }

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
export ZDLAB_HOME="${ZDLAB_HOME:-$(dirname "$here")}"
# JupySQL (ploomber-core) sends telemetry unless told not to; never from this kit.
export PLOOMBER_STATS_ENABLED=false

if [ -n "${ZDLAB_PYTHON:-}" ]; then
  py="$ZDLAB_PYTHON"
elif [ -x "$ZDLAB_HOME/.venv/bin/python" ]; then
  py="$ZDLAB_HOME/.venv/bin/python"
else
  py="python3"
fi
command -v "$py" >/dev/null 2>&1 || die "no Python interpreter at '$py': set ZDLAB_PYTHON to the one with the kit installed."

wait_s="${ZDLAB_DB_WAIT:-60}"
[[ "$wait_s" =~ ^[0-9]+$ ]] || die "ZDLAB_DB_WAIT='$wait_s' is not a whole number of seconds (e.g. ZDLAB_DB_WAIT=60)."
port="${JUPYTER_PORT:-8888}"
[[ "$port" =~ ^[0-9]+$ ]] || die "JUPYTER_PORT='$port' is not a port number (e.g. JUPYTER_PORT=8888)."
ip="${JUPYTER_IP:-0.0.0.0}"

# A uid without a home of its own (compose `user:` set to the host's uid) cannot write Jupyter's
# runtime files; give it a private one rather than fail.
if [ -z "${HOME:-}" ] || [ ! -w "${HOME}" ]; then
  HOME="$(mktemp -d)"
  export HOME
  say "HOME is not writable for uid $(id -u); using $HOME for Jupyter's runtime files."
fi

if [ -n "${DATABASE_URL:-}" ]; then
  # The password never reaches the log: redact with the kit's own helper.
  shown="$("$py" -c 'import os; from zdlab.config import redact; print(redact(os.environ["DATABASE_URL"]))')" \
    || die "the kit is not importable with $py (set ZDLAB_PYTHON, or install it: pip install -r requirements.txt -e .)."
  say "waiting up to ${wait_s}s for PostgreSQL at $shown"
  deadline=$((SECONDS + wait_s))
  # `zdlab db status` connects when DATABASE_URL is set and explains any failure in one paragraph.
  until out="$("$py" -m zdlab db status 2>&1)"; do
    if (( SECONDS >= deadline )); then
      die "PostgreSQL at $shown did not answer within ${wait_s}s. Last attempt said:
$out
Inside compose the server is the \`db\` service (host db, port 5432): check \`docker compose ps\` and \`docker compose logs db\`. Outside Docker, use 127.0.0.1 and the server's port. Raise ZDLAB_DB_WAIT for a slow machine."
    fi
    sleep 1
  done
  say "$out"
else
  say "DATABASE_URL is not set: \`zdlab lab\` starts the kit's embedded PostgreSQL 18 in this container (data in $ZDLAB_HOME/.zdlab)."
fi

# Never token-less: a token from the environment, else a fresh random one.
if [ -z "${JUPYTER_TOKEN:-}" ]; then
  JUPYTER_TOKEN="$("$py" -c 'import secrets; print(secrets.token_hex(24))')"
  token_note="generated for this run: $JUPYTER_TOKEN"
  token_shown="$JUPYTER_TOKEN"
else
  token_note="taken from JUPYTER_TOKEN"
  token_shown="<your JUPYTER_TOKEN>"
fi
# jupyter_server reads the token from this variable (IdentityProvider.token's default); the
# environment also keeps it out of the process list, unlike a command-line option.
export JUPYTER_TOKEN

say "JupyterLab token $token_note"
say "open http://127.0.0.1:${ZDLAB_LAB_PORT:-$port}/lab?token=$token_shown"

exec "$py" -m zdlab lab --ip "$ip" --port "$port" "$@"
