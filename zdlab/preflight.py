"""`zdlab preflight` (`make preflight`): the evening before a workshop, is this laptop ready?

It checks what the day needs, in order: Python, free disk, the kit's database port and
JupyterLab's port, the server starting, a seed of the demo size (1,000,000 users and orders, as
notebooks 02 and 03 use) finishing in time, and notebook 00 running top to bottom. Each check
prints a line as it goes; the last line is the one to paste into the workshop chat:

    zdlab preflight: OK (python 3.11.7, disk 80 GB free, port 54320 ok, lab port 8888 ok, server up
    (PostgreSQL 18.1), seed 1M rows in 2.1 s, 00_setup ran in 5 s)       <- one line, wrapped here
    zdlab preflight: FAIL: port 54320 taken by postgres (pid 812) (python 3.11.7, disk 80 GB free, ...)

A check that cannot run because an earlier one failed (no server: no seed) says "skipped".
Exit status 0 when every check passed, 1 otherwise.
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from . import config, server
from .errors import ZdlabError

MIN_PYTHON = (3, 11)
MIN_FREE_GB = 2.0  # the venv is installed already; the demo data, WAL and a restore drill need this
DEMO_ROWS = 1_000_000
SEED_LIMIT_S = 60.0  # ~2 s on a quiet 2-core machine: 30 times that makes every demo cell a wait
NOTEBOOK = "00_setup"
NOTEBOOK_CELL_TIMEOUT_S = 300


@dataclass
class Check:
    ok: bool | None  # None: skipped
    short: str  # the phrase for the one line
    detail: str = ""  # what to do, printed on the check's own line


def _python() -> Check:
    version = sys.version.split()[0]
    if sys.version_info >= MIN_PYTHON:  # a variable: the kit may run, then say why, under an older one
        return Check(True, f"python {version}")
    return Check(False, f"python {version} is too old (3.11+ needed)",
                 "install Python 3.11 or newer, then `make PYTHON=python3.11 lab`")


def _disk(where: Path, min_free_gb: float) -> Check:
    try:
        free = shutil.disk_usage(where).free / 1e9
    except OSError as exc:
        return Check(False, f"disk at {where} unreadable ({exc.strerror})")
    shown = f"{free:.0f} GB" if free >= 10 else f"{free:.1f} GB" if free >= 0.1 else f"{free * 1000:.1f} MB"
    if free >= min_free_gb:
        return Check(True, f"disk {shown} free")
    return Check(False, f"disk {shown} free at {where} (needs {min_free_gb:g} GB)",
                 "free some space (the embedded server's data and the demos' WAL live in the kit's .zdlab/)")


def port_holder(port: int) -> str:
    """Who listens on 127.0.0.1/any ``port``: 'postgres (pid 812)', or a hint when the OS will not say."""
    try:
        import psutil

        for conn in psutil.net_connections(kind="tcp"):
            if conn.status == psutil.CONN_LISTEN and conn.laddr and conn.laddr.port == port and conn.pid:
                try:
                    return f"{psutil.Process(conn.pid).name()} (pid {conn.pid})"
                except psutil.Error:
                    return f"pid {conn.pid}"
    except Exception:  # psutil missing, or the OS refuses (macOS without root): say how to look
        pass
    return f"another program (`lsof -iTCP:{port} -sTCP:LISTEN` shows which)"


def _db_port() -> Check:
    if config.external_url():
        return Check(True, f"DATABASE_URL {config.redact(config.external_url())}")
    port = config.port()
    current = server.status()
    if current.running and current.port == port:
        return Check(True, f"port {port} ok (the kit's server)")
    if server.port_in_use(port):
        return Check(False, f"port {port} taken by {port_holder(port)}",
                     f"stop that program, or use another port: `export ZDLAB_PORT={port + 10}` then `make lab`")
    return Check(True, f"port {port} ok")


def _lab_port() -> Check:
    port = config.lab_port()
    if not server.port_in_use(port):
        return Check(True, f"lab port {port} ok")
    holder = port_holder(port)
    if "jupyter" in holder.lower() or "python" in holder.lower():
        return Check(True, f"lab port {port} held by {holder}, your JupyterLab?",
                     f"if it is not yours, set ZDLAB_LAB_PORT={port + 2}")
    return Check(False, f"lab port {port} taken by {holder}",
                 f"stop that program, or `export ZDLAB_LAB_PORT={port + 2}` before `make lab`")


def _server() -> Check:
    from . import db

    try:
        if not config.external_url():
            server.start()
        with db.connect(application_name=f"{config.APP_PREFIX}/preflight") as conn:
            version = conn.execute("SHOW server_version").fetchone()[0].split()[0]
    except ZdlabError as exc:
        return Check(False, "server did not start" if not config.external_url() else "server unreachable",
                     exc.message)
    return Check(True, f"server up (PostgreSQL {version})")


def _rows(n: int) -> str:
    return f"{n / 1e6:g}M" if n >= 1_000_000 else f"{n / 1e3:g}k" if n >= 1000 else str(n)


def _seed(rows: int, limit_s: float) -> Check:
    from .sandbox import Sandbox
    from .seed import seed

    box = Sandbox(f"preflight_{os.getpid()}")
    try:
        box.reset()
        started = time.monotonic()
        seed(box, rows=rows, progress=False)
        took = time.monotonic() - started
    except ZdlabError as exc:
        return Check(False, f"seed of {_rows(rows)} rows failed", exc.message)
    finally:
        try:
            box.drop()
        except ZdlabError:
            pass
    if took > limit_s:
        return Check(False, f"seed {_rows(rows)} rows took {took:.0f} s (limit {limit_s:g} s)",
                     "the laptop is too slow or too busy for the demos: close other programs, plug it in, "
                     "or follow on the instructor's screen")
    return Check(True, f"seed {_rows(rows)} rows in {took:.1f} s")


def _notebook(name: str) -> Check:
    import nbformat
    from nbclient import NotebookClient
    from nbclient.exceptions import CellExecutionError

    source = config.home() / "notebooks" / f"{name}.ipynb"
    if not source.exists():
        return Check(False, f"{name} missing", f"{source} is not there: clone the kit again")
    nb = nbformat.read(source, as_version=4)
    started = time.monotonic()
    with tempfile.TemporaryDirectory() as tmp:  # run a copy: the learner's notebook stays as it is
        try:
            NotebookClient(nb, timeout=NOTEBOOK_CELL_TIMEOUT_S, kernel_name="python3",
                           resources={"metadata": {"path": tmp}}).execute()
        except CellExecutionError as exc:
            last = (str(exc).strip().splitlines() or ["?"])[-1]
            return Check(False, f"{name} failed", f"a cell raised: {last[:300]}. Run `make doctor`")
        except Exception as exc:  # no kernel, a timeout: the notebook did not run
            return Check(False, f"{name} did not run", f"{type(exc).__name__}: {str(exc)[:300]}")
    return Check(True, f"{name} ran in {time.monotonic() - started:.0f} s")


def run(*, rows: int = DEMO_ROWS, min_free_gb: float = MIN_FREE_GB, disk_path: str | None = None,
        seed_limit_s: float = SEED_LIMIT_S, notebook: bool = True, out: Callable[[str], None] = print) -> int:
    results: list[Check] = []

    def step(check: Callable[[], Check], needs_ok: list[Check] | None = None, label: str = "") -> Check:
        if needs_ok and not all(c.ok for c in needs_ok):
            result = Check(None, f"{label} skipped")
        else:
            result = check()
        mark = {True: "ok  ", False: "FAIL", None: "skip"}[result.ok]
        out(f"  {mark}  {result.short}" + (f": {result.detail}" if result.detail and not result.ok else ""))
        results.append(result)
        return result

    out("zdlab preflight: checking this machine for the workshop ...")
    step(_python)
    step(lambda: _disk(Path(disk_path) if disk_path else config.home(), min_free_gb))
    port = step(_db_port)
    step(_lab_port)
    up = step(_server, [port], "server start")
    seeded = step(lambda: _seed(rows, seed_limit_s), [up], "seed")
    if notebook:
        step(lambda: _notebook(NOTEBOOK), [up, seeded], NOTEBOOK)
    failed = [r for r in results if r.ok is False]
    summary = ", ".join(r.short for r in results if r.ok is not False)
    if failed:
        out(f"zdlab preflight: FAIL: {'; '.join(r.short for r in failed)} ({summary})")
        return 1
    out(f"zdlab preflight: OK ({summary})")
    return 0
