"""Notebook 01_risks checkers, each with a known-right, a known-wrong and a missing answer.

The checkers measure on the database (timings table, backfill under traffic, lock waits,
rolled-back candidate migrations, checksums), so these tests run them for real on throwaway
sandboxes. A wrong answer that a solution-only cell of solutions/01_risks.ipynb already checks
with the same assertion (no retry, the concat_ws down, ...) is tested there only.
"""

from __future__ import annotations

import time

import psycopg
import pytest

from zdlab import checks
from zdlab.backfill import EXPR as BACKFILL_EXPR
from zdlab.exercises.nb01 import ex


@pytest.fixture(autouse=True)
def not_strict(monkeypatch):
    monkeypatch.delenv(checks.STRICT_ENV, raising=False)


# -- reference answers and known-wrong ones -------------------------------------------------------


def backfill_batched(conn: psycopg.Connection, batch_size: int) -> None:
    last = 0
    while True:
        ids = conn.execute(
            "WITH batch AS (SELECT id FROM users WHERE id > %s ORDER BY id LIMIT %s) "
            f"UPDATE users u SET email_domain = {BACKFILL_EXPR.replace('email', 'u.email')} "
            "FROM batch WHERE u.id = batch.id RETURNING u.id", [last, batch_size]).fetchall()
        if not ids:
            return
        last = max(i for (i,) in ids)
        time.sleep(0.02)


def backfill_at_once(conn: psycopg.Connection, batch_size: int) -> None:
    conn.execute(f"UPDATE users SET email_domain = {BACKFILL_EXPR}")


def backfill_first_batch_only(conn: psycopg.Connection, batch_size: int) -> None:
    conn.execute(f"UPDATE users SET email_domain = {BACKFILL_EXPR} WHERE id <= %s", [batch_size])


def run_with_lock_timeout(conn, sql, timeout_ms, retries, backoff):
    conn.execute(f"SET lock_timeout = '{int(timeout_ms)}ms'")
    try:
        for attempt in range(retries + 1):
            try:
                conn.execute(sql)
                return attempt + 1
            except psycopg.errors.LockNotAvailable:
                if attempt == retries:
                    raise
                time.sleep(backoff * 2 ** attempt)
    finally:
        conn.execute("RESET lock_timeout")


def run_swallowing_errors(conn, sql, timeout_ms, retries, backoff):
    conn.execute(f"SET lock_timeout = '{int(timeout_ms)}ms'")
    for _ in range(retries + 1):
        try:
            conn.execute(sql)
            return
        except psycopg.errors.LockNotAvailable:
            time.sleep(backoff)


RIGHT_DOWN = """
ALTER TABLE customers ADD COLUMN name text;
UPDATE customers SET name = CASE WHEN last_name IS NULL THEN first_name ELSE first_name || ' ' || last_name END;
"""
CONCAT_WS_DOWN = RIGHT_DOWN.replace(
    "CASE WHEN last_name IS NULL THEN first_name ELSE first_name || ' ' || last_name END",
    "concat_ws(' ', first_name, last_name)")
# Expand/contract: the down of the contract must not undo the expand (first_name, last_name stay).
DROPS_EXPAND_DOWN = RIGHT_DOWN + "ALTER TABLE customers DROP COLUMN first_name, DROP COLUMN last_name;\n"


# -- q1: the estimate at 100M rows ----------------------------------------------------------------


def test_q1_estimate(make_sandbox):
    box = make_sandbox("nb01q1")
    assert ex.q1.evaluate(estimate_100m_s=100.0, sandbox=box).status == "incorrect"  # nothing measured yet
    with box.connect() as conn:
        conn.execute("CREATE TABLE migration_timings (rows bigint, seconds float8, wal_bytes bigint)")
        conn.execute("INSERT INTO migration_timings VALUES (10000, 0.011, 0), (100000, 0.1, 0), (1000000, 1.0, 0)")
    right = ex.q1.evaluate(estimate_100m_s=100.0, sandbox=box)
    assert right.status == "correct", right.message
    print(right.message)
    assert ex.q1.evaluate(estimate_100m_s=1.0, sandbox=box).status == "incorrect"
    minutes = ex.q1.evaluate(estimate_100m_s=100 / 60, sandbox=box)
    assert minutes.status == "incorrect" and "minutes" in minutes.message
    assert ex.q1.evaluate(estimate_100m_s=None, sandbox=box).status == "not_attempted"


# -- q2: the batched backfill under traffic -------------------------------------------------------


def test_q2_batched_backfill(make_sandbox):
    box = make_sandbox("nb01q2")
    right = ex.q2.evaluate(backfill_batched=backfill_batched, sandbox=box)
    assert right.status == "correct", right.message
    print(right.message)
    at_once = ex.q2.evaluate(backfill_batched=backfill_at_once, sandbox=box)
    assert at_once.status == "incorrect" and "noticed your backfill" in at_once.message, at_once.message
    partial = ex.q2.evaluate(backfill_batched=backfill_first_batch_only, sandbox=box)
    assert partial.status == "incorrect" and "still have no" in partial.message, partial.message
    assert ex.q2.evaluate(backfill_batched=None, sandbox=box).status == "not_attempted"


# -- q3: lock_timeout and retry -------------------------------------------------------------------


def test_q3_lock_timeout_retry(make_sandbox):
    box = make_sandbox("nb01q3")
    right = ex.q3.evaluate(run_with_lock_timeout=run_with_lock_timeout, sandbox=box)
    assert right.status == "correct", right.message
    print(right.message)
    swallow = ex.q3.evaluate(run_with_lock_timeout=run_swallowing_errors, sandbox=box)
    assert swallow.status == "incorrect" and "raise" in swallow.message, swallow.message
    assert ex.q3.evaluate(run_with_lock_timeout=None, sandbox=box).status == "not_attempted"


# -- q4: the migration that fails in production ---------------------------------------------------


def test_q4_fails_in_production(make_sandbox):
    box = make_sandbox("nb01q4")
    right = ex.q4.evaluate(fails_in_production="unique_email", sandbox=box)
    assert right.status == "correct", right.message
    print(right.message)
    for wrong in ("no_such_migration",):
        assert ex.q4.evaluate(fails_in_production=wrong, sandbox=box).status == "incorrect", wrong
    assert ex.q4.evaluate(fails_in_production="", sandbox=box).status == "not_attempted"


# -- q5: the down migration -----------------------------------------------------------------------


def test_q5_down_migration(make_sandbox):
    box = make_sandbox("nb01q5")
    right = ex.q5.evaluate(down_sql=RIGHT_DOWN, sandbox=box)
    assert right.status == "correct", right.message
    print(right.message)
    for wrong in (CONCAT_WS_DOWN, DROPS_EXPAND_DOWN, "ALTER TABLE customers ADD COLUMN name text",
                  "BEGIN; ALTER TABLE customers ADD COLUMN name text; COMMIT"):
        assert ex.q5.evaluate(down_sql=wrong, sandbox=box).status == "incorrect", wrong
    with box.connect() as conn:  # the check works on a rolled-back copy: nothing is left behind
        assert conn.execute("SELECT to_regclass('customers')").fetchone()[0] is None
    assert ex.q5.evaluate(down_sql=None, sandbox=box).status == "not_attempted"
