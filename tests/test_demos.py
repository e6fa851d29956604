"""zdlab.demos: the instruments behind the notebooks' corrections (the notebooks run the rest)."""

from __future__ import annotations

from zdlab.demos import needs_version, waits_behind


def test_needs_version_skips_with_a_reason(capsys, make_sandbox):
    with make_sandbox("demos_version").connect() as conn:
        assert needs_version(conn, 110000, "anything the suite's servers have")
    assert capsys.readouterr().out == ""
    assert not needs_version(140005, 150000, "a PostgreSQL 15 feature")
    out = capsys.readouterr().out
    assert out.startswith("SKIPPED: a PostgreSQL 15 feature needs PostgreSQL 15") and "this server is 14" in out


def test_waits_behind_reads_the_lock_each_probe_waited_for(make_sandbox):
    box = make_sandbox("demos_waits")
    with box.connect() as conn:
        conn.execute("CREATE TABLE t (id int PRIMARY KEY, a text); CREATE TABLE other (id int)")
    probes = waits_behind(box, ["LOCK TABLE t IN SHARE MODE"], {
        "read": "SELECT count(*) FROM t",
        "write": "INSERT INTO t VALUES (1, 'x')",
        "elsewhere": "INSERT INTO other VALUES (1)",
    }, probe_timeout="300ms")
    assert not probes["read"].waited and probes["read"].error is None  # ShareLock lets reads through
    assert (probes["write"].waited, probes["write"].mode, probes["write"].relation) == (True, "RowExclusiveLock", "t")
    assert "LockNotAvailable" in (probes["write"].error or "")
    assert not probes["elsewhere"].waited
    with box.connect() as conn:  # the holder was rolled back: nothing is locked any more
        conn.execute("SET lock_timeout = '1s'")
        conn.execute("INSERT INTO t VALUES (2, 'y')")
