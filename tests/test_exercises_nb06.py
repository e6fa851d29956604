"""Notebook 06's checker: the worked forward fix passes; a revert, a fix that scans under ALTER
TABLE's lock, dropping the CHECK, leaving it NOT VALID and doing nothing fail, each for its reason.

The worked answer is read from the solution notebook itself (one source)."""

from __future__ import annotations

import pytest

from zdlab import checks
from zdlab.checks import solution_code
from zdlab.exercises import nb06
from zdlab.exercises.nb06 import ex

NEW_CHECK = "CHECK (plan IN ('free', 'pro', 'team'))"


@pytest.fixture(autouse=True)
def not_strict(monkeypatch):
    monkeypatch.delenv(checks.STRICT_ENV, raising=False)


def worked_answer() -> str:
    code = solution_code(ex.q1.notebook.solutions_path(), "answer_fix_sql")
    assert code, "the solution notebook has no answer_fix_sql between the solution markers"
    namespace: dict = {}
    exec(code, namespace)
    return namespace["answer_fix_sql"]


def test_the_worked_fix_is_correct_and_the_revert_is_measured(make_sandbox):
    result = ex.q1.evaluate(answer_fix_sql=worked_answer(), sandbox=make_sandbox("nb06"))
    assert result.status == "correct", result.text()
    assert "Reverting instead" in result.message and "UndefinedColumn" in result.message
    report = ex.q1.last_report
    assert {r.app for r in report.timeline.requests} == {"v1", "v2"}  # both versions served, measured
    assert any(r.error and "23514" in r.error for r in report.timeline.requests if r.app == "v2")  # broken before


@pytest.mark.parametrize("answer, words", [
    ("ALTER TABLE users DROP COLUMN plan", "That is what a revert does"),
    (f"ALTER TABLE users DROP CONSTRAINT users_plan_check, ADD CONSTRAINT users_plan_check {NEW_CHECK}",
     'made the server say "verifying table'),
    ("ALTER TABLE users DROP CONSTRAINT users_plan_check", "no CHECK constraint any more"),
    (f"ALTER TABLE users DROP CONSTRAINT users_plan_check, ADD CONSTRAINT users_plan_check {NEW_CHECK} NOT VALID",
     "still NOT VALID"),
    ("SELECT 1", "CheckViolation"),
], ids=["revert", "scan-under-lock", "no-check", "not-validated", "nothing"])
def test_wrong_fixes_are_incorrect(make_sandbox, monkeypatch, answer, words):
    monkeypatch.setattr(nb06, "CHECK_ROWS", 50_000)
    result = ex.q1.evaluate(answer_fix_sql=answer, sandbox=make_sandbox("nb06"))
    assert result.status == "incorrect", result.text()
    assert words in result.message, result.message


@pytest.mark.parametrize("answer", [..., "", "# YOUR CODE HERE"])
def test_no_answer_is_not_attempted(answer):
    assert ex.q1.evaluate(answer_fix_sql=answer).status == "not_attempted"


def test_refused_sql_is_incorrect_before_running(make_sandbox):
    result = ex.q1.evaluate(answer_fix_sql="SET statement_timeout = 0", sandbox=make_sandbox("nb06"))
    assert result.status == "incorrect" and "not allowed" in result.message, result.message
