"""Notebook 01_risks: the exercises on the five risks of a data migration (learntools-style).

The scenario helpers the notebook and these checks share live in the package: the email_domain
backfill (``zdlab.backfill``), a long transaction (``zdlab.longtx``), candidate migrations tried on
production-like data (``zdlab.attempts``), a table's checksum (``zdlab.fingerprint``). Learner
functions run under traffic through the kit's one runner, ``zdlab.measure.measure_in``.
"""

from __future__ import annotations

import time
from typing import Any

import psycopg
from psycopg import sql as pgsql

from .. import backfill, grader, statements
from ..attempts import PRODUCTION_ROWS, try_migrations
from ..checks import (
    Exercise,
    Incorrect,
    Notebook,
    call_learner,
    describe,
    learner_failure,
    learner_step,
    limit_learner_time,
    need_function,
    need_sql,
    require_unnoticed,
)
from ..customers import CONTRACT_SQL, CUSTOMERS_SQL, SPLIT_NAME_STEPS
from ..errors import first_line
from ..fingerprint import checksum
from ..longtx import LongTransaction
from ..measure import measure_in
from ..report import Report
from ..sandbox import Sandbox
from ..seed import ensure_seeded

USERS_ROWS = 200_000  # users rows the notebook seeds; checkers seed as many when the table is missing
ESTIMATE_ROWS = 100_000_000
ESTIMATE_TOLERANCE = 0.2  # the estimate may differ from the fit's prediction by 20%
BASELINE_S = 0.3  # traffic before and after the graded step, so its plot shows the contrast
BACKFILL_BATCH = 2_000  # risk 2: the batch size the check calls backfill_batched with

# Risk 4: all four pass on an empty database; production data is not what the seed script makes.
CANDIDATES = {
    "add_plan": "ALTER TABLE users ADD COLUMN plan text NOT NULL DEFAULT 'free'",
    "unique_email": "CREATE UNIQUE INDEX users_email_lower_key ON users (lower(email))",
    "name_length": "ALTER TABLE users ADD CONSTRAINT users_name_length CHECK (char_length(name) <= 100)",
    "status_check": ("ALTER TABLE orders ADD CONSTRAINT orders_status_check "
                     "CHECK (status IN ('new', 'paid', 'shipped', 'delivered'))"),
}


def _run_script(conn: psycopg.Connection, sql: str, what: str) -> None:
    """Run a migration script statement by statement inside the caller's transaction."""
    for stmt in statements.split(sql):
        if statements.is_begin(stmt) or statements.is_end(stmt):
            raise Incorrect(f"{what} contains {stmt.split()[0].upper()}: leave transaction control to the "
                            f"migration runner (the check runs up, down, up in one transaction it rolls back).")
        try:
            conn.execute(stmt)
        except psycopg.Error as exc:
            raise Incorrect(grader.explain(exc) or f"{what} failed: {first_line(exc)}") from None


def _ms(seconds: float) -> str:
    return f"{seconds * 1000:,.0f} ms"


class EstimateAt100M(Exercise):
    """How long the measured migration would take on 100 million rows, from the linear fit."""

    answers = ("estimate_100m_s",)
    hints = (
        "Fit a straight line through your measurements (rows, seconds) and read it at 100,000,000 rows. "
        "The answer is in seconds.",
        "np.polyfit(rows, seconds, 1) returns (slope, intercept); np.polyval(fit, 100_000_000) evaluates it.",
        "estimate_100m_s = float(np.polyval(np.polyfit(timings['rows'], timings['seconds'], 1), 100_000_000))",
    )

    def grade(self, box: Sandbox, estimate_100m_s: Any) -> str:
        import numpy as np

        try:
            estimate = float(estimate_100m_s)
        except (TypeError, ValueError):
            raise Incorrect(f"estimate_100m_s should be a number of seconds, not {describe(estimate_100m_s)}: "
                            f"give the estimate as a number.") from None
        if estimate != estimate or estimate in (float("inf"), float("-inf")):  # NaN or infinite
            raise Incorrect(f"estimate_100m_s is {estimate}: give a finite number of seconds.")
        with box.connect("check") as conn:
            if conn.execute("SELECT to_regclass('migration_timings')").fetchone()[0] is None:
                raise Incorrect("there are no measurements yet: run the timing cell above first (it fills "
                                "table migration_timings, which this check fits again).")
            rows = conn.execute("SELECT rows, seconds FROM migration_timings ORDER BY rows").fetchall()
        sizes = sorted({r for r, _ in rows})
        if len(sizes) < 3 or sizes[-1] < 10 * sizes[0]:
            raise Incorrect("migration_timings needs at least three sizes spanning 10x or more: run the "
                            "timing cell above again.")
        fit = np.polyfit([float(r) for r, _ in rows], [float(s) for _, s in rows], 1)
        expected = float(np.polyval(fit, ESTIMATE_ROWS))
        if expected <= 0:
            raise Incorrect("the measurements do not grow with the size (a noisy run): run the timing cell again.")
        if abs(estimate - expected) <= ESTIMATE_TOLERANCE * expected:
            return (f"the fit of your {len(rows)} measurements gives {expected:,.0f} s "
                    f"(~{expected / 60:,.1f} min) at 100M rows; your estimate is {estimate:,.0f} s. And that is "
                    f"a lower bound: a table larger than memory is slower per row.")
        for unit, factor in (("minutes", 60), ("hours", 3600), ("milliseconds", 0.001)):
            if abs(estimate * factor - expected) <= ESTIMATE_TOLERANCE * expected:
                raise Incorrect(f"{estimate:g} looks like {unit}: give the estimate in seconds.")
        raise Incorrect(f"the fit of the measurements in migration_timings gives about {expected:,.0f} s at "
                        f"100M rows; {estimate:,.0f} s is more than {ESTIMATE_TOLERANCE:.0%} away from it.")


class BatchedBackfill(Exercise):
    """backfill_batched(conn, batch_size): fill users.email_domain in short transactions."""

    answers = ("backfill_batched",)
    hints = (
        "Loop: each iteration updates the next batch_size rows by id, in its own transaction (autocommit "
        "does that: one statement, one transaction), then pauses a little so that waiting app requests "
        "get through. Stop when a batch updated nothing.",
        "Keyset pagination: remember the last id done and select the next batch with "
        "WHERE id > %s ORDER BY id LIMIT %s; RETURNING id tells you where the batch ended.",
        "WITH batch AS (SELECT id FROM users WHERE id > %s ORDER BY id LIMIT %s) "
        "UPDATE users u SET email_domain = split_part(u.email, '@', 2) FROM batch WHERE u.id = batch.id "
        "RETURNING u.id   -- then last = max of the returned ids; time.sleep(0.02) between batches",
    )

    last_report: Report | None = None  # the meter of the last graded run, for the notebook's plot

    def grade(self, box: Sandbox, backfill_batched: Any) -> str:
        need_function("backfill_batched", backfill_batched, "conn, batch_size")
        ensure_seeded(box, USERS_ROWS)
        with box.connect("check") as conn:
            backfill.reset_column(conn)
            total = conn.execute("SELECT count(*) FROM users").fetchone()[0]
        seen: dict[str, Any] = {}
        step = learner_step("backfill_batched", lambda mig: call_learner(
            "your backfill_batched", backfill_batched, mig, BACKFILL_BATCH), seen)
        report = self.last_report = measure_in(box, [step], settle_s=BASELINE_S)
        if "error" in seen:
            raise learner_failure(seen["error"], "your backfill failed: {}")
        if seen["left_open"]:
            raise Incorrect("your function left a transaction open: commit each batch (or use autocommit).")
        with box.connect("check") as conn:
            missing = backfill.unfilled_rows(conn)
        if missing:
            raise Incorrect(f"{missing:,} of {total:,} users still have no (or a wrong) email_domain: the loop "
                            f"must go on until a batch finds no row left.")
        try:
            measured = require_unnoticed(report, "your backfill")
        except Incorrect as exc:
            raise Incorrect(f"every row is filled, but {exc} Commit each batch, and pause between them.") from None
        took = report.statements[0]["duration_ms"] or 0.0
        return (f"all {total:,} rows filled in {took / 1000:,.1f} s under traffic; {measured}; "
                f"{report.requests:,} requests served.")


class LockTimeoutRetry(Exercise):
    """run_with_lock_timeout(conn, sql, timeout_ms, retries, backoff): fail fast, retry, succeed."""

    answers = ("run_with_lock_timeout",)
    hints = (
        "SET lock_timeout on the connection, then try the statement. On psycopg.errors.LockNotAvailable "
        "sleep and try again, longer each time; after the last retry, raise the error.",
        "conn.execute(\"SELECT set_config('lock_timeout', %s, false)\", [f'{timeout_ms}ms']) (SET takes no "
        "query parameter; set_config does); for attempt in range(retries + 1): try the statement and return; "
        "except LockNotAvailable: if it was the last attempt raise; else time.sleep(backoff * 2 ** attempt).",
        "Reset it at the end (RESET lock_timeout in a finally:), so the connection's later statements do "
        "not inherit it.",
    )
    hold_s = 1.5  # the long transaction's life once the ALTER queues behind it
    timeout_ms = 100
    retries = 10
    backoff = 0.2
    last_report: Report | None = None  # the meter of the last graded run under traffic

    def grade(self, box: Sandbox, run_with_lock_timeout: Any) -> str:
        need_function("run_with_lock_timeout", run_with_lock_timeout, "conn, sql, timeout_ms, retries, backoff")
        ensure_seeded(box, USERS_ROWS)
        column, alter = "lock_probe", "ALTER TABLE users ADD COLUMN lock_probe text"  # the function takes SQL
        with box.connect("check") as conn:
            conn.execute(pgsql.SQL("ALTER TABLE users DROP COLUMN IF EXISTS {}").format(pgsql.Identifier(column)))

        # 1. A lock that never comes free within the retries: the function must give up, with an error.
        with box.connect("migration") as mig, LongTransaction(box, "users", 60, mig.info.backend_pid) as lt:
            mig.execute("SET statement_timeout = '3s'")  # bounds a function that sets no lock_timeout
            start = time.monotonic()
            try:
                call_learner("your run_with_lock_timeout", run_with_lock_timeout, mig, alter, 50, 2, 0.05)
                raised = None
            except psycopg.errors.LockNotAvailable as exc:
                raised = exc
            except psycopg.errors.QueryCanceled:
                raise Incorrect("with a lock held all along, the ALTER waited until our 3 s statement_timeout "
                                "cancelled it: set lock_timeout to timeout_ms before running the statement."
                                ) from None
            except psycopg.Error as exc:
                raise Incorrect(f"with a lock held all along, your function failed with something other than "
                                f"LockNotAvailable: {first_line(exc)}") from None
            spent = time.monotonic() - start
            stuck = mig.info.transaction_status != psycopg.pq.TransactionStatus.IDLE
        if raised is None:
            raise Incorrect("with the lock held all along, your function returned as if the ALTER had run: "
                            "after the last retry, raise the LockNotAvailable error.")
        if stuck:
            raise Incorrect("your function left the connection inside a transaction after a failure.")
        if spent > 3:  # the statement_timeout this phase set: every wait should end long before it
            raise Incorrect(f"with timeout_ms=50, retries=2 and backoff=0.05 your function took {spent:.1f} s to "
                            f"give up, longer than the 3 s statement_timeout of this check: the lock wait "
                            f"should be bounded by lock_timeout.")
        gave_up_after = len(lt.waits)
        if not 2 <= gave_up_after <= 3:
            raise Incorrect(f"with retries=2 the ALTER should have queued 3 times (the first try and 2 retries); "
                            f"it queued {gave_up_after} time(s).")

        # 2. Under traffic, a long transaction that ends hold_s after the ALTER first queues.
        seen: dict[str, Any] = {}

        def behind_long_transaction(mig: psycopg.Connection) -> None:
            with LongTransaction(box, "users", self.hold_s, mig.info.backend_pid) as lt:
                call_learner("your run_with_lock_timeout", run_with_lock_timeout, mig, alter,
                             self.timeout_ms, self.retries, self.backoff)
                seen.update(done_at=time.monotonic(), released_at=lt.released_at, waits=list(lt.waits))

        step = learner_step("run_with_lock_timeout", behind_long_transaction, seen)
        # Each attempt may queue the app for up to timeout_ms: a bound the function chose.
        report = self.last_report = measure_in(box, [step], settle_s=BASELINE_S, statement_timeout="10s",
                                               allowed_ms=self.timeout_ms)
        if "error" in seen:
            raise learner_failure(seen["error"], f"the long transaction ended {self.hold_s} s after your first "
                                  f"attempt, yet your function failed: {{}}. Retry, with a growing pause, "
                                  f"{self.retries} times.")
        done_at, released_at, waits = seen["done_at"], seen["released_at"], seen["waits"]
        with box.connect("check") as conn:
            added = conn.execute("SELECT count(*) FROM pg_attribute WHERE attrelid = 'users'::regclass "
                                 "AND attname = %s AND NOT attisdropped", [column]).fetchone()[0]
        if not added:
            raise Incorrect("your function returned, but the column was not added: it must run the statement.")
        if released_at is None or done_at < released_at:
            raise Incorrect("the ALTER finished before the long transaction ended: that cannot be (check your test).")
        before = [w for w in waits if w[0] < released_at]
        if len(before) < 2:
            raise Incorrect(f"the ALTER queued {len(before)} time(s) while the lock was held: it should give up "
                            f"after timeout_ms and try again.")
        longest = max(e - s for s, e in before)
        if longest * 1000 > report.judgement.limit_ms:  # timeout_ms plus this run's noise
            raise Incorrect(f"one attempt waited {_ms(longest)} for the lock: set lock_timeout to timeout_ms "
                            f"({self.timeout_ms} ms) before running the statement.")
        if report.verdict in ("blocking", "breaking"):
            raise Incorrect(f"the ALTER got through, but {report.judgement.reasons[0]}.")
        return (f"with the lock held, your function gave up after {gave_up_after} queued attempts; "
                f"under traffic it queued {len(before)} times (longest wait {_ms(longest)}) while the long "
                f"transaction lived, then added the column {_ms(done_at - released_at)} after it ended. "
                f"Longest app stall: {report.judgement.stall_ms:,.0f} ms, within timeout_ms plus this run's noise "
                f"({report.judgement.limit_ms:,.0f} ms).")


class FailsInProduction(Exercise):
    """Which candidate migration fails on production data (it passes on an empty database)."""

    answers = ("fails_in_production",)
    hints = (
        "All four pass on an empty development database. Try each on data like production's: the "
        "sandbox's users after the drift above, in a transaction you roll back.",
        "try_migrations(sb, CANDIDATES) runs each one on the sandbox's data and rolls back. Or look at the "
        "data: which constraint or unique index would the drift break?",
        "A unique index over lower(email) meets the accounts re-created with the e-mail in capitals.",
    )

    def grade(self, box: Sandbox, fails_in_production: Any) -> str:
        if not isinstance(fails_in_production, str) or fails_in_production not in CANDIDATES:
            raise Incorrect(f"fails_in_production should be the name of one candidate, as a string: "
                            f"{', '.join(CANDIDATES)}; not {describe(fails_in_production)}.")
        dev = try_migrations(box, CANDIDATES, "empty")
        broken = [a.name for a in dev if not a.ok]
        if broken:  # the exercise's premise; the checker's own bug if it does not hold
            raise Incorrect(f"could not check: {', '.join(broken)} failed on the empty database too.")
        prod = {a.name: a for a in try_migrations(box, CANDIDATES, "production")}
        failing = [name for name, a in prod.items() if not a.ok]
        if fails_in_production not in failing:
            raise Incorrect(f"{fails_in_production} ran fine on a production-like copy "
                            f"({prod[fails_in_production].ms:,.0f} ms). Another one fails there.")
        a = prod[fails_in_production]
        return (f"{fails_in_production} passes on an empty database and fails on a production-like copy "
                f"({PRODUCTION_ROWS:,} users plus the drift): {a.error}")


class DownMigration(Exercise):
    """down_sql: the down of the contract step (DROP COLUMN name), run after expand and backfill."""

    answers = ("down_sql",)
    hints = (
        "The down of the contract must give customers back exactly as it was before the drop: the name "
        "column with the very same values (NULLs and one-word names included). first_name and last_name "
        "stay: expand and backfill are still applied.",
        "Add name back and fill it from first_name and last_name. Mind NULL: "
        "'Cher' || ' ' || NULL is NULL, and concat_ws(' ', NULL, NULL) is '' (not NULL).",
        "name = CASE WHEN last_name IS NULL THEN first_name ELSE first_name || ' ' || last_name END",
    )
    rows = 10_000

    def grade(self, box: Sandbox, down_sql: Any) -> str:
        grader.vet(need_sql("down_sql", down_sql, "SQL statements (the down of the contract step)"), "down_sql")
        # A schema of our own beside the sandbox, owned by the learner's role, dropped at the end;
        # inside it one transaction, rolled back: the sandbox is not touched.
        copy = Sandbox(f"{box.name} down", box.url).reset()
        try:
            return self._grade(copy, down_sql)
        finally:
            copy.drop()

    def _grade(self, box: Sandbox, down_sql: str) -> str:
        with grader.connect(box, "check", autocommit=False) as conn:
            limit_learner_time(conn)
            conn.execute(CUSTOMERS_SQL.format(rows=self.rows))
            _run_script(conn, SPLIT_NAME_STEPS["1 expand"], "expand")
            _run_script(conn, SPLIT_NAME_STEPS["2 backfill"], "backfill")
            before = checksum(conn)
            _run_script(conn, CONTRACT_SQL, "contract")
            after_up = checksum(conn)
            _run_script(conn, down_sql, "your down")
            after_down = checksum(conn)
            _run_script(conn, CONTRACT_SQL, "contract, run again after your down,")
            after_up2 = checksum(conn)
            conn.rollback()
        if after_down[2] != before[2]:  # the columns: (name, type) pairs
            raise Incorrect(f"after down the columns are {', '.join(map(' '.join, after_down[2]))}; before the "
                            f"contract they were {', '.join(map(' '.join, before[2]))}.")
        if after_down[:2] != before[:2]:
            raise Incorrect(f"after down the table has the columns back ({before[0]:,} rows before, "
                            f"{after_down[0]:,} after) but not the same values: checksum {after_down[1][:8]} "
                            f"instead of {before[1][:8]}. Look at NULL names and one-word names.")
        if after_up2 != after_up:
            raise Incorrect("the contract after your down does not give the same table as the first time.")
        return (f"contract, down, contract on {before[0]:,} rows: down gives back checksum {before[1][:8]} "
                f"(identical to before the contract) and the second contract gives {after_up2[1][:8]} "
                f"(identical to the first).")


ex = Notebook("01_risks", q1=EstimateAt100M(), q2=BatchedBackfill(), q3=LockTimeoutRetry(),
              q4=FailsInProduction(), q5=DownMigration())

