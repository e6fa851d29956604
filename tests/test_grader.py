"""Graders with least privilege (issue 19): the escapes a security review found, each refused with
a clear "not allowed" and nothing left behind; the role learner SQL runs as can do nothing else."""

from __future__ import annotations

import uuid

import psycopg
import pytest

from zdlab import checks, grader
from zdlab.exercises.nb00 import ex as ex00
from zdlab.exercises.nb01 import ex as ex01


@pytest.fixture(autouse=True)
def not_strict(monkeypatch):
    monkeypatch.delenv(checks.STRICT_ENV, raising=False)


@pytest.fixture
def two(make_sandbox):
    """A learner's sandbox and another one (another notebook, or another learner on the same
    database), each with a session open."""
    box, other = make_sandbox("grd"), make_sandbox("grd_other")
    conns = [box.connect("app"), other.connect("app")]
    yield box, other, conns[1]
    for conn in conns:
        conn.close()


def _exists(conn: psycopg.Connection, kind: str, name: str) -> bool:
    query = {"table": "SELECT to_regclass(%s) IS NOT NULL",
             "schema": "SELECT EXISTS (SELECT 1 FROM pg_namespace WHERE nspname = %s)"}[kind]
    return conn.execute(query, [name]).fetchone()[0]


def _refused(result: checks.Result) -> None:
    assert result.status == "incorrect", result.message
    assert "not allowed" in result.message, result.message


def test_commit_then_create_in_public_is_refused_and_nothing_is_kept(two, db_url):
    box, _, _ = two
    table = f"public.escape_{uuid.uuid4().hex[:8]}"
    for answer in (f"COMMIT; CREATE TABLE {table} (i int)", f"SELECT 1; CREATE TABLE {table} (i int)"):
        _refused(ex00.q1.evaluate(answer_sql=answer, sandbox=box))
    _refused(ex01.q5.evaluate(down_sql=f"COMMIT; CREATE TABLE {table} (i int)", sandbox=box))
    # The statement alone reaches the database, and the learner's role may not create there.
    _refused(ex01.q5.evaluate(down_sql=f"CREATE TABLE {table} (i int)", sandbox=box))
    with psycopg.connect(db_url) as conn:
        assert not _exists(conn, "table", table)


@pytest.mark.parametrize("answer", ["SET statement_timeout = 0", "RESET statement_timeout", "RESET ALL",
                                    "SELECT set_config('statement_timeout', '0', false)",
                                    "SET ROLE postgres", "SET SESSION AUTHORIZATION postgres",
                                    "ALTER ROLE CURRENT_USER SET statement_timeout = 0"])
def test_the_checks_time_limits_cannot_be_lifted(two, answer):
    box, _, _ = two
    _refused(ex00.q1.evaluate(answer_sql=answer, sandbox=box))
    _refused(ex01.q5.evaluate(down_sql=answer, sandbox=box))


def test_another_sandbox_cannot_be_dropped(two, db_url):
    box, other, _ = two
    result = ex01.q5.evaluate(down_sql=f"DROP SCHEMA {other.schema} CASCADE", sandbox=box)
    _refused(result)
    assert "must be owner" in result.message  # the database refused it, not only the text check
    with psycopg.connect(db_url) as conn:
        assert _exists(conn, "schema", other.schema)


def test_copy_to_program_is_refused_by_the_check_and_by_the_role(two, tmp_path):
    box, _, _ = two
    marker = tmp_path / "ran"
    answer = f"COPY (SELECT 1) TO PROGRAM 'touch {marker}'"
    _refused(ex00.q1.evaluate(answer_sql=answer, sandbox=box))
    _refused(ex01.q5.evaluate(down_sql=answer, sandbox=box))
    with grader.connect(box) as conn, pytest.raises(psycopg.errors.InsufficientPrivilege):
        conn.execute(answer)  # past the text check, the role itself may not
    assert not marker.exists()


def test_another_session_cannot_be_ended(two):
    box, _, victim = two
    pid = victim.info.backend_pid
    _refused(ex00.q1.evaluate(answer_sql=f"SELECT pg_terminate_backend({pid})", sandbox=box))
    with grader.connect(box) as conn, pytest.raises(psycopg.errors.InsufficientPrivilege):
        conn.execute("SELECT pg_terminate_backend(%s)", [pid])
    assert victim.execute("SELECT 1").fetchone() == (1,)


def test_learner_sql_runs_as_a_plain_role_with_the_checks_limits(two):
    box, other, _ = two
    with grader.connect(box) as conn:
        user, superuser, createrole, createdb = conn.execute(
            "SELECT current_user, rolsuper, rolcreaterole, rolcreatedb FROM pg_roles "
            "WHERE rolname = current_user").fetchone()
        assert not (superuser or createrole or createdb), user
        assert conn.execute("SHOW statement_timeout").fetchone()[0] == grader.ROLE_SETTINGS["statement_timeout"]
        # Its own sandbox is its own; another sandbox's tables are not.
        conn.execute("CREATE TABLE mine (i int)")
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            conn.execute(f"CREATE TABLE {other.schema}.theirs (i int)")


def test_worked_answers_still_pass(two):
    box, _, _ = two
    ok = ex00.q1.evaluate(answer_sql=(
        f"SELECT pid, application_name FROM pg_stat_activity WHERE datname = current_database() "
        f"AND starts_with(application_name, 'zdlab/{box.schema}/')"), sandbox=box)
    assert ok.status == "correct", ok.message
    down = ("ALTER TABLE customers ADD COLUMN name text; UPDATE customers SET name = CASE WHEN last_name "
            "IS NULL THEN first_name ELSE first_name || ' ' || last_name END;")  # the contract's down
    ok = ex01.q5.evaluate(down_sql=down, sandbox=box)
    assert ok.status == "correct", ok.message


def test_vet_allows_what_migrations_need():
    assert grader.vet(["SET lock_timeout = '1s'", "CREATE INDEX CONCURRENTLY i ON t (c)"], "x")
    assert grader.vet(["BEGIN", "UPDATE t SET c = 1", "COMMIT"], "x", transactions=True)
    with pytest.raises(grader.NotAllowed, match="not allowed"):
        grader.vet(["BEGIN"], "x")
