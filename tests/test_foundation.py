"""The lab's foundation: server lifecycle, connection errors that read well, the CLI."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import uuid
from pathlib import Path
from urllib.parse import urlsplit

import psycopg
import pytest

from zdlab import config, connection, db
from zdlab.errors import ZdlabError

REPO = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_zdlab(*args: str, env: dict | None = None, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "zdlab", *args], capture_output=True, text=True,
                          timeout=timeout, env={**os.environ, **(env or {})})


def assert_clear(result: subprocess.CompletedProcess) -> None:
    """A clear failure: non-zero exit, a message, and no traceback from our code."""
    assert result.returncode != 0, result.stdout
    assert "Traceback" not in result.stderr, result.stderr
    assert result.stderr.strip().startswith("zdlab:"), result.stderr


@pytest.fixture
def scratch_home():
    """A kit home of its own (own data folder, own port), removed afterwards."""
    home = REPO / ".zdlab" / "test-homes" / uuid.uuid4().hex[:8]
    home.mkdir(parents=True)
    env = {"ZDLAB_HOME": str(home), "ZDLAB_PORT": str(free_port()), "DATABASE_URL": ""}
    yield home, env
    run_zdlab("db", "stop", env=env)
    shutil.rmtree(home, ignore_errors=True)


def test_embedded_password_is_random_private_and_renewed_without_losing_data(scratch_home):
    home, env = scratch_home
    assert run_zdlab("db", "start", env=env).returncode == 0
    password_file = home / ".zdlab" / "password"
    first = password_file.read_text().strip()
    assert len(first) >= 20 and first != "workshop"
    assert password_file.stat().st_mode & 0o077 == 0, "the password file is readable by its owner only"
    url = run_zdlab("db", "url", "--show-password", env=env).stdout.strip()
    assert urlsplit(url).password == first
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("CREATE TABLE kept (x int)")
        conn.execute("INSERT INTO kept VALUES (42)")
    with pytest.raises(psycopg.OperationalError):  # the old fixed word no longer opens it
        psycopg.connect(url.replace(f":{first}@", ":workshop@"), connect_timeout=5).close()

    # The file is lost while the server runs: the kit says how to recover, with no traceback.
    password_file.unlink()
    lost = run_zdlab("db", "url", "--show-password", env=env)
    assert_clear(lost)
    assert "`zdlab db stop`, then `zdlab db start`" in lost.stderr and "keeps its data" in lost.stderr
    # ... and that recovery gives a new password, keeping the data.
    assert run_zdlab("db", "stop", env=env).returncode == 0
    again = run_zdlab("db", "start", env=env)
    assert again.returncode == 0, again.stderr
    second = password_file.read_text().strip()
    assert second != first and password_file.stat().st_mode & 0o077 == 0
    with psycopg.connect(run_zdlab("db", "url", "--show-password", env=env).stdout.strip()) as conn:
        assert conn.execute("SELECT x FROM kept").fetchone() == (42,)


def test_embedded_server_lifecycle_and_stopped_server_message(scratch_home):
    home, env = scratch_home
    started = run_zdlab("db", "start", env=env)
    assert started.returncode == 0, started.stderr
    assert f"127.0.0.1:{env['ZDLAB_PORT']}" in started.stdout
    assert (home / ".zdlab" / "pgdata" / "PG_VERSION").read_text().strip() == "18"

    # Started twice: the running server is reused, not a second one.
    pid = run_zdlab("db", "status", env=env).stdout
    again = run_zdlab("db", "start", env=env)
    assert again.returncode == 0 and run_zdlab("db", "status", env=env).stdout == pid

    url = run_zdlab("db", "url", "--show-password", env=env).stdout.strip()
    with psycopg.connect(url) as conn:
        assert conn.execute("SELECT current_database()").fetchone()[0] == "workshop"
        assert conn.execute("SHOW server_version_num").fetchone()[0].startswith("18")
        assert conn.execute("SHOW listen_addresses").fetchone()[0] == "127.0.0.1"
    if os.geteuid() == 0:  # Postgres refuses root: it must run as the unprivileged service user
        ps = subprocess.run(["ps", "-o", "user=", "-p", pid.split("pid ")[1].split(")")[0]],
                            capture_output=True, text=True)
        assert ps.stdout.strip() == "zdlab-pg"

    assert run_zdlab("db", "stop", env=env).returncode == 0
    status = run_zdlab("db", "status", env=env)
    assert status.returncode == 3 and "not running" in status.stdout

    # A stopped server: one clear paragraph, no traceback, from Python and from the CLI.
    code = "import zdlab; zdlab.connect()"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            env={**os.environ, **env}, timeout=60)
    assert "not running" in result.stderr and "zdlab db start" in result.stderr
    assert_clear(run_zdlab("reset", env=env))


def test_busy_port_gives_clear_message(scratch_home):
    home, env = scratch_home
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", int(env["ZDLAB_PORT"])))
        holder.listen()
        result = run_zdlab("db", "start", env=env)
    assert_clear(result)
    assert "already in use" in result.stderr and "ZDLAB_PORT" in result.stderr
    assert not (home / ".zdlab" / "pgdata" / "postmaster.pid").exists()


def test_bad_zdlab_port_value(scratch_home):
    home, env = scratch_home
    result = run_zdlab("db", "start", env={**env, "ZDLAB_PORT": "abc"})
    assert_clear(result)
    assert "ZDLAB_PORT" in result.stderr


@pytest.mark.parametrize("case", ["password", "refused", "host", "database", "malformed"])
def test_wrong_database_url_messages(db_url, case):
    parts = psycopg.conninfo.conninfo_to_dict(db_url)
    port = parts.get("port", "5432")
    url = {
        "password": f"postgresql://postgres:not-the-password@127.0.0.1:{port}/workshop",
        "refused": f"postgresql://postgres:secret@127.0.0.1:{free_port()}/workshop",
        "host": "postgresql://postgres:secret@no-such-host.invalid:5432/workshop",
        "database": f"postgresql://{parts['user']}:{parts.get('password', '')}@127.0.0.1:{port}/no_such_db",
        "malformed": "postgresql://postgres:secret@127.0.0.1:notaport/workshop",
    }[case]
    expected = {"password": "password", "refused": "Nothing is listening", "host": "does not resolve",
                "database": "does not exist", "malformed": "not valid"}[case]
    result = run_zdlab("db", "status", env={"DATABASE_URL": url}, timeout=60)
    assert_clear(result)
    assert expected in result.stderr
    assert "not-the-password" not in result.stderr and "secret" not in result.stderr
    assert "***" in result.stderr


def test_notebook_shows_the_message_not_a_traceback():
    """In IPython (a notebook kernel) a ZdlabError shows as its paragraph only."""
    url = f"postgresql://postgres:secret@127.0.0.1:{free_port()}/workshop"
    result = subprocess.run(
        [sys.executable, "-m", "IPython", "--no-banner", "--colors=nocolor", "-c", "import zdlab; zdlab.connect()"],
        capture_output=True, text=True, timeout=60, env={**os.environ, "DATABASE_URL": url})
    out = result.stdout + result.stderr
    assert "Could not connect to PostgreSQL" in out and "Nothing is listening" in out
    assert "Traceback" not in out and 'File "' not in out


def test_redact_hides_password():
    assert config.redact("postgresql://u:p%40ss@h:1/d") == "postgresql://u:***@h:1/d"
    assert config.redact("postgresql://h:1/d") == "postgresql://h:1/d"
    assert config.sqlalchemy_url("postgres://u@h/d") == "postgresql+psycopg://u@h/d"


def test_connect_uses_the_workshop_database(db_url):
    with db.connect(application_name="zdlab/test") as conn:
        assert conn.execute("SELECT current_database()").fetchone()[0] == config.DB_NAME
    with pytest.raises(ZdlabError):
        connection.connect_url("postgresql://postgres:x@127.0.0.1:1/workshop")


def test_doctor_is_green_on_a_working_lab(db_url):
    result = run_zdlab("doctor", timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "[FAIL]" not in result.stdout
    for item in ("Python", "packages", "database reachable", "server version", "%sql magic", "free disk"):
        assert item in result.stdout


def test_doctor_fails_with_fixes_when_the_database_is_down():
    url = f"postgresql://postgres:secret@127.0.0.1:{free_port()}/workshop"
    result = run_zdlab("doctor", env={"DATABASE_URL": url}, timeout=120)
    assert result.returncode == 1
    assert "[FAIL] database reachable" in result.stdout and "fix:" in result.stdout


def test_sandbox_reset_ends_leftover_sessions_and_recreates(make_sandbox):
    box = make_sandbox("reset")
    leftover = box.connect("app")
    leftover.execute("CREATE TABLE t (x int)")
    box.reset()
    with box.connect() as conn:
        assert conn.execute("SELECT count(*) FROM pg_tables WHERE schemaname = %s", [box.schema]).fetchone()[0] == 0
        alive = conn.execute("SELECT count(*) FROM pg_stat_activity WHERE application_name = %s",
                             [box.app_name("app")]).fetchone()[0]
    assert alive == 0
    assert leftover.closed or leftover.broken or _is_dead(leftover)


def _is_dead(conn: psycopg.Connection) -> bool:
    try:
        conn.execute("SELECT 1")
    except psycopg.OperationalError:
        return True
    return False


def test_seed_builds_the_demo_schema(make_sandbox):
    from zdlab import seed

    box = make_sandbox("seed")
    assert seed(box, rows=5000, progress=False) == {"users": 5000, "orders": 5000}
    with box.connect() as conn:
        cols = conn.execute(
            "SELECT table_name, column_name, data_type, is_nullable FROM information_schema.columns "
            "WHERE table_schema = %s ORDER BY table_name, ordinal_position", [box.schema]).fetchall()
        assert [c[:2] for c in cols] == [
            ("orders", "id"), ("orders", "user_id"), ("orders", "amount_cents"), ("orders", "status"),
            ("orders", "created_at"), ("users", "id"), ("users", "email"), ("users", "name"),
            ("users", "created_at")]
        assert conn.execute("SELECT count(*) FROM users").fetchone()[0] == 5000
        assert conn.execute("SELECT count(*) FROM orders o JOIN users u ON u.id = o.user_id").fetchone()[0] == 5000
        indexes = {r[0] for r in conn.execute("SELECT indexdef FROM pg_indexes WHERE schemaname = %s", [box.schema])}
        assert any("(user_id)" in i for i in indexes)
        fks = conn.execute("SELECT count(*) FROM pg_constraint WHERE contype = 'f' "
                           "AND conrelid = 'orders'::regclass").fetchone()[0]
        assert fks == 1


def test_learner_gets_a_database_of_their_own(db_url):
    name = f"t{uuid.uuid4().hex[:6]}"
    try:
        result = run_zdlab("db", "url", "--show-password", env={"ZDLAB_LEARNER": name})
        assert result.returncode == 0, result.stderr
        url = result.stdout.strip()
        assert url.endswith(f"/zdlab_{name}")
        with psycopg.connect(url) as conn:  # created on first use
            assert conn.execute("SELECT current_database()").fetchone()[0] == f"zdlab_{name}"
        bad = run_zdlab("db", "url", env={"ZDLAB_LEARNER": "!!!"})
        assert_clear(bad)
        assert "ZDLAB_LEARNER" in bad.stderr
    finally:
        with psycopg.connect(db_url, autocommit=True) as admin:
            admin.execute(f"DROP DATABASE IF EXISTS zdlab_{name} WITH (FORCE)")


def test_hub_user_names_the_learner_on_a_shared_server(monkeypatch):
    monkeypatch.delenv("ZDLAB_LEARNER", raising=False)
    monkeypatch.setenv("JUPYTERHUB_USER", "Ada.Lovelace@example.org")
    monkeypatch.setenv("DATABASE_URL", "postgresql://u:p@db:5432/workshop")
    # readable, and distinct from names that fold to the same slug (a hash of the full name)
    assert config.learner().startswith("ada_lovelace_example_org_")
    monkeypatch.setenv("JUPYTERHUB_USER", "ada_lovelace@example.org")
    folded = config.learner()
    monkeypatch.setenv("JUPYTERHUB_USER", "Ada.Lovelace@example.org")
    assert folded != config.learner()
    monkeypatch.setenv("ZDLAB_LEARNER", "x" * 200)  # any length: a valid, short database name
    assert len(config.learner_database(config.learner())) <= 63
    monkeypatch.delenv("ZDLAB_LEARNER")
    monkeypatch.setenv("JUPYTERHUB_USER", "x" * 60)
    long_a = config.learner()
    monkeypatch.setenv("JUPYTERHUB_USER", "x" * 59 + "y")
    assert len(long_a) <= 40 and long_a != config.learner()
    monkeypatch.setenv("ZDLAB_LEARNER", "bob")  # an explicit learner name wins
    assert config.learner() == "bob"
    monkeypatch.delenv("ZDLAB_LEARNER")
    monkeypatch.delenv("DATABASE_URL")  # the embedded server is the user's own: no learner database
    assert config.learner() is None


def test_port_left_in_time_wait_by_a_stopped_server_is_free():
    """Right after a server stops, its closed connections sit in TIME_WAIT: the port is free."""
    from zdlab.server import port_in_use

    listener = socket.socket()
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as Postgres does
    listener.bind(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    listener.listen()
    client = socket.create_connection(("127.0.0.1", port))
    served, _ = listener.accept()
    assert port_in_use(port)  # a live listener: busy
    served.close()  # the server side closes first: its end goes to TIME_WAIT on `port`
    client.close()
    listener.close()
    assert not port_in_use(port)


@pytest.mark.parametrize(("num", "ok", "warned"), [(180001, True, False), (150010, True, False),
                                                   (140012, True, True), (120020, True, True),
                                                   (100023, False, False)])
def test_doctor_warns_below_the_tested_versions(db_url, monkeypatch, num, ok, warned):
    from zdlab import doctor

    monkeypatch.setattr(doctor.db, "server_version_num", lambda conn: num)  # the server says 15/18 here
    reachable, version = doctor._database()
    assert reachable.ok and version.ok is ok and bool(version.warning) is warned, version
    if warned:
        assert "tested on PostgreSQL 15 and 18" in version.what
    if not ok:
        assert "11 or newer" in version.fix
