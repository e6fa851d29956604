"""Notebook 04's checker: the worked plan passes, careless plans fail, no plan is 'not attempted'.

The worked plan is read from the solution notebook itself (one source), then run by the checker
on a throwaway sandbox under rolling-deploy traffic.
"""

from __future__ import annotations

import pytest

from zdlab.checks import solution_code
from zdlab.exercises import nb04
from zdlab.exercises.nb04 import NAIVE_SQL, ex


def worked_plan() -> list:
    code = solution_code(ex.solutions_path(), "answer_plan")
    assert code, "the solution notebook has no answer_plan between the solution markers"
    namespace = {"V1": nb04.V1, "V2": nb04.V2, "deploy": nb04.deploy, "in_batches": nb04.in_batches,
                 "NAIVE_SQL": NAIVE_SQL}
    exec(code, namespace)
    return namespace["answer_plan"]


def test_the_worked_plan_is_correct(make_sandbox):
    box = make_sandbox("nb04")
    result = ex.q1.evaluate(answer_plan=worked_plan(), sandbox=box)
    assert result.status == "correct", result.text()
    board = ex.q1.last_board
    assert board.failed_requests == 0 and not any("BLOCKING" in s.verdict for s in board.steps)
    assert board.data_identical and board.inserts_ok > 0
    assert {r.app for r in board.traffic.requests} == {"v1", "v2"}
    assert board.traffic.versions() == ["v2"] * 4
    assert not any(s.rewritten for s in board.steps)


def test_a_swap_while_v1_still_runs_is_incorrect(make_sandbox):
    """Lock-safe but not app-safe: v1's prepared reads fail once amount_cents changes type."""
    box = make_sandbox("nb04")
    plan = [
        ("add column", "ALTER TABLE orders ADD COLUMN amount_cents_big bigint"),
        ("backfill at once", "UPDATE orders SET amount_cents_big = amount_cents WHERE id <= 2000"),
        ("swap", "BEGIN; ALTER TABLE orders RENAME COLUMN amount_cents TO amount_cents_old; "
                 "ALTER TABLE orders RENAME COLUMN amount_cents_big TO amount_cents; COMMIT"),
    ]
    result = ex.q1.evaluate(answer_plan=plan, sandbox=box)
    assert result.status == "incorrect" and "requests failed" in result.text(), result.text()
    assert ex.q1.last_board.failures  # measured, not guessed
    assert any(app == "v1" for app, _ in ex.q1.last_board.failures)


def test_a_step_that_fails_stops_the_plan(make_sandbox):
    box = make_sandbox("nb04")
    plan = [("typo", "ALTER TABLE orders ADD COLUMN"), ("never run", "SELECT 1")]
    result = ex.q1.evaluate(answer_plan=plan, sandbox=box)
    assert result.status == "incorrect" and "step 1 (typo) failed" in result.text(), result.text()
    assert len(ex.q1.last_board.steps) == 1


@pytest.mark.parametrize("plan", [NAIVE_SQL, [NAIVE_SQL], [("label",)], [("x", 42)]])
def test_a_plan_of_the_wrong_shape_is_incorrect_without_running(plan, make_sandbox):
    box = make_sandbox("nb04")
    result = ex.q1.evaluate(answer_plan=plan, sandbox=box)
    assert result.status == "incorrect" and "should be" in result.text(), result.text()


@pytest.mark.parametrize("plan", [..., "", "# YOUR CODE HERE"])  # None: solutions/04's solution-only cell
def test_no_plan_is_not_attempted(plan, make_sandbox):
    assert ex.q1.evaluate(answer_plan=plan, sandbox=make_sandbox("nb04")).status == "not_attempted"


def test_hints_have_three_levels(capsys):
    for level in (1, 2, 3):
        ex.q1.hint(level)
    out = capsys.readouterr().out
    assert "Hint 3 of 3" in out and "RENAME COLUMN" in out
