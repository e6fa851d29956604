"""Notebook 03's checker on real sandboxes: right, wrong and missing answers.

The answers whose verdict depends on timing (right answers, the single big UPDATE) run at the
checker's real size; the ones judged on the catalog or the data alone run on a smaller seed.
"""

from __future__ import annotations

import time

import psycopg
import pytest

from zdlab import checks
from zdlab.exercises import nb03
from zdlab.exercises.nb03 import RULE_SQL, ex

BATCH_SQL = """
UPDATE users SET status = 'customer'
WHERE id BETWEEN %(lo)s AND %(hi)s
  AND id IN (SELECT user_id FROM orders WHERE status = 'delivered' AND user_id BETWEEN %(lo)s AND %(hi)s)
"""


def backfill_customers(conn: psycopg.Connection, batch: int = 5_000) -> None:
    last_id = conn.execute("SELECT max(id) FROM users").fetchone()[0]
    for lo in range(1, last_id + 1, batch):
        conn.execute(BATCH_SQL, {"lo": lo, "hi": lo + batch - 1})
        time.sleep(0.02)


def backfill_rule(conn: psycopg.Connection, batch: int = 5_000) -> None:
    """The rule for every row (the column starts NULL); one short transaction per id range."""
    last_id = conn.execute("SELECT max(id) FROM users").fetchone()[0]
    for lo in range(1, last_id + 1, batch):
        conn.execute(f"UPDATE users SET status = {RULE_SQL} WHERE id BETWEEN %s AND %s", [lo, lo + batch - 1])
        time.sleep(0.02)


SOLUTION = [
    "SET lock_timeout = '2s'",
    "ALTER TABLE users ADD COLUMN status text NOT NULL DEFAULT 'prospect'",
    backfill_customers,
]
# The PostgreSQL 12+ recipe for an existing column, backfill first (the app updates users rows).
CHECK_RECIPE = [
    "ALTER TABLE users ADD COLUMN status text",
    backfill_rule,
    "ALTER TABLE users ADD CONSTRAINT users_status_nn CHECK (status IS NOT NULL) NOT VALID",
    "ALTER TABLE users VALIDATE CONSTRAINT users_status_nn",
    "ALTER TABLE users ALTER COLUMN status SET NOT NULL",
    "ALTER TABLE users DROP CONSTRAINT users_status_nn",
]
NAIVE = f"""
ALTER TABLE users ADD COLUMN status text DEFAULT 'prospect';
UPDATE users SET status = {RULE_SQL};
ALTER TABLE users ALTER COLUMN status SET NOT NULL;
"""


@pytest.fixture(autouse=True)
def not_strict(monkeypatch):
    # The root conftest turns strict mode on for notebook kernels; here we read the verdicts.
    monkeypatch.delenv(checks.STRICT_ENV, raising=False)


@pytest.fixture
def small(monkeypatch):
    """A smaller seed for verdicts that do not depend on how long anything takes."""
    monkeypatch.setattr(nb03, "CHECK_ROWS", 20_000)


@pytest.mark.parametrize("steps", [SOLUTION, CHECK_RECIPE], ids=["default-then-batches", "check-recipe"])
def test_right_answers_are_correct(make_sandbox, steps):
    box = make_sandbox("nb03")
    result = ex.q1.evaluate(answer_steps=steps, sandbox=box)
    assert result.status == "correct", result.message
    assert f"all {nb03.CHECK_ROWS:,} users match the rule" in result.message
    with box.connect("test") as conn:  # the verdict was measured, not assumed
        assert conn.execute("SELECT attnotnull FROM pg_attribute WHERE attrelid = 'users'::regclass "
                            "AND attname = 'status'").fetchone() == (True,)


def test_one_big_update_stalls_the_app(make_sandbox):
    result = ex.q1.evaluate(answer_steps=NAIVE, sandbox=make_sandbox("nb03"))
    assert result.status == "incorrect"
    assert "noticed" in result.message and "UPDATE users SET status" in result.message, result.message


@pytest.mark.parametrize("steps, words", [
    (["ALTER TABLE users ADD COLUMN status text NOT NULL DEFAULT 'prospect'"], "have the wrong status"),
    (["ALTER TABLE users ADD COLUMN status text NOT NULL DEFAULT 'customer'"], "have the wrong status"),
    (["ALTER TABLE users ADD COLUMN status text DEFAULT 'prospect'", backfill_customers], "still accepts NULL"),
    (["ALTER TABLE users ADD COLUMN status varchar(10) NOT NULL DEFAULT 'prospect'", backfill_customers],
     "make it text"),
    # A NOT VALID CHECK before the backfill: the app's updates of rows not backfilled yet fail.
    (["ALTER TABLE users ADD COLUMN status text",
      "ALTER TABLE users ADD CONSTRAINT users_status_nn CHECK (status IS NOT NULL) NOT VALID",
      backfill_rule, *CHECK_RECIPE[3:]], "CheckViolation"),
    (["ALTER TABLE users ADD COLUMN status text", backfill_rule,
      "ALTER TABLE users ADD CONSTRAINT users_status_nn CHECK (status IS NOT NULL) NOT VALID",
      "ALTER TABLE users VALIDATE CONSTRAINT users_status_nn",
      "ALTER TABLE users ALTER COLUMN status SET NOT NULL"], "helper CHECK constraint users_status_nn"),
    (["ALTER TABLE users ADD COLUMN status text NOT NULL DEFAULT 'prospect'",
      "ALTER TABLE users ADD COLUMN oops timestamptz DEFAULT clock_timestamp()", backfill_customers],
     "rewrote the whole users table"),
    (["ALTER TABLE users ADD COLUMN status text", "UPDATE userz SET status = 'prospect'"],
     'step 2 (UPDATE userz SET status = \'prospect\') failed: UndefinedTable'),
    (["ALTER TABLE users ADD COLUMN status text", lambda conn: 1 / 0], "ZeroDivisionError"),
], ids=["no-backfill", "all-customers", "nullable", "varchar", "check-first", "leftover-check", "rewrite",
        "typo", "function-raises"])
def test_wrong_answers_are_incorrect(make_sandbox, small, steps, words):
    result = ex.q1.evaluate(answer_steps=steps, sandbox=make_sandbox("nb03"))
    assert result.status == "incorrect"
    assert words in result.message, result.message


def test_not_null_not_valid_is_not_enough(make_sandbox, small):
    box = make_sandbox("nb03")
    with box.connect("test") as conn:
        if conn.info.server_version < 180000:
            pytest.skip("NOT NULL ... NOT VALID is new in PostgreSQL 18")
    steps = ["ALTER TABLE users ADD COLUMN status text", backfill_rule,
             "ALTER TABLE users ADD CONSTRAINT users_status_nn NOT NULL status NOT VALID"]
    result = ex.q1.evaluate(answer_steps=steps, sandbox=box)
    assert result.status == "incorrect" and "still NOT VALID" in result.message, result.message


@pytest.mark.parametrize("answer", ["", ...])  # None: the solution-only cell of solutions/03
def test_not_attempted(answer):
    assert ex.q1.evaluate(answer_steps=answer).status == "not_attempted"


@pytest.mark.parametrize("answer, words", [
    (42, "not int"), ([], "nothing to run"), (["-- only a comment"], "nothing to run"),
    (["ALTER TABLE users ADD COLUMN status text", 7], "step 2 is a int"),
])
def test_malformed_answers_are_incorrect_before_running_anything(answer, words):
    # No sandbox is reset or seeded: the shape of the answer is checked first.
    result = ex.q1.evaluate(answer_steps=answer, sandbox=None)
    assert result.status == "incorrect" and words in result.message, result.message
