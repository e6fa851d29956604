"""Notebook 02's checkers against real sandboxes: a right, a wrong and a missing answer each."""

from __future__ import annotations

import pytest

from zdlab import checks
from zdlab.exercises.nb02 import ex
from zdlab.seed import seed


@pytest.fixture(autouse=True)
def not_strict(monkeypatch):
    monkeypatch.delenv(checks.STRICT_ENV, raising=False)


@pytest.fixture
def box(make_sandbox):
    return make_sandbox("nb02")


# -- q1: the missing downgrade ---------------------------------------------------------------------

RIGHT_DOWN = """
DROP INDEX products_name_idx;
ALTER TABLE products DROP CONSTRAINT products_price_positive;
ALTER TABLE products DROP COLUMN currency;
"""


def test_q1_right(box):
    result = ex.q1.evaluate(answer_down_sql=RIGHT_DOWN, sandbox=box)
    assert result.status == "correct", result.message


@pytest.mark.parametrize("sql, words", [
    ("ALTER TABLE products DROP CONSTRAINT products_price_positive; ALTER TABLE products DROP COLUMN currency",
     "indexes extra: products_name_idx"),
    ("DROP INDEX products_name_idx; ALTER TABLE products DROP COLUMN currency",
     "constraints extra: products_price_positive"),
    ("DROP TABLE products", "row count 1000 -> None"),
    ("DROP INDX products_name_idx", "your down failed"),
])
def test_q1_wrong(box, sql, words):
    result = ex.q1.evaluate(answer_down_sql=sql, sandbox=box)
    assert result.status == "incorrect" and words in result.message, result.message


def test_q1_not_attempted(box):
    assert ex.q1.evaluate(answer_down_sql=None, sandbox=box).status == "not_attempted"


# -- q2: the dual-write trigger ---------------------------------------------------------------------

RIGHT_TRIGGER = """
CREATE FUNCTION customers_sync_name() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'INSERT' THEN
        NEW.full_name := coalesce(NEW.full_name, NEW.name);
        NEW.name := coalesce(NEW.name, NEW.full_name);
    ELSIF NEW.name IS DISTINCT FROM OLD.name THEN
        NEW.full_name := NEW.name;
    ELSIF NEW.full_name IS DISTINCT FROM OLD.full_name THEN
        NEW.name := NEW.full_name;
    END IF;
    RETURN NEW;
END $$;
CREATE TRIGGER customers_sync_name BEFORE INSERT OR UPDATE ON customers
    FOR EACH ROW EXECUTE FUNCTION customers_sync_name();
"""
ONE_WAY = """
CREATE FUNCTION customers_sync_name() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN NEW.full_name := NEW.name; RETURN NEW; END $$;
CREATE TRIGGER customers_sync_name BEFORE INSERT OR UPDATE ON customers
    FOR EACH ROW EXECUTE FUNCTION customers_sync_name();
"""
INSERT_ONLY = RIGHT_TRIGGER.replace("BEFORE INSERT OR UPDATE", "BEFORE INSERT")


def test_q2_right(box):
    result = ex.q2.evaluate(answer_trigger_sql=RIGHT_TRIGGER, sandbox=box)
    assert result.status == "correct", result.message
    assert "none failed" in result.message


@pytest.mark.parametrize("sql, words", [
    (ONE_WAY, "overwrote v2's write"),
    (INSERT_ONLY, "when v1 updates name, full_name does not follow"),
    ("SELECT 1", "no trigger"),
    ("CREATE TRIGGER x BEFORE UPDATE ON customers FOR EACH ROW EXECUTE FUNCTION nope()", "failed"),
])
def test_q2_wrong(box, sql, words):
    result = ex.q2.evaluate(answer_trigger_sql=sql, sandbox=box)
    assert result.status == "incorrect" and words in result.message, result.message


def test_q2_not_attempted(box):
    assert ex.q2.evaluate(answer_trigger_sql="", sandbox=box).status == "not_attempted"


# -- q3: a unique constraint without blocking writes ---------------------------------------------------

RIGHT_UNIQUE = """
CREATE UNIQUE INDEX CONCURRENTLY users_email_key ON users (email);
SET lock_timeout = '1s';
ALTER TABLE users ADD CONSTRAINT users_email_key UNIQUE USING INDEX users_email_key;
"""


@pytest.fixture
def seeded(box):
    seed(box, 20_000, progress=False)  # small: the request in flight makes a plain build stall at any size
    return box


def test_q3_right_and_repeatable(seeded):
    for _ in range(2):  # the check resets users(email) first, so checking twice works
        result = ex.q3.evaluate(answer_unique_sql=RIGHT_UNIQUE, sandbox=seeded)
        assert result.status == "correct", result.message


@pytest.mark.parametrize("sql, words", [
    ("ALTER TABLE users ADD CONSTRAINT users_email_key UNIQUE (email)", "noticed"),
    ("CREATE UNIQUE INDEX users_email_key ON users (email); "
     "ALTER TABLE users ADD CONSTRAINT users_email_key UNIQUE USING INDEX users_email_key", "noticed"),
    ("CREATE UNIQUE INDEX CONCURRENTLY users_email_key ON users (email)", "A unique index alone is not"),
    ("CREATE UNIQUE INDEX CONCURRENTLY users_email_key ON users (emial)", "your SQL failed"),
])
def test_q3_wrong(seeded, sql, words):
    result = ex.q3.evaluate(answer_unique_sql=sql, sandbox=seeded)
    assert result.status == "incorrect" and words in result.message, result.message


def test_q3_not_attempted(box):
    assert ex.q3.evaluate(answer_unique_sql=None, sandbox=box).status == "not_attempted"


# -- q4: the guarded drop -------------------------------------------------------------------------------

def right_drop(conn, table, column, *, backup_table, deployed_sql):
    import re

    if any(re.search(rf"\b{column}\b", sql) for sql in deployed_sql):
        raise RuntimeError("still read")
    if conn.execute("SELECT to_regclass(%s)", [backup_table]).fetchone()[0] is None:
        raise RuntimeError("no backup")
    missing = conn.execute(f"SELECT count(*) FROM (SELECT id, {column} FROM {table} WHERE {column} IS NOT NULL "
                           f"EXCEPT SELECT id, {column} FROM {backup_table}) AS m").fetchone()[0]
    if missing:
        raise RuntimeError("incomplete backup")
    conn.execute(f"ALTER TABLE {table} DROP COLUMN {column}")


def no_guard(conn, table, column, *, backup_table, deployed_sql):
    conn.execute(f"ALTER TABLE {table} DROP COLUMN {column}")


def exists_only(conn, table, column, *, backup_table, deployed_sql):
    if any(column in sql for sql in deployed_sql):
        raise RuntimeError("still read")
    if conn.execute("SELECT to_regclass(%s)", [backup_table]).fetchone()[0] is None:
        raise RuntimeError("no backup")
    conn.execute(f"ALTER TABLE {table} DROP COLUMN {column}")


def always_refuses(conn, table, column, *, backup_table, deployed_sql):
    raise RuntimeError("never")


def drops_table(conn, table, column, *, backup_table, deployed_sql):
    right_drop(conn, table, column, backup_table=backup_table, deployed_sql=deployed_sql)
    conn.execute(f"DELETE FROM {table}")


def test_q4_right(box):
    result = ex.q4.evaluate(answer_drop=right_drop, sandbox=box)
    assert result.status == "correct", result.message


@pytest.mark.parametrize("fn, words", [
    (no_guard, "still reads"),
    (exists_only, "lacks a row"),
    (always_refuses, "refused"),
    (drops_table, "keep its 1000 rows"),
    ("not a function", "should be your function"),
])
def test_q4_wrong(box, fn, words):
    result = ex.q4.evaluate(answer_drop=fn, sandbox=box)
    assert result.status == "incorrect" and words in result.message, result.message


def test_q4_not_attempted(box):
    assert ex.q4.evaluate(answer_drop=None, sandbox=box).status == "not_attempted"


def test_scratch_schemas_are_dropped(box):
    ex.q1.evaluate(answer_down_sql=RIGHT_DOWN, sandbox=box)
    with box.connect() as conn:
        left = conn.execute("SELECT count(*) FROM pg_namespace WHERE nspname LIKE %s",
                            [box.schema + "\\_q%"]).fetchone()[0]
    assert left == 0
