"""Exercises of notebook 06_rollouts: fix forward, not revert.

    from zdlab.exercises.nb06 import ex
    answer_fix_sql = "ALTER TABLE users ..."      # the forward migration
    ex.q1.check()

Release 2's expand step is deployed, and wrong: its CHECK on ``users.plan`` forgot the
``'team'`` plan that v2 sells, so v2's upgrades fail while v1 and v2 both run. The checker
seeds a sandbox of its own, applies that expand with the kit's ``Migrator``, and runs, under
traffic from both versions (``measure_in``): the broken state, the learner's forward migration,
a check of the constraint, then the revert (the expand's down) to show what it would have done.
"""

from __future__ import annotations

import re
import time
from typing import Any

import psycopg

from .. import grader, statements
from ..checks import CouldNotCheck, Exercise, Incorrect, Notebook, need_sql
from ..measure import measure_in
from ..migrate import Migration, Migrator
from ..report import Report
from ..rollout import EXPAND, PLAN_CHECK, RELEASE_2, V1, V2, prepare_release_1
from ..sandbox import Sandbox
from ..seed import seed

CHECK_ROWS = 100_000
SETTLE_S = 0.4
WINDOW_S = 0.6  # traffic after the fix and after the revert: each version serves a few hundred requests
STEP_TIMEOUT = "30s"
WRONG_CHECK = "CHECK (plan IN ('free', 'pro'))"
WRONG_EXPAND = Migration(2, "plans", EXPAND.up.replace(PLAN_CHECK, WRONG_CHECK), EXPAND.down)
# The expand's down, shown after the fix; IF EXISTS: a wrong answer may have dropped the column already.
REVERT_SQL = "ALTER TABLE users DROP COLUMN IF EXISTS plan"
SCANS = ("rewriting table", "verifying table")  # the server's DEBUG1 words for a scan under ALTER TABLE's lock

_VALIDATE = re.compile(r"^ALTER\s+TABLE\s+(ONLY\s+)?\S+\s+VALIDATE\s+CONSTRAINT\s+\S+$", re.I | re.S)
_CHECK_SQL = """
SELECT c.conname, pg_get_constraintdef(c.oid), c.convalidated
FROM pg_constraint c JOIN pg_attribute a ON a.attrelid = c.conrelid AND a.attnum = ANY(c.conkey)
WHERE c.conrelid = 'users'::regclass AND c.contype = 'c' AND a.attname = 'plan'
"""


def deploy_wrong_expand(box: Sandbox, rows: int = CHECK_ROWS) -> None:
    """A fresh sandbox as production is now: release 1, then release 2's wrong expand applied."""
    box.reset()
    seed(box, rows, progress=False)
    prepare_release_1(box)
    with box.connect("setup") as conn:
        Migrator(conn, [*RELEASE_2[:1], WRONG_EXPAND]).up()


class Statement:
    """One statement of the learner's migration, as a ``measure_in`` step that keeps what the
    server said while it ran (DEBUG1: a table rewritten or scanned under ALTER TABLE's lock)."""

    def __init__(self, sql: str) -> None:
        self.sql = sql
        self.__name__ = statements.short_sql(statements._bare(sql))
        # VALIDATE CONSTRAINT scans too, under ShareUpdateExclusiveLock: the app reads and writes on
        self.validates = bool(_VALIDATE.match(statements._bare(sql)))
        self.said: list[str] = []

    def __call__(self, conn: psycopg.Connection) -> None:
        said: list[str] = []

        def hear(diag: psycopg.errors.Diagnostic) -> None:
            said.append(diag.message_primary or "")

        conn.add_notice_handler(hear)
        try:
            conn.execute(self.sql, prepare=False)
        finally:
            conn.remove_notice_handler(hear)
            self.said = said


class Probe:
    """After the fix: the constraints on ``users.plan``, and whether the plan values are checked."""

    __name__ = "check users.plan"

    def __init__(self) -> None:
        self.checks: list[tuple[str, str, bool]] = []
        self.accepts: dict[str, bool] = {}

    def __call__(self, conn: psycopg.Connection) -> None:
        self.checks = conn.execute(_CHECK_SQL).fetchall()
        for value in ("team", "gold"):
            try:
                with conn.transaction(force_rollback=True):
                    conn.execute("UPDATE users SET plan = %s WHERE id = (SELECT min(id) FROM users)", [value])
                self.accepts[value] = True
            except psycopg.errors.CheckViolation:
                self.accepts[value] = False
            except psycopg.errors.UndefinedColumn:  # the answer dropped the column: judged by v2's failures
                return


def _let_both_run(conn: psycopg.Connection) -> None:
    time.sleep(WINDOW_S)


_let_both_run.__name__ = "v1 and v2 serve"


def _debug_connect(box: Sandbox, role: str) -> psycopg.Connection:
    conn = grader.connect(box, role)
    conn.execute("SET client_min_messages = debug1")  # the server reports a rewrite or a scan
    return conn


def run_fix(box: Sandbox, fix_sql: str) -> tuple[Report, list[Statement], Probe]:
    """Under traffic from v1 and v2 (2 pods each): the fix, a probe, then the revert."""
    fix = [Statement(s) for s in statements.split(fix_sql)]
    probe = Probe()
    steps = [*fix, _let_both_run, probe, REVERT_SQL, _let_both_run]
    report = measure_in(box, steps, apps=[V1, V2], settle_s=SETTLE_S, statement_timeout=STEP_TIMEOUT,
                        connect=_debug_connect)
    return report, fix, probe


def window(report: Report, start: float, end: float = float("inf")) -> dict[str, tuple[int, int, str | None]]:
    """Per version: requests, failed, and the most common error among requests returning in [start, end)."""
    out: dict[str, list] = {}
    for r in report.timeline.requests:
        if start <= r.end < end:
            n, failed, errors = out.setdefault(r.app, [0, 0, {}])
            out[r.app][0], out[r.app][1] = n + 1, failed + bool(r.error)
            if r.error:
                errors[r.error] = errors.get(r.error, 0) + 1
    return {app: (n, f, max(e, key=e.get) if e else None) for app, (n, f, e) in out.items()}


class FixForward(Exercise):
    """The forward migration for a wrong CHECK, graded under traffic from both versions."""

    answers = ("answer_fix_sql",)
    hints = (
        "Do not run the expand's down: v2 reads and writes users.plan on two of the four pods, and dropping the "
        "column breaks every one of its requests. Change only what is wrong: the CHECK constraint on plan, which "
        "must accept 'free', 'pro' and 'team'.",
        "Replace the constraint in two steps: drop the old one and add the new one NOT VALID (one ALTER TABLE "
        "can do both; NOT VALID skips the scan of the existing rows, so it holds its lock for a moment), then "
        "VALIDATE CONSTRAINT in its own statement (it scans under a lock that lets the app read and write).",
        "ALTER TABLE users DROP CONSTRAINT users_plan_check, ADD CONSTRAINT users_plan_check "
        "CHECK (plan IN ('free', 'pro', 'team')) NOT VALID;  then  "
        "ALTER TABLE users VALIDATE CONSTRAINT users_plan_check;  (a SET lock_timeout first does no harm).",
    )

    def __init__(self) -> None:
        super().__init__()
        self.last_report: Report | None = None

    def _sandbox(self) -> Sandbox:
        return Sandbox(f"{self.notebook.name if self.notebook else 'nb06'}_{self.name}")

    def grade(self, box: Sandbox, answer_fix_sql: Any) -> str:
        grader.vet(need_sql("answer_fix_sql", answer_fix_sql, "SQL statements (the forward migration)"),
                   "answer_fix_sql", transactions=True)
        deploy_wrong_expand(box)
        report, fix, probe = run_fix(box, answer_fix_sql)
        self.last_report = report
        return judge_fix(report, fix, probe)


def judge_fix(report: Report, fix: list[Statement], probe: Probe) -> str:
    """The verdict on one run of ``run_fix``; raises ``Incorrect`` with what was measured."""
    spans = report.timeline.spans
    failed = next((s for s in spans if s.error), None)
    if failed is not None and spans.index(failed) < len(fix):
        raise Incorrect(f"your statement `{failed.label.removesuffix('(conn)')}` failed: {failed.error}.")
    fix_start, fix_end = spans[0].start, spans[len(fix) - 1].end or 0.0
    revert = spans[len(fix) + 2] if len(spans) > len(fix) + 2 else None
    before = window(report, 0, fix_start)
    after = window(report, fix_end, revert.start if revert else float("inf"))
    broken = before.get("v2", (0, 0, None))
    for app in ("v2", "v1"):
        n, bad, error = after.get(app, (0, 0, None))
        if bad:
            why = (" That is what a revert does: v2 still runs and reads users.plan." if error and "42703" in error
                   else "")
            raise Incorrect(f"after your migration {bad:,} of {n:,} {app} requests failed, most with {error}.{why}")
        if not n:
            raise CouldNotCheck(f"no {app} request completed after your migration: run the check again.")
    if revert is None or failed is not None or len(spans) < len(fix) + 4:
        raise CouldNotCheck(f"the check's own steps did not run: {failed.error if failed else 'missing'}.")
    reverted = window(report, revert.end or 0.0)
    for step in fix:
        scanned = [m for m in step.said if m.startswith(SCANS)]
        if scanned and not step.validates:
            raise Incorrect(f"`{step.__name__}` made the server say \"{scanned[0]}\": it read every row of users "
                            f"while holding ALTER TABLE's lock, which blocks every read and write of the table for "
                            f"as long as the scan runs, longer on a bigger table. Add the constraint NOT VALID, "
                            f"then VALIDATE CONSTRAINT in a statement of its own.")
    for span in spans[:len(fix)]:
        during = report.during(span)
        if during["blocked"]:
            raise Incorrect(f"the application noticed `{span.label.removesuffix('(conn)')}`: app requests waited "
                            f"{during['stall_ms']:,.0f} ms on it, against this run's noise of "
                            f"{during['limit_ms']:,.0f} ms.")
    if not probe.checks:
        raise Incorrect("users.plan has no CHECK constraint any more: 'gold' (or any typo) would now be stored. "
                        "Keep a constraint; make it accept 'team'.")
    if not all(valid for _, _, valid in probe.checks):
        name = next(n for n, _, valid in probe.checks if not valid)
        raise Incorrect(f"the constraint {name} is still NOT VALID: finish with ALTER TABLE users VALIDATE "
                        f"CONSTRAINT {name}, in a statement of its own.")
    if not probe.accepts.get("team") or probe.accepts.get("gold"):
        raise Incorrect(f"the CHECK on users.plan should accept 'team' and refuse 'gold'; it "
                        f"{'accepts' if probe.accepts.get('team') else 'refuses'} 'team' and "
                        f"{'accepts' if probe.accepts.get('gold') else 'refuses'} 'gold'.")
    n2, bad2, error2 = reverted.get("v2", (0, 0, None))
    n1, bad1, _ = reverted.get("v1", (0, 0, None))
    if not bad2:
        raise CouldNotCheck("the revert shown after your fix did not break v2 in this run: run the check again.")
    return (f"before your migration {broken[1]:,} of {broken[0]:,} v2 requests failed ({broken[2]}); after it, "
            f"{after['v1'][0]:,} v1 and {after['v2'][0]:,} v2 requests, none failed, and no statement made the app "
            f"wait longer than this run's noise. Reverting instead (the expand's down, DROP COLUMN plan) was measured "
            f"too: {bad2:,} of {n2:,} v2 requests failed ({error2}) while v1 served {n1:,} with {bad1} failures: "
            f"the version still running is the one a revert breaks.")


ex = Notebook("06_rollouts", q1=FixForward())
