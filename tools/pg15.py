"""The second server of the version matrix: Debian's PostgreSQL 15, run by the kit's own server code.

    .venv/bin/python tools/pg15.py start   # install it if missing (root + apt), start, print its URL
    .venv/bin/python tools/pg15.py url     # the DATABASE_URL that points the kit at it
    .venv/bin/python tools/pg15.py stop

`make test-pg15` runs the whole suite against it with DATABASE_URL set, exactly as a learner
with a server of their own would (`make test-matrix` runs both versions). The server is the
same initdb + pg_ctl code as the embedded PostgreSQL 18 (zdlab/server.py), pointed at Debian's
binaries with ZDLAB_PG_BIN and kept in its own folder (.zdlab/pg15) on its own port
(ZDLAB_PG15_PORT, default 54315), so both versions can run side by side.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
VERSION = "15"
BIN = Path(f"/usr/lib/postgresql/{VERSION}/bin")
DEFAULT_PORT = "54315"


def environment() -> dict[str, str]:
    """The variables that make `zdlab db ...` drive the PostgreSQL 15 server instead of 18."""
    return {**os.environ, "ZDLAB_PG_BIN": str(BIN), "ZDLAB_STATE_DIR": str(REPO / ".zdlab" / f"pg{VERSION}"),
            "ZDLAB_PORT": os.environ.get("ZDLAB_PG15_PORT", DEFAULT_PORT)}


def install() -> None:
    """Debian's postgresql-15 package, when its binaries are missing (needs root and apt)."""
    if (BIN / "initdb").exists():
        return
    if os.geteuid() != 0 or not shutil.which("apt-get"):
        sys.exit(f"PostgreSQL {VERSION} is not installed ({BIN} has no initdb), and only root on a "
                 f"Debian or Ubuntu machine can install it here. Install it yourself "
                 f"(`sudo apt-get install postgresql-{VERSION}`), then run `make test-pg15` again.")
    print(f"installing Debian's postgresql-{VERSION} ...", flush=True)
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    for cmd in (["apt-get", "update", "-qq"], ["apt-get", "install", "-y", "-qq", f"postgresql-{VERSION}"]):
        done = subprocess.run(cmd, env=env, capture_output=True, text=True)
        if done.returncode != 0:
            tail = "\n".join(done.stderr.strip().splitlines()[-5:])
            sys.exit(f"`{' '.join(cmd)}` failed, so PostgreSQL {VERSION} could not be installed:\n{tail}\n"
                     f"Check the machine reaches Debian's package mirrors, then run `make test-pg15` again.")


def zdlab(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "zdlab", *args], env=environment(),
                          capture_output=True, text=True)


def main(argv: list[str]) -> int:
    action = argv[0] if argv else ""
    if action not in ("start", "stop", "url"):
        print(__doc__, file=sys.stderr)
        return 2
    if action == "start":
        install()
        done = zdlab("db", "start")
        print(done.stdout.strip() or done.stderr.strip(), file=sys.stderr)
        if done.returncode != 0:
            return done.returncode
        action = "url"
    done = zdlab("db", action, *(["--show-password"] if action == "url" else []))
    if done.returncode != 0:
        print(done.stderr.strip(), file=sys.stderr)
    elif action == "url":
        print(done.stdout.strip().splitlines()[-1])
    else:
        print(done.stdout.strip(), file=sys.stderr)
    return done.returncode


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
