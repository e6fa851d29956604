"""Exercises of notebook 03_not_null_column: a new NOT NULL column, backfilled, with no stall.

    from zdlab.exercises.nb03 import ex
    answer_steps = ["ALTER TABLE users ADD COLUMN status text", backfill, ...]
    ex.q1.check()

The checker seeds a sandbox of its own, runs the learner's steps under simulated application
traffic and then reads the result from the database: pg_attribute / pg_constraint for the
column, a count of rows that break the backfill rule, pg_class.relfilenode for a rewrite, and
the lock waits Postgres reported while the steps ran (zdlab.traffic's sampler).
"""

from __future__ import annotations

from typing import Any

import psycopg
from psycopg import sql

from .. import grader, statements
from ..checks import Exercise, Incorrect, Notebook, need_function, require_unnoticed
from ..errors import BadInput
from ..measure import Step, measure_in, plan_steps
from ..sandbox import Sandbox
from ..seed import seed

# The backfill rule of the exercise. Orders only ever get status 'new' from the simulated app,
# so the rule does not drift while traffic runs (a rule on "the last 30 days" would).
RULE_SQL = ("CASE WHEN EXISTS (SELECT 1 FROM orders o WHERE o.user_id = users.id "
            "AND o.status = 'delivered') THEN 'customer' ELSE 'prospect' END")

# 200k users: one UPDATE of every matching row holds its row locks for its whole run, which the
# judge sees as app writes waiting on it for most of its work; a 5,000-row batch holds its locks
# for a few ms. Seeding takes about 1.5 s.
CHECK_ROWS = 200_000
# A statement that changes more rows than this holds all their row locks until it commits: any app
# write to one of them waits for the whole statement, however short it was on this machine. The
# hint's batches are a few thousand rows. Counted by PostgreSQL (the statement's row count).
MAX_ROWS_AT_ONCE = 10_000
WORKERS = 4
SETTLE_S = 0.3  # baseline traffic before the steps and a tail after them
STEP_TIMEOUT = "60s"  # a runaway statement of the learner's must not hang the check


def normalise_steps(steps: Any) -> list[tuple[str, Step]]:
    """The runner's plan of ``answer_steps``; a malformed answer is ``Incorrect``, with why."""
    try:
        plan = plan_steps(steps, "answer_steps")
    except BadInput as exc:
        raise Incorrect(str(exc)) from None
    items = [steps] if isinstance(steps, str) or callable(steps) else steps
    for i, item in enumerate(items, 1):
        if isinstance(item, str):  # refused before anything runs (zdlab.grader); BEGIN/COMMIT allowed
            grader.vet(statements.split(item), f"step {i} of answer_steps", transactions=True)
        else:
            need_function(f"step {i} of answer_steps", item, "conn")
    return plan


def column_state(conn: psycopg.Connection, table: str, column: str) -> dict[str, Any] | None:
    """Type, NOT NULL flag and (PostgreSQL 18) whether the NOT NULL constraint is validated."""
    row = conn.execute(  # quote_ident: the table's name as given, not folded to lower case
        "SELECT format_type(a.atttypid, a.atttypmod), a.attnotnull, a.attnum FROM pg_attribute a "
        "WHERE a.attrelid = to_regclass(quote_ident(%s)) AND a.attname = %s AND a.attnum > 0 "
        "AND NOT a.attisdropped", [table, column]).fetchone()
    if row is None:
        return None
    type_, notnull, attnum = row
    # PostgreSQL 18 stores NOT NULL as a constraint (contype 'n'), which can be NOT VALID while
    # attnotnull is already true: only a validated one proves that no row holds a NULL.
    invalid = conn.execute(
        "SELECT count(*) FROM pg_constraint WHERE conrelid = to_regclass(quote_ident(%s)) AND contype = 'n' "
        "AND conkey = ARRAY[%s]::int2[] AND NOT convalidated", [table, attnum]).fetchone()[0]
    checks = [r[0] for r in conn.execute(
        "SELECT conname FROM pg_constraint WHERE conrelid = to_regclass(quote_ident(%s)) AND contype = 'c' "
        "AND %s = ANY(conkey) ORDER BY 1", [table, attnum])]
    return {"type": type_, "notnull": notnull and not invalid, "invalid_not_null": bool(invalid),
            "checks": checks}


class StatusColumn(Exercise):
    """users.status text NOT NULL, backfilled by the rule, with no stall under traffic."""

    answers = ("answer_steps",)
    hints = (
        "Two things can stall the application here: a DDL that holds AccessExclusiveLock for a long "
        "time (a rewrite, a scan), and one big UPDATE, which keeps the row lock of every row it "
        "changed until it commits. Section 1 shows which ADD COLUMN is instant.",
        "ADD COLUMN status text NOT NULL DEFAULT 'prospect' is instant (a constant default, no "
        "rewrite), and every user is then a 'prospect'. What is left is to set 'customer' where the "
        "rule says so, in batches: a step can be a Python function taking the connection that loops "
        "over users.id ranges of a few thousand ids, one UPDATE per range (the connection is in "
        "autocommit, so each UPDATE commits on its own), with a short pause between batches.",
        "answer_steps = [\"SET lock_timeout = '2s'\", \"ALTER TABLE users ADD COLUMN status text NOT NULL "
        "DEFAULT 'prospect'\", backfill_status] where backfill_status(conn) runs, for lo = 1, 5001, ..., "
        "\"UPDATE users SET status = 'customer' WHERE id BETWEEN lo AND lo + 4999 AND id IN (SELECT "
        "user_id FROM orders WHERE status = 'delivered' AND user_id BETWEEN lo AND lo + 4999)\".",
    )

    def _sandbox(self) -> Sandbox:
        # Its own schema: the check re-seeds it, and must not replace the notebook's 1M-row tables.
        return Sandbox(f"{self.notebook.name if self.notebook else 'nb03'}_{self.name}")

    def grade(self, box: Sandbox, answer_steps: Any) -> str:
        normalise_steps(answer_steps)  # a malformed answer is reported before anything runs
        box.reset()
        seed(box, CHECK_ROWS, progress=False)
        report = measure_in(box, answer_steps, workers=WORKERS, settle_s=SETTLE_S, statement_timeout=STEP_TIMEOUT,
                            connect=grader.connect)
        ran = [s for s in report.statements if not s["label"].startswith("ROLLBACK (")]  # not the runner's clean-up
        failed = next((i for i, s in enumerate(ran) if s["error"]), None)
        if failed is not None:
            raise Incorrect(f"step {failed + 1} ({ran[failed]['label']}) failed: {ran[failed]['error']}")
        with box.connect("check") as conn:
            state = column_state(conn, "users", "status")
            if state is None:
                raise Incorrect("users has no column status after your steps.")
            if state["type"] != "text":
                raise Incorrect(f"users.status is {state['type']}; make it text.")
            if state["invalid_not_null"]:
                raise Incorrect("users.status has a NOT NULL constraint that is still NOT VALID: "
                                "VALIDATE CONSTRAINT it.")
            if not state["notnull"]:
                raise Incorrect("users.status still accepts NULL (pg_attribute.attnotnull is false): "
                                "finish with ALTER COLUMN status SET NOT NULL.")
            rule = sql.SQL(RULE_SQL)
            total, wrong, example = conn.execute(sql.SQL(
                "SELECT count(*), count(*) FILTER (WHERE status IS DISTINCT FROM {rule}), "
                "min(id) FILTER (WHERE status IS DISTINCT FROM {rule}) FROM users").format(rule=rule)).fetchone()
            if wrong:
                got, want = conn.execute(sql.SQL("SELECT status, {} FROM users WHERE id = %s").format(rule),
                                         [example]).fetchone()
                raise Incorrect(f"{wrong:,} of {total:,} users have the wrong status, for example user "
                                f"{example} has {got!r} where the rule gives {want!r}.")
            if state["checks"]:
                raise Incorrect(f"the helper CHECK constraint {state['checks'][0]} is still on users: "
                                f"once SET NOT NULL is done it only costs time on every write; drop it.")
        if "users" in report.rewritten_tables:
            raise Incorrect("your steps rewrote the whole users table (pg_class.relfilenode changed): "
                            "a rewrite holds AccessExclusiveLock from start to end.")
        if report.failed_requests:
            err, n = max(report.failures_by_error.items(), key=lambda kv: kv[1])
            why = ""
            if "(23514)" in err:  # check_violation: the classic CHECK-before-backfill trap
                why = (" A NOT VALID CHECK skips the existing rows but checks every row an UPDATE "
                       "writes: the app's updates of users not backfilled yet break it. Backfill "
                       "before adding the CHECK, or give the new column a DEFAULT.")
            raise Incorrect(f"{report.failed_requests} application requests failed while your steps "
                            f"ran, {n} with {err}.{why}")
        big = [s for s in report.statements if (s.get("rows") or 0) > MAX_ROWS_AT_ONCE]
        if big:
            waited = sum(b["samples"] for b in report.blocking_chain if b["blocker"] == "migration")
            raise Incorrect(f"the application noticed your steps: `{big[0]['label']}` changed {big[0]['rows']:,} "
                            f"rows in one transaction and held every one's row lock until it committed, so any "
                            f"app write to those users waited for the whole statement ({waited} samples of app "
                            f"requests waiting on the migration in this run). Change them in batches of a few "
                            f"thousand rows, each committed.")
        measured = require_unnoticed(report)
        took = sum(s["duration_ms"] or 0 for s in report.statements) / 1000
        return (f"users.status is NOT NULL and all {total:,} users match the rule; your {len(ran)} steps "
                f"took {took:.1f} s under traffic: {measured}, with no rewrite and no failed request.")


ex = Notebook("03_not_null_column", q1=StatusColumn())
