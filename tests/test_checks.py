"""Every checker against real sandboxes: right, wrong and missing answers, and strict mode."""

from __future__ import annotations

import pytest

from zdlab import checks
from zdlab.exercises.nb00 import ex
from zdlab.sandbox import Sandbox


@pytest.fixture(autouse=True)
def not_strict(monkeypatch):
    # The root conftest turns strict mode on for notebook kernels; these tests choose per test.
    monkeypatch.delenv(checks.STRICT_ENV, raising=False)


@pytest.fixture
def boxes(make_sandbox):
    """A sandbox with an extra session of its own, and another sandbox with a session too."""
    box, other = make_sandbox("chk"), make_sandbox("chk_other")
    conns = [box.connect("app"), other.connect("app")]
    yield box, other
    for conn in conns:
        conn.close()


def sessions_sql(box: Sandbox) -> str:
    return (f"SELECT pid, application_name FROM pg_stat_activity "
            f"WHERE datname = current_database() AND starts_with(application_name, 'zdlab/{box.schema}/')")


# -- 00_setup q1: the sandbox's sessions ------------------------------------------------------


def test_q1_right_answer_is_correct(boxes):
    box, _ = boxes
    result = ex.q1.check(answer_sql=sessions_sql(box), sandbox=box)
    assert result.status == "correct", result.message
    assert result and "2 session(s) (app, check)" in result.message


def test_q1_right_answer_with_like_and_columns_swapped_is_correct(boxes):
    box, _ = boxes
    prefix = f"zdlab/{box.schema}/".replace("_", r"\_")
    sql = f"SELECT application_name, pid FROM pg_stat_activity WHERE application_name LIKE '{prefix}%'"
    assert ex.q1.check(answer_sql=sql, sandbox=box).status == "correct"


@pytest.mark.parametrize("make_sql, words", [
    (lambda box: "SELECT pid, application_name FROM pg_stat_activity", "not this sandbox's"),
    (lambda box: "SELECT pid, application_name FROM pg_stat_activity WHERE application_name LIKE 'zdlab/%'",
     "not this sandbox's"),
    (lambda box: f"SELECT pid, application_name FROM pg_stat_activity "
                 f"WHERE application_name = 'zdlab/{box.schema}/app'", "misses 1 of this sandbox's 2"),
    (lambda box: f"SELECT pid, state FROM pg_stat_activity WHERE starts_with(application_name, "
                 f"'zdlab/{box.schema}/')", "columns pid and application_name"),
    (lambda box: sessions_sql(box) + " UNION ALL " + sessions_sql(box), "more than once"),
    (lambda box: "ANALYZE", "no rows at all"),
])
def test_q1_wrong_answers_are_incorrect_with_a_reason(boxes, make_sql, words):
    box, _ = boxes
    result = ex.q1.check(answer_sql=make_sql(box), sandbox=box)
    assert result.status == "incorrect"
    assert words in result.message


def test_q1_sql_typo_is_incorrect_and_clear_not_an_exception(boxes, capsys):
    box, _ = boxes
    result = ex.q1.check(answer_sql="SELEC pid, application_name FROM pg_stat_activity", sandbox=box)
    assert result.status == "incorrect"
    assert result.message == 'your query failed: syntax error at or near "SELEC"'
    shown = capsys.readouterr().out
    assert "✗ Incorrect" in shown and "Traceback" not in shown


def test_q1_wrong_type_is_incorrect(boxes):
    box, _ = boxes
    result = ex.q1.check(answer_sql=42, sandbox=box)
    assert result.status == "incorrect" and "should be a string" in result.message


@pytest.mark.parametrize("value", [None, "", "   \n", ..., "# YOUR CODE HERE"])
def test_q1_placeholders_are_not_attempted(boxes, value):
    box, _ = boxes
    result = ex.q1.check(answer_sql=value, sandbox=box)
    assert result.status == "not_attempted" and "answer_sql" in result.message
    assert not result


def test_check_reads_the_answer_from_the_notebook_namespace(boxes):
    box, _ = boxes
    # A notebook's cells run in one globals dict; check() reads answer_sql from the caller's globals.
    cell = "result = ex.q1.check(sandbox=box)"
    notebook = {"ex": ex, "box": box}
    exec(cell, notebook)
    assert notebook["result"].status == "not_attempted"  # answer_sql never set
    exec("answer_sql = ...", notebook)  # the learner's copy's placeholder (tools/make_notebooks.py)
    exec(cell, notebook)
    assert notebook["result"].status == "not_attempted"
    notebook["answer_sql"] = sessions_sql(box)
    exec(cell, notebook)
    assert notebook["result"].status == "correct"
    notebook["answer_sql"] = "SELECT 1"
    exec(cell, notebook)
    assert notebook["result"].status == "incorrect"


def test_learner_sql_is_rolled_back(boxes):
    box, _ = boxes
    with box.connect() as conn:
        conn.execute("CREATE TABLE keep (x int); INSERT INTO keep VALUES (1), (2)")
    result = ex.q1.check(answer_sql="DELETE FROM keep RETURNING x AS pid, 'a' AS application_name", sandbox=box)
    assert result.status == "incorrect"
    with box.connect() as conn:
        assert conn.execute("SELECT count(*) FROM keep").fetchone()[0] == 2


def test_slow_learner_sql_is_cancelled(boxes, monkeypatch):
    box, _ = boxes
    monkeypatch.setattr(checks, "LEARNER_TIMEOUT", "200ms")
    sql = sessions_sql(box).replace("FROM pg_stat_activity", "FROM pg_stat_activity, pg_sleep(30)")
    result = ex.q1.check(answer_sql=sql, sandbox=box)
    assert result.status == "incorrect" and "longer than 200ms" in result.message


def test_database_down_gives_could_not_check(boxes):
    box, _ = boxes
    down = Sandbox(box.name, url="postgresql://postgres:workshop@127.0.0.1:1/workshop")
    result = ex.q1.check(answer_sql=sessions_sql(box), sandbox=down)
    assert result.status == "incorrect"
    assert result.message.startswith("could not check: Could not connect to PostgreSQL")


def test_checker_bug_is_reported_not_raised(boxes, monkeypatch):
    box, _ = boxes

    def broken(*args, **kwargs):
        raise KeyError("oops")

    monkeypatch.setattr(type(ex.q1), "grade", broken)
    result = ex.q1.check(answer_sql="SELECT 1", sandbox=box)
    assert result.status == "incorrect" and "could not check: the checker failed (KeyError" in result.message


# -- strict mode -------------------------------------------------------------------------------


def test_strict_mode_raises_on_incorrect(boxes, monkeypatch):
    box, _ = boxes
    monkeypatch.setenv(checks.STRICT_ENV, "1")
    with pytest.raises(AssertionError, match="00_setup q1: ✗ Incorrect: your query failed"):
        ex.q1.check(answer_sql="SELEC 1", sandbox=box)


def test_strict_mode_does_not_raise_on_not_attempted_or_correct(boxes, monkeypatch):
    box, _ = boxes
    monkeypatch.setenv(checks.STRICT_ENV, "1")
    assert ex.q1.check(answer_sql=None, sandbox=box).status == "not_attempted"
    assert ex.q1.check(answer_sql=sessions_sql(box), sandbox=box).status == "correct"


def test_evaluate_never_raises_and_prints_nothing(boxes, monkeypatch, capsys):
    box, _ = boxes
    monkeypatch.setenv(checks.STRICT_ENV, "1")
    assert ex.q1.evaluate(answer_sql="SELEC 1", sandbox=box).status == "incorrect"
    assert capsys.readouterr().out == ""


def test_strict_mode_off_values(monkeypatch):
    for value, expected in [("1", True), ("yes", True), ("0", False), ("", False), ("false", False)]:
        monkeypatch.setenv(checks.STRICT_ENV, value)
        assert checks.strict() is expected


def test_unknown_answer_name_is_an_authoring_error(boxes):
    box, _ = boxes
    with pytest.raises(TypeError, match="reads answer_sql"):
        ex.q1.check(answer=1, sandbox=box)


# -- hints, solutions, display, registry ----------------------------------------------------------


def test_hint_levels(capsys):
    ex.q1.hint()
    first = capsys.readouterr().out
    assert first.startswith("Hint 1 of 3:") and ".hint(2)" in first
    ex.q1.hint(3)
    assert capsys.readouterr().out.startswith("Hint 3 of 3:")
    ex.q1.hint(99)
    assert capsys.readouterr().out.startswith("Hint 3 of 3:")


def test_solution_shows_notebook_and_code(capsys):
    ex.q1.solution()
    out = capsys.readouterr().out
    assert "solutions/00_setup.ipynb" in out and "exercise q1" in out
    assert "starts_with(application_name, 'zdlab/zd_00_setup/')" in out
    assert "datname = current_database()" in out
    assert "### BEGIN SOLUTION" not in out


def test_sessions_of_another_database_are_not_this_sandboxs(make_sandbox, db_url):
    """On a server shared by learners (one database each), the same sandbox name exists twice."""
    import psycopg

    from zdlab import config

    box = make_sandbox("shared")
    other_db = "zdlab_test_other_learner"
    with psycopg.connect(db_url, autocommit=True) as admin:
        admin.execute(f"DROP DATABASE IF EXISTS {other_db} WITH (FORCE)")
        admin.execute(f"CREATE DATABASE {other_db}")
    try:
        other = psycopg.connect(config.with_database(db_url, other_db), application_name=box.app_name("app"))
        try:
            unfiltered = (f"SELECT pid, application_name FROM pg_stat_activity "
                          f"WHERE starts_with(application_name, 'zdlab/{box.schema}/')")
            assert ex.q1.evaluate(answer_sql=unfiltered, sandbox=box).status == "incorrect"
            assert ex.q1.evaluate(answer_sql=sessions_sql(box), sandbox=box).status == "correct"
        finally:
            other.close()
    finally:
        with psycopg.connect(db_url, autocommit=True) as admin:
            admin.execute(f"DROP DATABASE IF EXISTS {other_db} WITH (FORCE)")


def test_solution_when_solutions_are_not_shipped(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("ZDLAB_HOME", str(tmp_path))
    ex.q1.solution()
    assert "not in this copy of the kit" in capsys.readouterr().out


def test_result_renders_in_colour():
    ok = checks.Result("correct", "well done", "00_setup q1")
    assert ok.text() == "✓ Correct: well done"
    assert "✓ Correct" in ok._repr_html_() and "color:#1a7f37" in ok._repr_html_()
    bad = checks.Result("incorrect", "<b>no</b>")
    assert "&lt;b&gt;" in bad._repr_html_() and not bad


def _all_notebooks() -> list[str]:
    """Import every notebook's exercises, so the list does not depend on what ran before."""
    import importlib
    import pkgutil

    import zdlab.exercises

    for module in pkgutil.iter_modules(zdlab.exercises.__path__):
        importlib.import_module(f"zdlab.exercises.{module.name}")
    return sorted(checks.NOTEBOOKS)


@pytest.mark.parametrize("notebook", _all_notebooks())
def test_every_registered_exercise_has_hints_and_a_worked_answer(notebook):
    book = checks.NOTEBOOKS[notebook]
    assert book.solutions_path().exists(), f"no {book.solutions_path()}"
    for name, exercise in book.exercises.items():
        assert len(exercise.hints) >= 2, f"{notebook} {name}: give at least two hint levels"
        code = checks.solution_code(book.solutions_path(), exercise.answers[0])
        assert code, f"{notebook} {name}: no solution block assigning {exercise.answers[0]}"
