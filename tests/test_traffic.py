"""The traffic workload, the lock-wait sampler and the report built from them."""

from __future__ import annotations

import json
import time

import psycopg
import pytest
from matplotlib.figure import Figure

from zdlab.records import Span
from zdlab.report import Report, held_by, stall_intervals
from zdlab.seed import seed
from zdlab.traffic import KINDS, Sample, traffic

ROWS = 20_000  # the workload's behaviour does not depend on table size


@pytest.fixture
def seeded(make_sandbox):
    sb = make_sandbox("traffic")
    seed(sb, ROWS, progress=False)
    return sb


def wait_until(condition, timeout: float = 10.0) -> bool:
    """Poll a condition with a deadline: no fixed sleeps."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.02)
    return False


def app_sessions(sb) -> int:
    with sb.connect("check") as conn:
        return conn.execute("SELECT count(*) FROM pg_stat_activity WHERE application_name = %s",
                            [sb.app_name("app")]).fetchone()[0]


def test_workload_runs_every_kind_on_its_own_connections_and_stops_cleanly(seeded):
    with traffic(seeded, workers=3) as t:
        assert t.wait_for_requests(400)
        assert app_sessions(seeded) == 3
    report = t.report()
    assert set(report.requests_by_kind) == set(KINDS)
    assert report.failed_requests == 0, report.failures_by_error
    assert report.p50_latency_ms is not None and report.p50_latency_ms < report.max_latency_ms + 1e-9
    assert report.tables == {"users": "kept", "orders": "kept"}
    assert not t.running and not any(th.is_alive() for th in t._threads)
    assert wait_until(lambda: app_sessions(seeded) == 0), "app sessions left behind after the block"
    with seeded.connect("check") as conn:  # the inserts really happened, with fresh ids
        inserted = conn.execute("SELECT count(*) FROM orders WHERE id > %s", [ROWS]).fetchone()[0]
    assert inserted == report.requests_by_kind["insert_order"]


def test_run_records_statements_and_errors_without_raising(seeded):
    with traffic(seeded, workers=1, sample=False) as t, seeded.connect("migration") as conn:
        ok = t.run(conn, "SELECT pg_sleep(0.05)")
        bad = t.run(conn, "SELECT * FROM no_such_table", label="bad one")
        with pytest.raises(psycopg.errors.UndefinedTable):
            t.run(conn, "SELECT * FROM no_such_table", raise_errors=True)
        with pytest.raises(ZeroDivisionError), t.statement("python step"):
            1 / 0  # noqa: B018
    assert ok.error is None and ok.duration_ms >= 50
    assert bad.label == "bad one" and bad.error.startswith("UndefinedTable (42P01)")
    assert "no_such_table" in bad.error
    assert [s.error is not None for s in t.spans] == [False, True, True, True]
    report = t.report()
    assert report.lock_wait_ms is None and report.longest_stall_ms is None and report.samples == 0
    assert report.statements[1]["error"] == bad.error


def test_sampler_sees_the_lock_wait_and_who_blocks(seeded):
    with traffic(seeded, workers=2) as t, seeded.connect("notebook") as conn:
        assert t.wait_for_requests(50)
        conn.execute("BEGIN")
        conn.execute("LOCK TABLE users IN ACCESS EXCLUSIVE MODE")
        try:
            # Both workers soon queue behind the lock (every request kind touches users).
            assert wait_until(lambda: any(len(s.waiting) == 2 for s in t.samples))
        finally:
            conn.execute("COMMIT")
        assert t.wait_for_requests(len(t.requests) + 20)  # traffic recovers
    report = t.report()
    assert report.lock_wait_ms > 0 and report.longest_stall_ms > 0
    edges = report.blocking_chain
    assert edges and all(e["blocker"] == "notebook" for e in edges)
    assert any(e["blocker_mode"] == "AccessExclusiveLock" and e["relation"].endswith("users") for e in edges)
    assert report.failed_requests == 0


def test_stop_is_bounded_when_the_block_raises_while_a_lock_is_held(seeded):
    conn = seeded.connect("notebook")
    try:
        with pytest.raises(RuntimeError), traffic(seeded, workers=2) as t:
            conn.execute("BEGIN")
            conn.execute("LOCK TABLE users IN ACCESS EXCLUSIVE MODE")
            assert wait_until(lambda: any(len(s.waiting) == 2 for s in t.samples))
            started = time.monotonic()
            raise RuntimeError("the notebook cell failed with the lock still held")
        # Workers stuck behind the lock were cancelled, not waited for forever.
        assert time.monotonic() - started < 10
        assert not any(th.is_alive() for th in t._threads)
        assert t.report().failed_requests == 0  # our own cancel is not an application failure
    finally:
        conn.close()


def test_a_terminated_connection_is_counted_and_replaced(seeded):
    with traffic(seeded, workers=2, sample=False) as t:
        assert t.wait_for_requests(50)
        with seeded.connect("admin") as admin:
            killed = admin.execute("SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                                   "WHERE application_name = %s", [seeded.app_name("app")]).fetchone()[0]
        assert killed == 2
        before = len(t.requests)
        assert t.wait_for_requests(before + 100)  # the workers reconnected and go on
        assert wait_until(lambda: app_sessions(seeded) == 2)
    report = t.report()
    assert 1 <= report.failed_requests <= 2 * 2, report.failures_by_error  # one per worker, maybe a retry


def test_stall_intervals_use_measured_sample_gaps():
    samples = [Sample(0.00), Sample(0.01, {1: (9,)}), Sample(0.03, {1: (9,), 2: (9,)}),
               Sample(0.05), Sample(0.06, {3: (9,)})]
    stalls, wait_ms = stall_intervals(samples, end=0.065)
    assert stalls == [(0.01, 0.05), (0.06, 0.065)]
    assert wait_ms == pytest.approx(1 * 20 + 2 * 20 + 1 * 5)


def test_report_renders_as_text_html_dict_and_plot(seeded, tmp_path):
    with traffic(seeded, workers=4) as t, seeded.connect("migration") as conn:
        assert t.wait_for_requests(400)
        for sql in ("BEGIN", "LOCK TABLE users", "SELECT pg_sleep(0.4)", "COMMIT",
                    "ALTER TABLE users ADD COLUMN x timestamptz DEFAULT clock_timestamp()", "SELECT 1/0"):
            t.run(conn, sql)
        assert t.wait_for_requests(len(t.requests) + 400)
    report = t.report(rows=ROWS)
    assert isinstance(report, Report)
    text = str(report)
    assert report.verdict == "failed" and report.judgement.blocked  # 1/0 failed; the held lock blocked
    assert "FAILED" in text and "LOCK TABLE users" in text and "DivisionByZero" in text
    html = report._repr_html_()
    assert html.startswith("<table") and "users rewritten" in html
    data = report.to_dict()
    json.dumps(data)  # JSON-ready
    for key in ("server_version", "rows", "statements", "requests", "failed_requests", "failures_by_error",
                "p50_latency_ms", "p99_latency_ms", "max_latency_ms", "lock_wait_ms", "longest_stall_ms",
                "blocking_chain", "rewritten_tables", "verdict"):
        assert key in data
    assert data["rewritten_tables"] == ["users"] and data["rows"] == ROWS
    assert {"sql", "duration_ms", "error"} <= set(data["statements"][0])
    sleep = next(s for s in data["statements"] if s["sql"] == "SELECT pg_sleep(0.4)")
    assert data["longest_stall_ms"] >= 0.8 * sleep["duration_ms"]  # the app waited while the lock was held

    fig = t.plot(rows=ROWS)
    assert isinstance(fig, Figure)
    ax = fig.axes[0]
    # One shaded span per statement plus the lock-wait band(s) at the bottom.
    assert len(ax.patches) >= len(t.spans) + 1
    assert ax.get_yscale() == "log"
    labels = ax.get_legend_handles_labels()[1]
    assert "migration statement" in labels and "app waiting on a lock" in labels
    out = tmp_path / "timeline.png"
    fig.savefig(out, dpi=100)
    assert out.stat().st_size > 10_000


def test_custom_app_versions_and_a_rolling_deploy(make_sandbox):
    """Two application versions side by side; deploy() moves workers to the new one."""
    from zdlab.traffic import AppVersion, traffic

    box = make_sandbox("apps")
    seed(box, rows=2000, progress=False)

    def read_name(conn, ctx):
        conn.execute("SELECT name FROM users WHERE id = %s", [ctx.user_id]).fetchone()

    def read_nickname(conn, ctx):  # the new code expects a column the migration has not added yet
        conn.execute("SELECT nickname FROM users WHERE id = %s", [ctx.user_id]).fetchone()

    def insert_order(conn, ctx):
        conn.execute("INSERT INTO orders (id, user_id, amount_cents) VALUES (%s, %s, 1)",
                     [ctx.next_order_id(), ctx.user_id])

    v1 = AppVersion("v1", {"read": read_name, "insert": insert_order})
    v2 = AppVersion("v2", {"read": read_nickname, "insert": insert_order})
    with traffic(box, workers=2, apps=[v1, v2]) as t:
        assert t.versions() == ["v1", "v2"]
        assert t.wait_for_requests(40)
        t.deploy(v1)
        assert t.versions() == ["v1", "v1"]
        switched = t.now()
        n = len(t.requests)
        assert t.wait_for_requests(n + 40)
    by_app = {a: [r for r in t.requests if r.app == a] for a in ("v1", "v2")}
    assert by_app["v1"] and not any(r.error for r in by_app["v1"])
    v2_reads = [r for r in by_app["v2"] if r.kind == "read"]
    assert v2_reads and all("nickname" in r.error for r in v2_reads)
    # Once deployed, no worker serves v2 any more (allow the one request in flight at the switch).
    assert sum(r.app == "v2" and r.start > switched for r in t.requests) <= 1
    with box.connect() as conn:  # the inserts of both versions landed, with distinct ids
        inserted = sum(r.kind == "insert" and r.error is None for r in t.requests)
        assert conn.execute("SELECT count(*) FROM orders WHERE id > 2000").fetchone()[0] == inserted


def test_a_held_lock_is_judged_per_transaction_of_the_step():
    """A batched backfill: app requests wait on each batch's row locks, one batch at a time. Each
    batch is a transaction of its own, bounded by the batch size: it does not count against the
    step. The same waits inside ONE transaction are one lock held throughout: it counts."""
    from zdlab.judge import holders

    span = Span("backfill", "UPDATE ...", 0.0, 0.2, pid=9)

    def samples(xact_of):  # 20 samples, 10 ms apart; an app request waits on pid 9 in 3 of every 4
        return [Sample(i / 100, {1: (9,)} if i % 4 else {}, frozenset({1}), frozenset(), {9: xact_of(i)})
                for i in range(20)]

    batches = held_by(span, samples(lambda i: float(i // 4)))  # a new transaction every 4 samples
    assert batches["transactions"] == 5 and batches["share"] == 0.2
    assert batches["samples"] == 3 and batches["held_ms"] == pytest.approx(40)
    one = held_by(span, samples(lambda i: 0.0))
    assert one["transactions"] == 1 and one["share"] == 1.0
    assert one["samples"] == 15 and one["held_ms"] == pytest.approx(200)
    assert one["coverage"] == batches["coverage"] == 0.75
    assert holders([batches], floor_ms=10.0) == [] and holders([one], floor_ms=10.0) == [one]
    # between two batches the session holds nothing: idle samples are not a transaction
    paused = held_by(span, samples(lambda i: None if i % 4 == 3 else float(i // 4)))
    assert paused["transactions"] == 5 and paused["share"] == pytest.approx(0.2)
    # two "batches" of half the table each: the worst took half the step: it grows with the table
    halves = held_by(span, samples(lambda i: float(i // 10)))
    assert halves["share"] == 0.5 and holders([halves], floor_ms=10.0) == [halves]
