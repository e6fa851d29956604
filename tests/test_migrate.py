"""zdlab.migrate: the version table, up/down order, transactions, irreversible and edited migrations."""

from __future__ import annotations

import threading
import time

import pytest

from zdlab.migrate import (
    IrreversibleMigration,
    Migration,
    MigrationError,
    Migrator,
    is_concurrent_index,
    load_dir,
    write_dir,
)

M1 = Migration(1, "create t", "CREATE TABLE t (id int PRIMARY KEY, a text)", "DROP TABLE t")
M2 = Migration(2, "add b", "ALTER TABLE t ADD COLUMN b int", "ALTER TABLE t DROP COLUMN b")
M3 = Migration(3, "index a", "CREATE INDEX CONCURRENTLY t_a_idx ON t (a)", "DROP INDEX CONCURRENTLY t_a_idx",
               transactional=False)


def columns(conn) -> list[str]:
    return [r[0] for r in conn.execute("SELECT column_name FROM information_schema.columns WHERE "
                                       "table_schema = current_schema() AND table_name = 't' ORDER BY 1")]


@pytest.fixture
def conn(make_sandbox):
    with make_sandbox("migrate").connect() as c:
        yield c


def test_up_down_records_versions_in_order(conn):
    m = Migrator(conn, [M3, M1, M2])
    assert m.up() == [1, 2, 3]
    assert m.current() == 3 and columns(conn) == ["a", "b", "id"]
    assert conn.execute("SELECT indisvalid FROM pg_index WHERE indexrelid = 't_a_idx'::regclass").fetchone()[0]
    assert m.up() == []  # nothing pending
    assert m.down(1) == [3, 2]
    assert m.status() == [(1, "create t", True), (2, "add b", False), (3, "index a", False)]
    assert columns(conn) == ["a", "id"]
    assert m.log == ["up 1 create t", "up 2 add b", "up 3 index a", "down 3 index a", "down 2 add b"]


def test_a_failed_transactional_migration_leaves_nothing(conn):
    bad = Migration(2, "half", "ALTER TABLE t ADD COLUMN b int; ALTER TABLE nope ADD COLUMN c int", "SELECT 1")
    m = Migrator(conn, [M1, bad])
    with pytest.raises(MigrationError, match="nope"):
        m.up()
    assert m.current() == 1 and columns(conn) == ["a", "id"]  # the ADD COLUMN b was rolled back too


def test_concurrent_index_needs_non_transactional(conn):
    wrapped = Migration(3, "index a", M3.up, M3.down)  # transactional by mistake
    with pytest.raises(MigrationError, match="ActiveSqlTransaction"):
        Migrator(conn, [M1, wrapped]).up()


def test_irreversible_refuses_before_reverting_anything(conn):
    m = Migrator(conn, [M1, Migration(2, "drop a", "ALTER TABLE t DROP COLUMN a", None),
                        Migration(3, "add b", M2.up, M2.down)])
    m.up()
    with pytest.raises(IrreversibleMigration, match="drop a"):
        m.down(0)
    assert m.current() == 3 and columns(conn) == ["b", "id"]  # not even migration 3 was reverted


def test_edited_migration_is_refused(conn):
    Migrator(conn, [M1]).up()
    edited = Migration(1, "create t", "CREATE TABLE t (id bigint PRIMARY KEY)", "DROP TABLE t")
    with pytest.raises(MigrationError, match="edited"):
        Migrator(conn, [edited]).up()


def test_lock_timeout_bounds_a_ddl_stuck_behind_a_transaction(make_sandbox):
    box = make_sandbox("migrate_lock")
    with box.connect() as conn, box.connect("blocker", autocommit=False) as blocker:
        Migrator(conn, [M1]).up()
        blocker.execute("SELECT * FROM t").fetchall()  # holds AccessShareLock until rollback
        m = Migrator(conn, [M1, M2], lock_timeout="100ms")
        with pytest.raises(MigrationError, match="LockNotAvailable"):
            m.up()
        blocker.rollback()
        assert m.up() == [2]


def test_files_round_trip(conn, tmp_path):
    write_dir(tmp_path, [M1, M2, M3, Migration(4, "irreversible", "SELECT 1", None)])
    loaded = load_dir(tmp_path)
    assert [(m.version, m.transactional, m.down is None) for m in loaded] == \
        [(1, True, False), (2, True, False), (3, False, False), (4, True, True)]
    m = Migrator.from_dir(conn, tmp_path)
    assert m.up() == [1, 2, 3, 4]


def test_needs_autocommit(make_sandbox):
    with make_sandbox("migrate_ac").connect(autocommit=False) as conn, pytest.raises(MigrationError):
        Migrator(conn, [M1])


# -- the rule for concurrent index builds: no lock_timeout, and never an INVALID index left ---------

INVALID = "SELECT count(*) FROM pg_index WHERE indrelid = 't'::regclass AND NOT indisvalid"


def _release_when_waiting(box, pid: int, reader, waited: list[str]) -> threading.Thread:
    """Roll back ``reader`` once ``pid`` has waited on a lock for well past the 100 ms lock_timeout."""
    def run() -> None:
        with box.connect("watch") as watch:
            for _ in range(1000):  # at most ~10 s; the assertion below fails if it never waited
                row = watch.execute("SELECT wait_event FROM pg_stat_activity WHERE pid = %s "
                                    "AND wait_event_type = 'Lock'", [pid]).fetchone()
                if row:
                    waited.append(row[0])
                    if len(waited) >= 50:  # ~0.5 s of waiting: five times the lock_timeout
                        break
                time.sleep(0.01)
        reader.rollback()
    thread = threading.Thread(target=run)
    thread.start()
    return thread


def test_a_concurrent_build_waits_for_an_old_snapshot_and_leaves_a_valid_index(make_sandbox):
    box = make_sandbox("migrate_cic")
    with box.connect() as conn, box.connect("report", autocommit=False) as reader:
        Migrator(conn, [M1]).up()
        conn.execute("INSERT INTO t SELECT g, 'a' || g FROM generate_series(1, 1000) AS g")
        # A report (or pg_dump) in one REPEATABLE READ snapshot, open during the whole build.
        reader.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
        reader.execute("SELECT count(*) FROM t").fetchone()
        waited: list[str] = []
        thread = _release_when_waiting(box, conn.info.backend_pid, reader, waited)
        try:
            m = Migrator(conn, [M1, M3], lock_timeout="100ms")
            assert m.up() == [3]
        finally:
            thread.join()
        assert waited, "the build never waited for the open transaction: the test proves nothing"
        assert conn.execute("SELECT indisvalid FROM pg_index WHERE indexrelid = 't_a_idx'::regclass").fetchone()[0]
        assert conn.execute(INVALID).fetchone()[0] == 0
        assert conn.execute("SHOW lock_timeout").fetchone()[0] == "0"  # RESET: the session's own value again


def test_a_failed_concurrent_build_leaves_no_invalid_index(conn):
    Migrator(conn, [M1]).up()
    conn.execute("INSERT INTO t VALUES (1, 'same'), (2, 'same')")
    unique = Migration(3, "unique a", "CREATE UNIQUE INDEX CONCURRENTLY t_a_key ON t (a)",
                       "DROP INDEX CONCURRENTLY t_a_key", transactional=False)
    m = Migrator(conn, [M1, unique])
    with pytest.raises(MigrationError, match="UniqueViolation"):
        m.up()
    assert conn.execute(INVALID).fetchone()[0] == 0 and m.current() == 1
    assert conn.execute("SELECT to_regclass('t_a_key')").fetchone()[0] is None


@pytest.mark.parametrize(("stmt", "concurrent"), [
    ("CREATE INDEX CONCURRENTLY i ON t (a)", True),
    ("create unique index\n  concurrently if not exists i on t (a)", True),
    ("-- why\nREINDEX INDEX CONCURRENTLY i", True),
    ("DROP INDEX CONCURRENTLY IF EXISTS i", True),
    ("CREATE INDEX i ON t (a)", False),
    ("ALTER TABLE t ADD COLUMN concurrently int", False),
])
def test_which_statements_run_without_lock_timeout(stmt, concurrent):
    assert is_concurrent_index(stmt) is concurrent
