"""zdlab.locks.locks_taken: the modes it reports are the ones PostgreSQL documents (and
docs/cheatsheet.md states), errors are reported, and nothing it runs is left behind."""

from __future__ import annotations

import uuid

import pytest

from zdlab.locks import StatementLocks, locks_taken
from zdlab.sandbox import Sandbox
from zdlab.seed import seed


@pytest.fixture(scope="module")
def sb(db_url):
    """One seeded sandbox for the module: locks_taken must leave it unchanged anyway."""
    box = Sandbox(f"test_locks_{uuid.uuid4().hex[:8]}", db_url).reset()
    seed(box, rows=1000, progress=False)
    yield box
    box.drop()


def state(box: Sandbox) -> dict:
    """What a leaked commit would change: columns, indexes, constraints, row counts."""
    with box.connect("check") as conn:
        q = [box.schema]
        return {
            "columns": conn.execute("SELECT table_name, column_name FROM information_schema.columns "
                                    "WHERE table_schema = %s ORDER BY 1, 2", q).fetchall(),
            "indexes": conn.execute("SELECT indexdef FROM pg_indexes WHERE schemaname = %s ORDER BY 1",
                                    q).fetchall(),
            "constraints": conn.execute("SELECT conname FROM pg_constraint c JOIN pg_namespace n "
                                        "ON n.oid = c.connamespace WHERE nspname = %s ORDER BY 1", q).fetchall(),
            "tables": conn.execute("SELECT tablename FROM pg_tables WHERE schemaname = %s ORDER BY 1",
                                   q).fetchall(),
            "users": conn.execute("SELECT count(*) FROM users").fetchone()[0],
            "orders": conn.execute("SELECT count(*) FROM orders").fetchone()[0],
        }


def one(box: Sandbox, sql: str) -> StatementLocks:
    [res] = locks_taken(box, sql)
    assert res.status == "ok", res
    return res


# docs/cheatsheet.md's lock column: statement -> (table, strongest lock mode on it).
FACTS = [
    ("ALTER TABLE users ADD COLUMN c int", "users", "AccessExclusiveLock"),
    ("ALTER TABLE users RENAME COLUMN name TO full_name", "users", "AccessExclusiveLock"),
    ("ALTER TABLE users ALTER COLUMN email SET STATISTICS 500", "users", "ShareUpdateExclusiveLock"),
    ("ALTER TABLE users SET (fillfactor = 90)", "users", "ShareUpdateExclusiveLock"),
    ("CREATE INDEX ON orders(created_at)", "orders", "ShareLock"),
    ("CREATE INDEX CONCURRENTLY ON orders(created_at)", "orders", "ShareUpdateExclusiveLock"),
    ("REINDEX TABLE orders", "orders", "ShareLock"),
    ("REINDEX INDEX CONCURRENTLY orders_user_id_idx", "orders", "ShareUpdateExclusiveLock"),
    ("CREATE TRIGGER t BEFORE UPDATE ON orders FOR EACH ROW "
     "EXECUTE FUNCTION suppress_redundant_updates_trigger()", "orders", "ShareRowExclusiveLock"),
    ("COMMENT ON TABLE orders IS 'x'", "orders", "ShareUpdateExclusiveLock"),
    ("ANALYZE orders", "orders", "ShareUpdateExclusiveLock"),
    ("VACUUM orders", "orders", "ShareUpdateExclusiveLock"),
    ("VACUUM FULL orders", "orders", "AccessExclusiveLock"),
    ("TRUNCATE orders", "orders", "AccessExclusiveLock"),
    ("ALTER TABLE orders ADD CONSTRAINT orders_user_fk2 FOREIGN KEY (user_id) REFERENCES users NOT VALID",
     "orders", "ShareRowExclusiveLock"),
    ("ALTER TABLE orders ADD CONSTRAINT orders_user_fk2 FOREIGN KEY (user_id) REFERENCES users NOT VALID",
     "users", "ShareRowExclusiveLock"),
    ("CLUSTER orders USING orders_pkey", "orders", "AccessExclusiveLock"),
    ("SELECT count(*) FROM users", "users", "AccessShareLock"),
    ("UPDATE users SET name = 'x' WHERE id = 1", "users", "RowExclusiveLock"),
]


@pytest.mark.parametrize(("sql", "table", "mode"), FACTS, ids=[f[0][:40] for f in FACTS])
def test_strongest_mode_matches_the_cheatsheet(sb, sql, table, mode):
    res = one(sb, sql)
    assert res.strongest(table) == mode, res.locks


def test_add_column_takes_access_exclusive_only_on_users(sb):
    res = one(sb, "ALTER TABLE users ADD COLUMN c int")
    assert res.locks == [{"relation": "users", "mode": "AccessExclusiveLock"}]
    assert res.method == "transaction"


def test_create_index_takes_share_lock(sb):
    res = one(sb, "CREATE INDEX ON orders(created_at)")
    assert res.modes("orders") == ["ShareLock"]


def test_create_index_concurrently_is_observed_and_leaves_no_index(sb):
    before = state(sb)
    res = one(sb, "CREATE INDEX CONCURRENTLY ON orders(created_at)")
    assert res.method == "observed"
    assert "ShareUpdateExclusiveLock" in res.modes("orders")
    assert "ShareLock" not in res.modes("orders")
    assert res.strongest("orders") == "ShareUpdateExclusiveLock"
    assert state(sb) == before  # the committed index was dropped again


def test_drop_index_concurrently_is_undone(sb):
    before = state(sb)
    res = one(sb, "DROP INDEX CONCURRENTLY orders_user_id_idx")
    assert res.strongest("orders") == "ShareUpdateExclusiveLock"
    assert state(sb) == before  # re-created


def test_failed_concurrent_build_leaves_no_invalid_index(sb):
    """A failed CONCURRENTLY build commits an INVALID index: locks_taken must drop it again."""
    before = state(sb)
    [res] = locks_taken(sb, "CREATE UNIQUE INDEX CONCURRENTLY orders_status_uq ON orders (status)")
    assert res.status == "error"
    assert "could not create unique index" in res.error
    assert state(sb) == before


def test_validate_constraint_takes_share_update_exclusive(sb):
    add, validate = locks_taken(sb, "ALTER TABLE orders ADD CONSTRAINT c CHECK (amount_cents > 0) NOT VALID;\n"
                                    "ALTER TABLE orders VALIDATE CONSTRAINT c;")
    assert add.strongest("orders") == "AccessExclusiveLock"
    assert validate.status == "ok"
    assert validate.modes("orders") == ["ShareUpdateExclusiveLock"]


def test_foreign_key_not_valid_locks_both_tables(sb):
    res = one(sb, "ALTER TABLE orders ADD CONSTRAINT fk2 FOREIGN KEY (user_id) REFERENCES users(id) NOT VALID")
    assert res.strongest("orders") == "ShareRowExclusiveLock"
    assert res.strongest("users") == "ShareRowExclusiveLock"


def test_select_takes_access_share(sb):
    res = one(sb, "SELECT * FROM users JOIN orders ON orders.user_id = users.id LIMIT 1")
    assert res.locks == [{"relation": "orders", "mode": "AccessShareLock"},
                         {"relation": "users", "mode": "AccessShareLock"}]


def test_indexes_and_catalogs_are_not_reported(sb):
    res = one(sb, "SELECT * FROM users WHERE id = 1")  # uses users_pkey: an index lock, not reported
    assert [lk["relation"] for lk in res.locks] == ["users"]


def test_error_is_reported_and_later_statements_not_run(sb):
    ok, bad, rest = locks_taken(sb, "SELECT 1 FROM users LIMIT 1; SELECT nope FROM users; "
                                    "ALTER TABLE users ADD COLUMN z int;")
    assert ok.status == "ok"
    assert bad.status == "error"
    assert bad.error == 'column "nope" does not exist'
    assert bad.locks == []
    assert rest.status == "not run" and rest.locks == []


def test_statement_sees_effects_of_earlier_ones(sb):
    add, index, backfill = locks_taken(sb, "ALTER TABLE orders ADD COLUMN note text; "
                                           "CREATE INDEX ON orders(note); UPDATE orders SET note = 'x';")
    assert index.status == "ok" and index.modes("orders") == ["ShareLock"]
    assert backfill.status == "ok" and backfill.modes("orders") == ["RowExclusiveLock"]


def test_same_mode_twice_is_reported_for_both_statements(sb):
    first, second = locks_taken(sb, "CREATE INDEX a ON orders(status); CREATE INDEX b ON orders(amount_cents);")
    assert first.modes("orders") == ["ShareLock"]
    assert second.modes("orders") == ["ShareLock"]  # already held: measured by running it alone


def test_transaction_control_is_skipped(sb):
    begin, stmt, commit = locks_taken(sb, "BEGIN; ALTER TABLE users ADD COLUMN c int; COMMIT;")
    assert (begin.status, begin.locks) == ("skipped", [])
    assert (commit.status, commit.locks) == ("skipped", [])
    assert stmt.strongest("users") == "AccessExclusiveLock"


def test_server_wide_statements_are_not_run(sb):
    results = locks_taken(sb, "VACUUM; ALTER SYSTEM SET work_mem = '77MB'; CREATE DATABASE zdlab_never; "
                              "PREPARE TRANSACTION 'zdlab_never';")
    assert [r.status for r in results] == ["skipped"] * 4
    with sb.connect("check") as conn:
        assert not conn.execute("SELECT 1 FROM pg_database WHERE datname = 'zdlab_never'").fetchone()


def test_nothing_is_committed(sb):
    before = state(sb)
    results = locks_taken(sb, "ALTER TABLE users ADD COLUMN c int;\n"
                              "INSERT INTO users (id, email) VALUES (-1, 'x@example.com');\n"
                              "CREATE TABLE extra (id int);\n"
                              "CREATE INDEX CONCURRENTLY users_email_idx ON users (email);")
    assert [r.status for r in results] == ["ok"] * 4, results
    assert results[1].modes("users") == ["RowExclusiveLock"]
    assert state(sb) == before


def test_lock_wait_is_bounded_by_lock_timeout(sb):
    """A DDL stuck behind another session's transaction fails fast instead of queueing forever."""
    with sb.connect("blocker") as blocker:
        blocker.execute("BEGIN")
        blocker.execute("SELECT count(*) FROM users")  # AccessShareLock, held until ROLLBACK
        [res] = locks_taken(sb, "ALTER TABLE users ADD COLUMN c int", lock_timeout="200ms")
        blocker.execute("ROLLBACK")
    assert res.status == "error"
    assert "lock timeout" in res.error


def test_to_dict_shape(sb):
    d = one(sb, "SELECT 1 FROM users LIMIT 1").to_dict()
    assert set(d) >= {"sql", "locks", "error"}
    assert d["locks"] == [{"relation": "users", "mode": "AccessShareLock"}]
    assert d["error"] is None


def test_table_outside_the_sandbox_is_schema_qualified(sb):
    other = Sandbox(f"test_locks_other_{uuid.uuid4().hex[:8]}", sb.url).reset()
    try:
        with other.connect("setup") as conn:
            conn.execute("CREATE TABLE t (id int)")
        res = one(sb, f"SELECT * FROM {other.schema}.t")
        assert res.locks == [{"relation": f"{other.schema}.t", "mode": "AccessShareLock"}]
    finally:
        other.drop()
