"""measure(): a migration against live traffic, judged by lock waits Postgres reports."""

from __future__ import annotations

import uuid

import pytest

from zdlab import ZdlabError
from zdlab.measure import measure, measure_in
from zdlab.sandbox import Sandbox, schema_name
from zdlab.seed import seed

ROWS = 20_000  # enough for every small case; table size only matters for the index builds


@pytest.fixture
def box_name(db_url):
    """A unique sandbox name for measure(), dropped afterwards whatever happened."""
    name = f"test_m_{uuid.uuid4().hex[:8]}"
    yield name
    Sandbox(name, db_url).drop()


def schema_exists(name: str) -> bool:
    with Sandbox("test_probe").connect("check") as conn:
        return conn.execute("SELECT 1 FROM pg_namespace WHERE nspname = %s",
                            [schema_name(name)]).fetchone() is not None


def test_a_held_table_lock_is_blocking(box_name):
    r = measure("BEGIN; LOCK TABLE users; SELECT pg_sleep(1); COMMIT;", rows=ROWS, sandbox_name=box_name)
    assert r.verdict == "blocking"
    held = r.statements[2]["duration_ms"]  # the lock was held through the sleep: the app waited as long
    assert r.longest_stall_ms >= 0.8 * held, (r.longest_stall_ms, held)
    sleep = next(h for h in r.held if h["label"] == "SELECT pg_sleep(1)")
    assert sleep["coverage"] >= 0.8 and "held a lock" in " ".join(r.judgement.reasons), r.judgement
    assert [s["sql"] for s in r.statements] == ["BEGIN", "LOCK TABLE users", "SELECT pg_sleep(1)", "COMMIT"]
    assert any(e["blocker"] == "migration" for e in r.blocking_chain)
    assert not schema_exists(box_name)


def test_slow_is_not_blocking(box_name):
    r = measure("SELECT pg_sleep(1)", rows=ROWS, sandbox_name=box_name)
    assert r.verdict == "safe", str(r)
    assert r.lock_wait_ms < 50 and r.failed_requests == 0
    assert r.statements[0]["duration_ms"] >= 1000


def test_volatile_default_rewrites_and_now_does_not(box_name):
    volatile = measure("ALTER TABLE users ADD COLUMN x timestamptz DEFAULT clock_timestamp()",
                       rows=ROWS, sandbox_name=box_name)
    assert volatile.rewritten_tables == ["users"]
    stable = measure("ALTER TABLE users ADD COLUMN x timestamptz DEFAULT now()", rows=ROWS, sandbox_name=box_name)
    assert stable.rewritten_tables == [] and stable.tables == {"users": "kept", "orders": "kept"}
    assert stable.verdict == "safe"


@pytest.fixture(scope="module")
def million(db_url):
    """One 1M-row sandbox for both index builds: seeding is the slow part (~4 s)."""
    box = Sandbox(f"test_m1m_{uuid.uuid4().hex[:8]}", db_url).reset()
    try:
        seed(box, 1_000_000, progress=False)
        yield box
    finally:
        box.drop()


# An index on (status, created_at): a dashboard's "newest orders by status". The verdicts rest on
# the run itself (zdlab.judge): the plain build holds ShareLock while inserts wait for most of
# its run; the concurrent one makes no app request wait on it at all.
INDEX_COLUMNS = "orders (status, created_at)"


@pytest.mark.slow
def test_create_index_concurrently_is_safe_at_1m_rows(million):
    r = measure_in(million, f"CREATE INDEX CONCURRENTLY ON {INDEX_COLUMNS}", rows=1_000_000)
    assert r.verdict == "safe", str(r)
    assert r.judgement.stall_ms == 0 and r.held[0]["samples"] == 0, r.judgement


@pytest.mark.slow
def test_plain_create_index_is_blocking_at_1m_rows(million):
    r = measure_in(million, f"CREATE INDEX ON {INDEX_COLUMNS}", rows=1_000_000)
    assert r.verdict == "blocking", str(r)
    assert r.held[0]["coverage"] >= 0.5, r.held  # writers waited for most of the build
    assert any(e["waiter"] == "insert_order" and e["blocker_mode"] == "ShareLock" for e in r.blocking_chain)


def test_a_sql_error_fails_the_migration_and_leaves_no_sandbox(box_name):
    r = measure("ALTER TABLE users ADD COLUMN note text; SELECT * FROM no_such_table; ALTER TABLE users DROP note",
                rows=ROWS, sandbox_name=box_name)
    assert r.verdict == "failed"
    failed = [s for s in r.statements if s["error"]]
    assert [s["sql"] for s in failed] == ["SELECT * FROM no_such_table"]
    assert 'relation "no_such_table" does not exist' in failed[0]["error"]
    assert r.statements_not_run == 1 and len(r.statements) == 2
    assert r.to_dict()["verdict"] == "failed"
    assert not schema_exists(box_name)


def test_a_failure_inside_begin_commit_rolls_the_block_back(box_name):
    r = measure("BEGIN; ALTER TABLE users ADD COLUMN y int; UPDATE users SET y = 1 / 0; COMMIT; SELECT 1",
                rows=ROWS, sandbox_name=box_name, keep=True)
    assert r.verdict == "failed"
    assert [s["sql"] for s in r.statements] == ["BEGIN", "ALTER TABLE users ADD COLUMN y int",
                                                "UPDATE users SET y = 1 / 0", "ROLLBACK"]
    assert "division by zero" in r.statements[2]["error"] and r.statements[3]["error"] is None
    assert r.statements_not_run == 2
    with Sandbox(box_name).connect("check") as conn:  # kept: the block really was rolled back
        cols = [c.name for c in conn.execute("SELECT * FROM users LIMIT 0").description]
    assert "y" not in cols


def test_bad_setup_sql_names_the_statement_and_leaves_no_sandbox(box_name):
    with pytest.raises(ZdlabError) as info:
        measure("SELECT 1", rows=ROWS, sandbox_name=box_name,
                setup_sql="CREATE TABLE teams (id int); CREATE TABLE members (team int REFERENCES nope)")
    assert "statement 2" in info.value.message and "REFERENCES nope" in info.value.message
    assert 'relation "nope" does not exist' in info.value.message
    assert not schema_exists(box_name)


def test_setup_sql_tables_can_be_migrated_but_are_not_measured(box_name):
    r = measure("ALTER TABLE teams ADD COLUMN name text", rows=ROWS, sandbox_name=box_name,
                setup_sql="CREATE TABLE teams (id int PRIMARY KEY); INSERT INTO teams SELECT generate_series(1, 10)")
    assert r.statements[0]["error"] is None
    # The workload never touches teams: the run cannot say the app would not notice.
    assert r.verdict == "not measured" and r.unmeasured_tables == ["teams"], r.judgement
    assert "never touched" in str(r) and "reads and writes users, orders" in str(r)


def test_a_rewrite_of_a_team_table_is_not_called_safe(box_name):
    setup = ("CREATE TABLE events (id int PRIMARY KEY, at int); "
             "INSERT INTO events SELECT g, g FROM generate_series(1, 50000) g")
    r = measure("ALTER TABLE events ALTER COLUMN at TYPE bigint", rows=ROWS, sandbox_name=box_name, setup_sql=setup)
    assert r.tables["events"] == "rewritten" and r.verdict == "not measured", r.judgement


def test_requests_that_fail_because_of_the_migration_are_breaking(box_name):
    r = measure("ALTER TABLE users RENAME COLUMN name TO full_name", rows=ROWS, sandbox_name=box_name)
    assert r.statements[0]["error"] is None and r.verdict == "breaking", r.judgement
    assert sum(r.failures_after_start.values()) > 0 and "UndefinedColumn" in str(r)


def test_a_build_that_blocks_writes_is_blocking_at_any_size(box_name):
    # At 200,000 rows the build is short, often within the run's noise; its writers still waited
    # on its ShareLock for most of its run, so it is blocking (and longer on a larger table).
    r = measure("CREATE INDEX ON orders (status, created_at)", rows=200_000, sandbox_name=box_name)
    assert r.verdict == "blocking", r.judgement
    assert "ShareLock" in r.blocked_modes() and "larger table" in " ".join(r.judgement.reasons)


def test_prepared_select_star_breaks_after_an_instant_add_column(box_name):
    sql = "ALTER TABLE users ADD COLUMN score int NOT NULL DEFAULT 0"
    star = measure(sql, rows=ROWS, sandbox_name=box_name, select_star=True)
    assert star.rewritten_tables == []  # lock-safe and instant ...
    broken = {e: n for e, n in star.failures_by_error.items() if "cached plan must not change result type" in e}
    assert broken and sum(broken.values()) >= 10, star.failures_by_error  # ... and still breaks the app
    assert star.verdict == "breaking", star.judgement
    columns = measure(sql, rows=ROWS, sandbox_name=box_name, select_star=False)
    assert columns.failed_requests == 0, columns.failures_by_error


def test_a_step_with_a_traffic_parameter_can_roll_out_a_version_mid_run(box_name):
    from zdlab.rename import CUSTOMERS_SQL, app_versions

    sb = Sandbox(box_name).reset()
    seed(sb, ROWS, progress=False)
    with sb.connect("setup") as conn:
        conn.execute(CUSTOMERS_SQL.format(rows=1000))
        conn.execute("ALTER TABLE customers ADD COLUMN full_name text")
    v1, v2 = app_versions(1000)
    seen = {}

    def roll_out_v2(conn, *, traffic):
        seen["lock_timeout"] = conn.execute("SHOW lock_timeout").fetchone()[0]
        seen["before"] = traffic.served("v2"), traffic.served()  # before the rollout: v1 only
        traffic.deploy(v2)
        traffic.wait_for_requests(traffic.served() + 40)

    r = measure_in(sb, [roll_out_v2], apps=[v1], lock_timeout="2s", settle_s=0.3)
    apps = {req.app for req in r.timeline.requests}
    assert apps == {"v1", "v2"} and seen["lock_timeout"] == "2s", (apps, seen)
    assert seen["before"][0] == 0 < seen["before"][1], seen
    assert r.statements[0]["label"] == "roll_out_v2(conn)" and not r.statements[0]["error"]
