"""The scoreboard: per-step windows, errors recorded not raised, retries on lock_timeout, deploys."""

from __future__ import annotations

import threading
import time

import pytest
from psycopg.pq import TransactionStatus

from zdlab import grader
from zdlab.scoreboard import Scoreboard, StepError, deploy, in_batches
from zdlab.seed import seed
from zdlab.traffic import AppVersion


def _app(name: str, read_sql: str) -> AppVersion:
    def read(conn, ctx):
        conn.execute(read_sql, [ctx.user_id]).fetchall()

    def insert(conn, ctx):
        conn.execute("INSERT INTO orders (id, user_id, amount_cents) VALUES (%s, %s, 5)",
                     [ctx.next_order_id(), ctx.user_id])

    return AppVersion(name, {"read": read, "place_order": insert})


OLD = _app("old", "SELECT id, amount_cents FROM orders WHERE user_id = %s")
NEW = _app("new", "SELECT id, amount_cents::bigint FROM orders WHERE user_id = %s")


@pytest.fixture
def box(make_sandbox):
    b = make_sandbox("board")
    seed(b, rows=5000, progress=False)
    return b


def test_steps_are_scored_and_errors_recorded(box):
    with Scoreboard(box, apps=[OLD, NEW], settle_s=0.2, echo=False) as board:
        ok = board.step("add column", "ALTER TABLE orders ADD COLUMN note text")
        bad = board.step("half a transaction", "BEGIN; ALTER TABLE orders ADD COLUMN note text; COMMIT")
        fill = board.step("backfill", in_batches("UPDATE orders SET note = 'x' WHERE id BETWEEN %(lo)s AND %(hi)s",
                                                 1000))
        board.step("change an amount", "UPDATE orders SET amount_cents = amount_cents + 1 WHERE id = 1")
        assert board._conn.info.transaction_status == TransactionStatus.IDLE  # the failed block was rolled back
    assert ok.error is None and ok.verdict == "ok" and ok.data == "ok" and not ok.rewritten
    assert bad.error and "already exists" in bad.error and bad.verdict == "ERROR"
    assert "batches of 1,000" in fill.note and int(fill.note.split()[0]) >= 5
    assert board.steps[-1].data == "checksum differs" and not board.data_identical
    assert board.inserted_rows == board.inserts_ok > 0
    assert board.report().verdict == "failed"


def test_a_type_change_is_scored_as_a_rewrite_that_breaks_old_code(box):
    with Scoreboard(box, apps=[OLD, NEW], settle_s=0.2, echo=False) as board:
        step = board.step("alter type", "ALTER TABLE orders ALTER COLUMN amount_cents TYPE bigint")
    assert step.rewritten
    assert step.failures and {app for app, _ in step.failures} == {"old"}
    assert all("cached plan must not change result type" in err for _, err in step.failures)
    assert board.data_identical  # a rewrite keeps the data


def test_a_step_that_hits_its_lock_timeout_is_retried(box):
    # The board's statements run as the checker's role (zdlab.grader), which first takes over the
    # sandbox's tables: done here before the lock is held, as a notebook's earlier cells would have.
    grader.connect(box, "migration").close()
    holder = box.connect("holder", autocommit=False)
    try:
        holder.execute("SELECT 1 FROM orders LIMIT 1")  # AccessShareLock until rollback
        with Scoreboard(box, apps=[NEW], settle_s=0.2, echo=False) as board:
            def release() -> None:
                deadline = time.monotonic() + 10
                while board._retry_count < 1 and time.monotonic() < deadline:
                    time.sleep(0.005)
                holder.rollback()

            releaser = threading.Thread(target=release)
            releaser.start()
            step = board.step("add column", "SET lock_timeout = '20ms'; ALTER TABLE orders ADD COLUMN c int")
            releaser.join()
        assert step.error is None and step.retries >= 1
    finally:
        holder.close()


def test_deploy_switches_every_pod_before_it_returns(box):
    with Scoreboard(box, apps=[OLD, NEW], settle_s=0.2, echo=False) as board:
        step = board.step("deploy", deploy(NEW))
        after = board.traffic.now()
        board.step("wait", "SELECT 1")
    assert step.note == "pods: new, new, new, new"
    assert not [r for r in board.traffic.requests if r.app == "old" and r.start >= after]


def test_bad_actions_are_refused():
    with pytest.raises(StepError):
        in_batches("UPDATE orders SET a = 1")
    with pytest.raises(StepError):
        deploy("v2")


def test_a_step_function_that_raises_is_an_error_not_a_crash(box):
    def broken(conn):
        raise ValueError("oops")

    with Scoreboard(box, apps=[NEW], settle_s=0.2, echo=False) as board:
        step = board.step("python step", broken)
        after = board.step("next", "SELECT 1")
    assert step.error == "ValueError: oops" and after.error is None
