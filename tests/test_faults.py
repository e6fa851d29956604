"""Faults, and the way back from each: a test per fault, each ending with "nothing left behind".

a. A notebook kernel killed (SIGKILL) in the middle of a demo that holds a lock in an open
   transaction: its session outlives it (the backend is busy, so it does not notice its client
   is gone), `zdlab doctor` names it, and running the notebook again succeeds.
b. The embedded server killed (kill -9 of the postmaster) in the middle of a seed, while another
   backend runs a long statement: the long one outlives its postmaster and holds the old shared
   memory, so a plain `pg_ctl start` would fail; `zdlab doctor` says so and what to do,
   `zdlab db start` does it, the killed seed left no table that looks complete, and a new seed
   gives complete tables. On a server of its own (ZDLAB_STATE_DIR, a free port), deleted afterwards.
c. A CREATE INDEX CONCURRENTLY cancelled halfway: it leaves an INVALID index, `zdlab doctor`
   reports it with its DROP, and notebook 02 (whose sandbox it is in) runs again cleanly.

"Nothing left behind": no invalid index in the database, no zdlab session of the sandbox, the
demo tables complete (row counts, keys, foreign key), no half-seeded staging schema.
Every wait is on a condition PostgreSQL or the OS reports (pg_locks, pg_stat_activity,
pg_stat_progress_create_index, /proc), with a timeout and a message. About 55 s on 2 busy cores,
nearly half of it notebook 02.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import nbformat
import psutil
import psycopg
import pytest
from jupyter_client import KernelManager
from psycopg import sql
from test_foundation import assert_clear, free_port, run_zdlab

from zdlab import config, connection, db, doctor, server
from zdlab.sandbox import Sandbox
from zdlab.seed import seed, seeding_schema
from zdlab.traffic import wait_until

# tools/time_notebooks.py runs a notebook with nbclient as the suite does; reused, not copied.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tools"))
import time_notebooks  # noqa: E402

pytestmark = pytest.mark.slow  # notebook runs, as test_many_learners

REPO = Path(__file__).resolve().parent.parent
SOLUTIONS = REPO / "solutions"
WAIT_S = 60  # for a condition that normally holds within a second: a loaded machine is slow, not stuck



def until(what: str, probe: Callable[[], Any], timeout: float = WAIT_S) -> Any:
    """Poll ``probe`` until it returns something truthy, and return that; fail saying ``what``."""
    seen: list[Any] = [None]

    def check() -> bool:
        seen[0] = probe()
        return bool(seen[0])

    assert wait_until(check, timeout), f"waited {timeout} s for {what}; last seen: {seen[0]!r}"
    return seen[0]


@pytest.fixture
def learner(db_url: str, monkeypatch: pytest.MonkeyPatch) -> Callable[[str], str]:
    """Work (this process and the kernels it starts) in a learner database of its own on the
    shared server; dropped afterwards, with any session a failed test left in it."""
    used: list[str] = []

    def use(name: str) -> str:
        monkeypatch.setenv("ZDLAB_LEARNER", name)
        used.append(name)
        return db.database_url()  # created on first use

    yield use
    for name in used:
        db.drop_learner_database(name, db_url)  # WITH (FORCE): ends what a failed test left in it


def assert_nothing_left(conn: psycopg.Connection, schema: str, users: int | None, orders: int | None,
                        gone_pids: tuple[int, ...] = ()) -> None:
    """No invalid index in the database, no zdlab session of the sandbox, complete demo tables."""
    invalid = conn.execute("SELECT indexrelid::regclass::text FROM pg_index WHERE NOT indisvalid").fetchall()
    assert invalid == [], f"invalid indexes left: {invalid}"
    prefix = f"{config.APP_PREFIX}/{schema}/"
    # The notebook's kernel has just been shut down: its sessions end a moment later.
    until(f"the sessions of {schema} to end", lambda: conn.execute(
        "SELECT count(*) = 0 FROM pg_stat_activity WHERE datname = current_database() "
        "AND (starts_with(application_name, %s) OR pid = ANY(%s))", [prefix, list(gone_pids)]).fetchone()[0])
    staging = conn.execute("SELECT to_regnamespace(%s)", [seeding_schema(schema)]).fetchone()[0]
    assert staging is None, f"a half-seeded staging schema is left: {staging}"
    counts = conn.execute(sql.SQL("SELECT (SELECT count(*) FROM {}.users), (SELECT count(*) FROM {}.orders)").format(
        sql.Identifier(schema), sql.Identifier(schema))).fetchone()
    if users is not None:
        assert counts == (users, orders), f"{schema}: users, orders = {counts}, expected {(users, orders)}"
    keys = {r[0] for r in conn.execute(
        "SELECT conname FROM pg_constraint WHERE connamespace = to_regnamespace(%s) AND contype IN ('p', 'f')",
        [schema])}
    assert {"users_pkey", "orders_pkey", "orders_user_id_fkey"} <= keys, f"{schema}: keys {sorted(keys)}"
    assert conn.execute("SELECT to_regclass(%s) IS NOT NULL", [f"{schema}.orders_user_id_idx"]).fetchone()[0]
    lines = doctor.leftovers()
    assert lines and all(line.ok for line in lines), lines


# -- a. a kernel killed in the middle of a lock demo ----------------------------------------------

SETUP_NOTEBOOK = SOLUTIONS / "00_setup.ipynb"  # the cheapest notebook with such a demo (about 4 s)
DEMO_CELL = 'sb.connect("demo", autocommit=False)'  # leaves a transaction open, holding a lock on orders
# What a learner might run next in that session: a long report inside the open transaction
# (pg_sleep stands for it). While it runs, the backend does not notice that its client died.
LEARNER_CELL = 'other.execute("SELECT pg_sleep(600)")'
HELD_SQL = """
SELECT a.pid, a.client_port FROM pg_stat_activity a
JOIN pg_locks l ON l.pid = a.pid AND l.granted AND l.locktype = 'relation' AND l.relation = to_regclass(%s)
WHERE a.datname = current_database() AND a.application_name = %s AND a.wait_event = 'PgSleep'
"""


def test_kernel_killed_mid_lock_demo_then_notebook_runs_again(learner):
    learner("faults_kernel")
    cells = [c for c in nbformat.read(SETUP_NOTEBOOK, as_version=4).cells if c.cell_type == "code"]
    demo = next(i for i, c in enumerate(cells) if DEMO_CELL in c.source)
    box = Sandbox("00_setup")

    km = KernelManager(kernel_name="python3")
    km.start_kernel(cwd=str(SOLUTIONS), env={**os.environ, "PLOOMBER_STATS_ENABLED": "false"})
    kernel_pid = km.provisioner.process.pid
    kc = km.client()
    kc.start_channels()
    try:
        kc.wait_for_ready(timeout=WAIT_S)
        for cell in cells[:demo + 1]:
            outputs: list[dict] = []
            reply = kc.execute_interactive(cell.source, timeout=300, output_hook=outputs.append)
            assert reply["content"]["status"] == "ok", (cell.source, [o["content"] for o in outputs])
        kc.execute(LEARNER_CELL)  # never returns: the kernel dies in it
        with db.connect(application_name="zdlab-test/watch") as watch:
            pid, client_port = until("the demo session to hold its lock on orders inside the long query",
                                     lambda: watch.execute(HELD_SQL, [f"{box.schema}.orders", box.app_name("demo")]
                                                           ).fetchone())
            ports = {c.laddr.port for c in psutil.Process(kernel_pid).net_connections(kind="tcp")}
            assert client_port in ports, "the session holding the lock is not the kernel's"

            os.kill(kernel_pid, signal.SIGKILL)
            until("the kernel process to die", lambda: not km.is_alive())

            # The fault: the session outlives its kernel, lock and all, and the doctor names it.
            stray = until("the doctor to see the session whose client is gone",
                          lambda: [s for s in doctor.stray_sessions(watch) if s.pid == pid])
            assert "client is gone" in stray[0].why
            assert watch.execute(HELD_SQL, [f"{box.schema}.orders", box.app_name("demo")]).fetchone() == (
                pid, client_port), "the killed kernel's session should still hold its lock"
    finally:
        kc.stop_channels()
        km.shutdown_kernel(now=True)

    found = run_zdlab("doctor", timeout=120)
    assert found.returncode == 1, found.stdout + found.stderr
    assert f"[FAIL] 1 stray session(s) in zdlab_faults_kernel: pid {pid} {box.app_name('demo')}" in found.stdout
    assert "zdlab doctor --fix" in found.stdout and "Traceback" not in found.stdout + found.stderr

    # The way back: run the notebook again, top to bottom (its reset ends the session).
    result = time_notebooks.time_notebook(SETUP_NOTEBOOK)
    assert result.error is None, result.error
    with db.connect(application_name="zdlab-test/check") as conn:
        assert_nothing_left(conn, box.schema, 100_000, 100_000, gone_pids=(pid,))


# -- b. the server killed in the middle of a seed ---------------------------------------------------

SEED_ROWS = 400_000  # enough for the load to be caught running (about a second), no more
SEED_CODE = f"import zdlab\nzdlab.seed(zdlab.sandbox('faults_seed'), rows={SEED_ROWS}, progress=False)"
# Another learner's long statement: busy on the CPU, it does not notice that its postmaster died.
LONG_SQL = "SELECT count(*) FROM (SELECT generate_series(1, 10000000000)) AS s"


@pytest.fixture
def own_server(monkeypatch: pytest.MonkeyPatch) -> Path:
    """A second embedded server (data folder in a temporary directory, a free port), for this
    process and the commands it runs; stopped and deleted afterwards, whatever happened."""
    state = Path(tempfile.mkdtemp(prefix="zdlab-faults-"))
    state.chmod(0o755)  # as root the server runs as zdlab-pg, which must reach its data folder here
    for name, value in {"ZDLAB_STATE_DIR": str(state), "ZDLAB_PORT": str(free_port()),
                        "ZDLAB_LEARNER": "faults", "DATABASE_URL": ""}.items():
        monkeypatch.setenv(name, value)
    started = run_zdlab("db", "start")
    assert started.returncode == 0, started.stderr
    yield state
    assert server.pgdata() == state / "pgdata"  # never the shared server
    run_zdlab("db", "stop")
    for pid in server.leftover_processes():  # a test that failed halfway may leave orphans
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    shutil.rmtree(state, ignore_errors=True)


def _run_quietly(conn: psycopg.Connection, sql: str) -> None:
    with contextlib.suppress(psycopg.Error):  # ended by the server's recovery: expected
        conn.execute(sql)


def test_server_killed_mid_seed_then_doctor_start_and_seed_again(own_server):
    box = Sandbox("faults_seed")
    url = db.database_url()
    loader = subprocess.Popen([sys.executable, "-m", "IPython", "--no-banner", "--colors=nocolor", "-c", SEED_CODE],
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    long_conn = connection.connect_url(url, application_name="zdlab/zd_faults_report/app")
    long_pid = long_conn.info.backend_pid
    with contextlib.suppress(PermissionError):
        os.setpriority(os.PRIO_PROCESS, long_pid, 19)  # a spinning backend: leave the CPU to the rest
    long_thread = threading.Thread(target=_run_quietly, args=(long_conn, LONG_SQL), daemon=True)
    long_thread.start()
    try:
        with connection.connect_url(url, application_name="zdlab-test/watch") as watch:
            # Both loaders (users, orders) connected and inserting, and the long statement running.
            until("the seed's two INSERTs and the long statement to run", lambda: watch.execute(
                "SELECT count(*) FILTER (WHERE application_name = %s AND query ~ 'INSERT INTO (users|orders)') = 2 "
                "   AND count(*) FILTER (WHERE pid = %s) = 1 "
                "FROM pg_stat_activity WHERE state = 'active'", [box.app_name("seed"), long_pid]).fetchone()[0])
            postmaster = int((server.pgdata() / "postmaster.pid").read_text().split()[0])
            os.kill(postmaster, signal.SIGKILL)

        out, _ = loader.communicate(timeout=WAIT_S)
        assert f"The seed of {box.schema} stopped halfway" in out, out
        assert "Traceback" not in out, out
        until("the server to count as stopped", lambda: not server.status().running)
        # What a kill -9 leaves: the busy backend outlives its postmaster, holding the old shared memory.
        assert long_pid in server.leftover_processes(), "the long statement's backend should outlive the postmaster"

        found = run_zdlab("doctor", timeout=120)
        assert found.returncode == 1, found.stdout + found.stderr
        assert "[FAIL] embedded PostgreSQL is not running, but" in found.stdout, found.stdout
        assert str(long_pid) in found.stdout and "`zdlab db start` ends them" in found.stdout, found.stdout

        restarted = run_zdlab("db", "start")  # the doctor's advice
        assert restarted.returncode == 0, restarted.stderr
        assert "ended" in restarted.stdout and str(long_pid) in restarted.stdout, restarted.stdout
        long_thread.join(WAIT_S)
        assert not long_thread.is_alive()
    finally:
        long_conn.close()

    with connection.connect_url(url, application_name="zdlab-test/check") as conn:
        # The killed seed left no users/orders that look complete: only its staging schema...
        assert conn.execute("SELECT to_regclass(%s), to_regclass(%s)",
                            [f"{box.schema}.users", f"{box.schema}.orders"]).fetchone() == (None, None)
        assert conn.execute("SELECT to_regnamespace(%s) IS NOT NULL", [seeding_schema(box.schema)]).fetchone()[0]
    half = run_zdlab("doctor", timeout=120)  # ... which the doctor reports, with what to do
    assert half.returncode == 1, half.stdout + half.stderr
    assert f"[FAIL] half-seeded tables: the seed of {box.schema} stopped halfway" in half.stdout, half.stdout

    assert seed(box, rows=SEED_ROWS, progress=False) == {"users": SEED_ROWS, "orders": SEED_ROWS}
    with connection.connect_url(url, application_name="zdlab-test/check") as conn:
        assert_nothing_left(conn, box.schema, SEED_ROWS, SEED_ROWS, gone_pids=(long_pid,))
    healthy = run_zdlab("doctor", timeout=120)
    assert healthy.returncode == 0 and "All checks passed." in healthy.stdout, healthy.stdout + healthy.stderr


def test_stale_postmaster_pid_does_not_pass_for_a_running_server(own_server):
    """A server stopped cleanly is just "not running"; one whose postmaster.pid survived it (killed,
    then its pid reused by another program, as after a reboot) must not pass for running either."""
    pidfile = server.pgdata() / "postmaster.pid"
    lines = pidfile.read_text().splitlines()
    assert run_zdlab("db", "stop").returncode == 0
    stopped = run_zdlab("doctor", timeout=120)
    assert stopped.returncode == 1
    assert "[FAIL] embedded PostgreSQL is not running (data folder" in stopped.stdout, stopped.stdout
    assert "killed" not in stopped.stdout
    assert_clear(run_zdlab("reset"))

    with subprocess.Popen(["sleep", "300"]) as other:  # alive, and not a PostgreSQL
        try:
            pidfile.write_text("\n".join([str(other.pid), *lines[1:]]) + "\n")
            owner = server.pgdata().stat()
            os.chown(pidfile, owner.st_uid, owner.st_gid)
            assert not server.status().running
            found = run_zdlab("doctor", timeout=120)
            assert found.returncode == 1
            assert "left a stale postmaster.pid" in found.stdout and "`zdlab db start`" in found.stdout, found.stdout
            started = run_zdlab("db", "start")
            assert started.returncode == 0, started.stderr
            assert "removed the postmaster.pid of a server that was killed" in started.stdout, started.stdout
            assert server.status().running and server.status().pid != other.pid
        finally:
            other.kill()


# -- c. a concurrent index build cancelled halfway --------------------------------------------------

INDEX_NOTEBOOK = SOLUTIONS / "02_preventive_actions.ipynb"  # it builds this very index concurrently
INDEX_ROWS = 300_000  # a build of a few hundred ms: long enough to be caught in its building phase
INDEX = "orders_created_at_idx"


def test_cancelled_concurrent_index_build_then_notebook_runs_again(learner):
    learner("faults_index")
    box = Sandbox("02_preventive_actions").reset()
    seed(box, rows=INDEX_ROWS, progress=False)
    errors: list[BaseException] = []
    with box.connect("migration") as build, db.connect(application_name="zdlab-test/watch") as watch:
        def create() -> None:
            try:
                build.execute(f"CREATE INDEX CONCURRENTLY {INDEX} ON orders (created_at)")
            except psycopg.Error as exc:
                errors.append(exc)

        builder = threading.Thread(target=create)
        builder.start()
        until("the concurrent build to be building", lambda: watch.execute(
            "SELECT phase FROM pg_stat_progress_create_index WHERE pid = %s AND phase LIKE 'building index%%'",
            [build.info.backend_pid]).fetchone())
        assert watch.execute("SELECT pg_cancel_backend(%s)", [build.info.backend_pid]).fetchone()[0]
        builder.join(WAIT_S)
        assert len(errors) == 1 and isinstance(errors[0], psycopg.errors.QueryCanceled), errors
        invalid_oid, valid = watch.execute(
            "SELECT indexrelid::int, indisvalid FROM pg_index WHERE indexrelid = to_regclass(%s)",
            [f"{box.schema}.{INDEX}"]).fetchone()
        assert valid is False, "a cancelled concurrent build leaves its index behind, INVALID"

    found = run_zdlab("doctor", timeout=120)
    assert found.returncode == 1, found.stdout + found.stderr
    assert f"{box.schema}.{INDEX} on orders" in found.stdout, found.stdout
    assert f'DROP INDEX CONCURRENTLY "{box.schema}"."{INDEX}"' in found.stdout, found.stdout

    # The way back: run the notebook again; its reset drops the sandbox, the invalid index with it.
    result = time_notebooks.time_notebook(INDEX_NOTEBOOK)
    assert result.error is None, result.error
    with db.connect(application_name="zdlab-test/check") as conn:
        assert conn.execute("SELECT count(*) FROM pg_class WHERE oid = %s", [invalid_oid]).fetchone()[0] == 0
        assert_nothing_left(conn, box.schema, None, None)  # the notebook's traffic adds rows: no fixed count


# -- doctor --fix: the same leftovers, removed in one command ---------------------------------------

def test_doctor_fix_ends_strays_drops_invalid_indexes_and_half_seeded_tables(learner, monkeypatch, capsys):
    learner("faults")
    monkeypatch.setattr(doctor, "STRAY_AFTER_S", 1)  # a stray after 1 s idle in its transaction, not 5
    box = Sandbox("faults_fix").reset()
    outside = "Team A"  # a schema of the learner's own, outside any sandbox: no reset would clean it
    with db.connect(application_name="zdlab-test/setup") as conn:
        conn.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(outside)))
        conn.execute(sql.SQL("CREATE SCHEMA {}").format(sql.Identifier(outside)))
        conn.execute(sql.SQL("CREATE TABLE {}.t AS SELECT 1 AS x FROM generate_series(1, 2)").format(
            sql.Identifier(outside)))
        # A unique index built concurrently over duplicates fails, and stays behind INVALID.
        with pytest.raises(psycopg.errors.UniqueViolation):
            conn.execute(sql.SQL("CREATE UNIQUE INDEX CONCURRENTLY {} ON {}.t (x)").format(
                sql.Identifier("Odd-Name idx"), sql.Identifier(outside)))

    # A seed whose sessions are ended halfway (as a reset from another kernel would do).
    failures: list[BaseException] = []

    def load() -> None:
        try:
            seed(box, rows=SEED_ROWS, progress=False)
        except BaseException as exc:
            failures.append(exc)

    loader = threading.Thread(target=load)
    stray = box.connect("demo", autocommit=False)  # no `with`: its end (a COMMIT) would fail once --fix ended it
    with contextlib.closing(stray), db.connect(application_name="zdlab-test/watch") as watch:
        loader.start()
        until("the seed to insert", lambda: watch.execute(
            "SELECT count(*) > 0 FROM pg_stat_activity WHERE application_name = %s AND query ~ 'INSERT INTO'",
            [box.app_name("seed")]).fetchone()[0])
        watch.execute("SELECT pg_terminate_backend(pid, 5000) FROM pg_stat_activity WHERE application_name = %s",
                      [box.app_name("seed")])
        loader.join(WAIT_S)
        assert len(failures) == 1 and f"The seed of {box.schema} stopped halfway" in str(failures[0]), failures

        stray.execute("SELECT count(*) FROM pg_class").fetchone()  # opens a transaction, then idles in it
        until("the open transaction to count as a stray",
              lambda: [s for s in doctor.stray_sessions(watch) if s.pid == stray.info.backend_pid])
        failed = [line.what for line in doctor.leftovers() if not line.ok]
        assert len(failed) == 3, failed

        assert doctor.run(fix=True) == 0
        out = capsys.readouterr().out
        assert f"[fix] ended session {stray.info.backend_pid} {box.app_name('demo')}" in out, out
        assert '[fix] dropped invalid index Team A.Odd-Name idx on t' in out, out
        assert f"[fix] dropped {seeding_schema(box.schema)}" in out, out
        assert "All checks passed." in out, out
        assert watch.execute("SELECT count(*) FROM pg_index WHERE NOT indisvalid").fetchone()[0] == 0
        watch.execute(sql.SQL("DROP SCHEMA {} CASCADE").format(sql.Identifier(outside)))
    box.drop()
