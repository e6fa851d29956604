"""Notebook 04_capstone: a live migration of orders.amount_cents (integer -> bigint) under a rolling deploy.

The scenario (both application versions, the naive migration) lives here because the notebook
and the checker run the very same code. The checker runs the learner's plan, step by step, on
a fresh sandbox of its own under traffic from both versions, and scores it with
``zdlab.scoreboard.Scoreboard``.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

import psycopg

from .. import grader, statements
from ..checks import Exercise, Incorrect, Notebook, describe, need_function
from ..sandbox import Sandbox
from ..scoreboard import Action, Scoreboard, deploy, in_batches
from ..seed import seed
from ..traffic import AppVersion, RequestContext

__all__ = ["V1", "V2", "APP_SQL", "NAIVE_SQL", "PLAN_ROWS", "run_plan", "deploy", "in_batches", "ex"]

PLAN_ROWS = 200_000  # the plan run: enough for a one-statement backfill to stall for a second

# The application's SQL, per version. v2 differs in one line: it reads the amount as a bigint,
# whatever the column's type is today, so it works before AND after the migration.
APP_SQL = {
    "v1": {
        "read_orders": "SELECT id, amount_cents, status FROM orders WHERE user_id = %s ORDER BY id DESC LIMIT 5",
        "place_order": "INSERT INTO orders (id, user_id, amount_cents) VALUES (%s, %s, %s)",
        "pay_order": "UPDATE orders SET status = 'paid' WHERE id = %s",
    },
    "v2": {
        "read_orders": ("SELECT id, amount_cents::bigint AS amount_cents, status FROM orders "
                        "WHERE user_id = %s ORDER BY id DESC LIMIT 5"),
        "place_order": "INSERT INTO orders (id, user_id, amount_cents) VALUES (%s, %s, %s)",
        "pay_order": "UPDATE orders SET status = 'paid' WHERE id = %s",
    },
}

NAIVE_SQL = "ALTER TABLE orders ALTER COLUMN amount_cents TYPE bigint"


def _version(name: str) -> AppVersion:
    sql = APP_SQL[name]

    def read_orders(conn: psycopg.Connection, ctx: RequestContext) -> None:
        conn.execute(sql["read_orders"], [ctx.user_id]).fetchall()

    def place_order(conn: psycopg.Connection, ctx: RequestContext) -> None:
        conn.execute(sql["place_order"], [ctx.next_order_id(), ctx.user_id, ctx.rng.randint(100, 99_999)])

    def pay_order(conn: psycopg.Connection, ctx: RequestContext) -> None:
        # Seeded orders and users share ids 1..N, so a random user id is a random existing order.
        conn.execute(sql["pay_order"], [ctx.user_id])

    return AppVersion(name, {"read_orders": read_orders, "place_order": place_order, "pay_order": pay_order})


V1 = _version("v1")
V2 = _version("v2")


def run_plan(box: Sandbox, plan: list, *, rows: int = PLAN_ROWS, echo: bool = True) -> Scoreboard:
    """Seed ``box`` afresh, start v1 and v2 side by side (2 pods each), run ``plan`` step by step.

    Stops at the first step that fails (the later ones would build on it). The schema is left
    as the plan made it.
    """
    steps = _steps(plan)
    seed(box, rows, progress=False)
    board = Scoreboard(box, apps=[V1, V2], echo=echo)
    with board:
        for label, action in steps:
            if board.step(label, action).error:
                break
    return board


def _steps(plan: Any) -> list[tuple[str, Any]]:
    """The plan as (label, action) pairs, or Incorrect saying what shape is expected."""
    shape = ('a list of steps, each a pair ("label", action), where the action is SQL text, '
             'in_batches("UPDATE ... %(lo)s ... %(hi)s") or deploy(V2)')
    if isinstance(plan, str) or not isinstance(plan, list | tuple) or not plan:
        raise Incorrect(f"answer_plan should be {shape}; not {describe(plan)}.")
    out = []
    for i, step in enumerate(plan, 1):
        if not (isinstance(step, list | tuple) and len(step) == 2 and isinstance(step[0], str)):
            raise Incorrect(f"step {i} of answer_plan should be a pair (\"label\", action); it is {step!r:.80}. "
                            f"The plan is {shape}.")
        if not isinstance(step[1], str | Action) and not callable(step[1]):
            raise Incorrect(f"step {i} ({step[0]}): the action should be SQL text, in_batches(...) or deploy(...).")
        if isinstance(step[1], str):
            grader.vet(statements.split(step[1]), f"step {i} ({step[0]}) of answer_plan", transactions=True)
        if callable(step[1]) and not isinstance(step[1], Action):  # the board calls it with its connection
            need_function(f"step {i} ({step[0]})", step[1], "conn")
        out.append((step[0], step[1]))
    return out


def _final_state(box: Sandbox) -> tuple[dict[str, tuple[str, bool]], list[str]]:
    """orders' columns (name -> (type, not null)) and its user triggers, from the catalog."""
    with box.connect("check") as conn:
        cols = conn.execute(
            "SELECT attname, format_type(atttypid, atttypmod), attnotnull FROM pg_attribute "
            "WHERE attrelid = 'orders'::regclass AND attnum > 0 AND NOT attisdropped ORDER BY attnum").fetchall()
        triggers = conn.execute("SELECT tgname FROM pg_trigger WHERE tgrelid = 'orders'::regclass "
                                "AND NOT tgisinternal ORDER BY 1").fetchall()
    return {c: (t, nn) for c, t, nn in cols}, [t for (t,) in triggers]


SEEDED_COLUMNS = ("id", "user_id", "amount_cents", "status", "created_at")


class LiveMigration(Exercise):
    """The whole migration, as a plan of steps, scored under rolling-deploy traffic."""

    answers = ("answer_plan",)
    hints = (
        "Never change the type of the column the running code reads. Expand, then contract: add a NEW "
        "bigint column beside amount_cents, keep it filled on every write, fill the old rows, swap the "
        "names in one short transaction, then remove what is left. Compare the two versions' read "
        "queries: which one still works once amount_cents is a bigint? Every pod must run that one "
        "before the swap.",
        "The steps, in order: ADD COLUMN amount_cents_big bigint (nullable, no default: instant) -> a "
        "BEFORE INSERT OR UPDATE trigger that sets NEW.amount_cents_big := NEW.amount_cents -> "
        "in_batches(\"UPDATE orders SET amount_cents_big = amount_cents WHERE id BETWEEN %(lo)s AND "
        "%(hi)s\", 500) -> ADD CONSTRAINT ... CHECK (amount_cents_big IS NOT NULL) NOT VALID -> VALIDATE "
        "CONSTRAINT -> SET NOT NULL (no scan thanks to the CHECK) and drop the CHECK -> deploy(V2) -> "
        "the swap -> drop the old column and the trigger function. Every DDL step gets "
        "SET lock_timeout (the board retries a step that hits it).",
        "The swap, in one transaction: BEGIN; SET LOCAL lock_timeout = '100ms'; "
        "ALTER TABLE orders RENAME COLUMN amount_cents TO amount_cents_old; "
        "ALTER TABLE orders RENAME COLUMN amount_cents_big TO amount_cents; "
        "DROP TRIGGER <your trigger> ON orders;  -- it names a column that no longer exists "
        "ALTER TABLE orders ALTER COLUMN amount_cents_old DROP NOT NULL;  -- new rows leave it empty "
        "COMMIT; then, as its own step: ALTER TABLE orders DROP COLUMN amount_cents_old; "
        "DROP FUNCTION <your function>(). The plan is a list: [(\"add column\", \"ALTER TABLE ...\"), "
        "(\"backfill\", in_batches(...)), (\"roll out v2\", deploy(V2)), ...].",
    )

    def __init__(self) -> None:
        super().__init__()
        self.last_board: Scoreboard | None = None  # the last run, for a plot

    def grade(self, box: Sandbox, answer_plan: Any) -> str:
        steps = _steps(answer_plan)
        plan_box = Sandbox(f"{box.name}_plan", box.url)  # fresh, and the notebook's own tables stay as they are
        plan_box.reset()
        try:
            print(f"Running your plan ({len(steps)} steps) on a fresh sandbox ({PLAN_ROWS:,} orders) "
                  f"under traffic from v1 and v2 (2 pods each):")
            board = run_plan(plan_box, steps)
            self.last_board = board
            cols, triggers = _final_state(plan_box)
        finally:
            plan_box.drop()
        return self._judge(board, cols, triggers)

    def _judge(self, board: Scoreboard, cols: dict[str, tuple[str, bool]], triggers: list[str]) -> str:
        failed_step = next((s for s in board.steps if s.error), None)
        if failed_step:
            raise Incorrect(f"step {failed_step.number} ({failed_step.label}) failed: {failed_step.error}. "
                            f"The steps after it were not run.")
        if board.failed_requests:
            by_step = ", ".join(f"step {s.number} ({s.label}): {s.failed}" for s in board.steps if s.failed)
            (app, err), n = board.failures.most_common(1)[0]
            raise Incorrect(f"{board.failed_requests} application requests failed ({by_step}); most: "
                            f"{n} x {app}: {err}.")
        blocking = [s for s in board.steps if "BLOCKING" in s.verdict]
        if blocking:
            worst = max(blocking, key=lambda s: s.longest_stall_ms)
            held = worst.held or {}
            whole = (f", and its lock kept app requests waiting for {held['coverage']:.0%} of its work"
                     if held.get("coverage", 0) >= 0.5 else "")
            raise Incorrect(f"step {worst.number} ({worst.label}) made the application wait on a lock for "
                            f"{worst.longest_stall_ms:,.0f} ms in one stretch, against this run's noise of "
                            f"{worst.noise_ms:,.0f} ms{whole}.")
        if not board.data_identical:
            raise Incorrect(f"the data changed: {board.data_line()}")
        amount = cols.get("amount_cents")
        if amount is None or amount[0] != "bigint" or not amount[1]:
            what = ("does not exist" if amount is None
                    else f"is {amount[0]}{' NOT NULL' if amount[1] else ' (nullable)'}")
            raise Incorrect(f"no harm done so far, but the migration is not done: orders.amount_cents {what}; "
                            f"it should be bigint NOT NULL.")
        extra = [c for c in cols if c not in SEEDED_COLUMNS]
        if extra or triggers:
            left = ", ".join([f"column {c}" for c in extra] + [f"trigger {t}" for t in triggers])
            raise Incorrect(f"the migration works but is not finished: drop what it no longer needs ({left}).")
        counts = Counter(r.app for r in board.traffic.requests)
        return (f"amount_cents is bigint NOT NULL; {sum(counts.values()):,} requests "
                f"({', '.join(f'{a}: {n:,}' for a, n in sorted(counts.items()))}), none failed; longest stall "
                f"{board.longest_stall_ms:,.0f} ms (this run's noise: {board.noise_ms:,.0f} ms); "
                f"the {board.before.rows:,} orders that existed before are "
                f"identical (checksum) and all {board.inserts_ok:,} orders the app placed are there.")


ex = Notebook("04_capstone", q1=LiveMigration())
