"""`zdlab measure` and `zdlab locks`: what a team runs on its own migration files."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import psycopg
import pytest

JSON_KEYS = {"server_version", "rows", "statements", "requests", "failed_requests", "max_latency_ms",
             "p99_latency_ms", "lock_wait_ms", "longest_stall_ms", "rewritten_tables", "verdict"}


def zdlab(*args: str, timeout: float = 180) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "zdlab", *args], capture_output=True, text=True,
                          timeout=timeout, env=os.environ.copy())


def sandboxes(db_url: str) -> set[str]:
    with psycopg.connect(db_url) as conn:
        return {r[0] for r in conn.execute(
            "SELECT nspname FROM pg_namespace WHERE nspname ~ '^zd_(measure|locks)_'")}


def test_measure_json_reports_a_rewrite_and_cleans_up(db_url, tmp_path):
    mig = tmp_path / "m.sql"
    mig.write_text("-- a volatile default rewrites the table\n"
                   "ALTER TABLE users ADD COLUMN seen_at timestamptz DEFAULT clock_timestamp();\n")
    before = sandboxes(db_url)
    result = zdlab("measure", str(mig), "--rows", "100000", "--json")
    assert result.returncode == 0, result.stderr
    out = json.loads(result.stdout)
    assert JSON_KEYS <= out.keys()
    assert out["rows"] == 100000 and out["rewritten_tables"] == ["users"]
    assert out["statements"][0]["sql"].endswith("clock_timestamp()") and out["statements"][0]["error"] is None
    # A rewrite holds AccessExclusiveLock while it copies users: every request on users waits.
    assert out["requests"] > 0 and out["verdict"] == "blocking", out["reasons"]
    assert sandboxes(db_url) == before


def test_measure_sql_error_is_failed_verdict_exit_0(db_url, tmp_path):
    mig = tmp_path / "bad.sql"
    mig.write_text("ALTER TABLE users ADD COLUMN ok int;\nALTER TABLE no_such_table ADD COLUMN x int;\n"
                   "ALTER TABLE users ADD COLUMN never_run int;\n")
    before = sandboxes(db_url)
    result = zdlab("measure", str(mig), "--rows", "5000", "--json")
    assert result.returncode == 0, result.stderr
    out = json.loads(result.stdout)
    assert out["verdict"] == "failed"
    assert [s["error"] is None for s in out["statements"]] == [True, False]
    assert "no_such_table" in out["statements"][1]["error"]
    assert sandboxes(db_url) == before
    text = zdlab("measure", str(mig), "--rows", "5000")
    assert text.returncode == 0 and "FAILED" in text.stdout and "does not exist" in text.stdout


@pytest.mark.parametrize("case", ["missing", "empty", "comments", "folder"])
def test_measure_and_locks_bad_input_exit_2(tmp_path, case):
    path = tmp_path / "m.sql"
    if case == "empty":
        path.write_text("")
    elif case == "comments":
        path.write_text("-- nothing to run here\n")
    elif case == "folder":
        path.mkdir()
    for command in ("measure", "locks"):
        result = zdlab(command, str(path))
        assert result.returncode == 2, (command, result.stdout, result.stderr)
        assert result.stderr.startswith("zdlab: ") and "Traceback" not in result.stderr


def test_locks_json_with_a_teams_own_tables(db_url, tmp_path):
    setup = tmp_path / "setup.sql"
    setup.write_text("CREATE TABLE invoices (id bigint PRIMARY KEY, order_id bigint NOT NULL, total int);\n")
    mig = tmp_path / "m.sql"
    mig.write_text("ALTER TABLE invoices ADD CONSTRAINT invoices_order_fk FOREIGN KEY (order_id) "
                   "REFERENCES orders (id) NOT VALID;\n"
                   "CREATE INDEX CONCURRENTLY invoices_total_idx ON invoices (total);\n"
                   "SELECT no_such_column FROM invoices;\n")
    before = sandboxes(db_url)
    result = zdlab("locks", str(mig), "--setup", str(setup), "--json")
    assert result.returncode == 0, result.stderr
    out = json.loads(result.stdout)
    assert [{"sql", "locks", "error"} <= item.keys() for item in out] == [True] * 3
    fk, cic, bad = out
    assert {(lk["relation"], lk["mode"]) for lk in fk["locks"]} >= {
        ("invoices", "ShareRowExclusiveLock"), ("orders", "ShareRowExclusiveLock")}
    assert ("invoices", "ShareUpdateExclusiveLock") in {(lk["relation"], lk["mode"]) for lk in cic["locks"]}
    assert "no_such_column" in bad["error"]
    assert sandboxes(db_url) == before


def test_setup_error_names_the_statement(tmp_path):
    setup = tmp_path / "setup.sql"
    setup.write_text("CREATE TABLE t (id int);\nCREATE TABLE t (id int);\n")
    mig = tmp_path / "m.sql"
    mig.write_text("SELECT 1;\n")
    result = zdlab("measure", str(mig), "--setup", str(setup), "--rows", "1000")
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert "statement 2" in result.stderr and "already exists" in result.stderr
