"""The embedded server's files and failures (issue 19): folder modes above the kit untouched,
secret files private from their first byte, no `trust` socket auth, and a way out of a full disk,
an empty password file and a data folder deleted under a running server."""

from __future__ import annotations

import errno
import os
import shutil
import signal
import subprocess
import time
import uuid
from pathlib import Path

import psycopg
import pytest
from test_foundation import REPO, assert_clear, free_port, run_zdlab  # noqa: I001 (tests/ is on sys.path)

from zdlab import config, doctor, server
from zdlab.errors import ZdlabError

ROOT = os.geteuid() == 0


@pytest.fixture
def base():
    """A folder others may traverse (pytest's tmp_path is private to root: the service user could
    not reach it), removed afterwards."""
    path = REPO / ".zdlab" / "test-homes" / uuid.uuid4().hex[:8]
    path.mkdir(parents=True)
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def home():
    """A kit home of its own (own data folder, own port), its server stopped afterwards."""
    path = REPO / ".zdlab" / "test-homes" / uuid.uuid4().hex[:8]
    path.mkdir(parents=True)
    env = {"ZDLAB_HOME": str(path), "ZDLAB_PORT": str(free_port()), "DATABASE_URL": ""}
    yield path, env
    run_zdlab("db", "stop", env=env)
    shutil.rmtree(path, ignore_errors=True)


def _modes(path: Path) -> dict[Path, int]:
    return {p: p.stat().st_mode & 0o7777 for p in [path, *path.parents]}


@pytest.mark.skipif(not ROOT, reason="as root only: the server then runs as another user")
def test_started_as_root_under_a_private_folder_no_folder_mode_changes(base):
    private = base / "home-of-someone"
    private.mkdir(mode=0o700)
    private.chmod(0o700)
    state = private / "checkout" / ".zdlab"
    state.mkdir(parents=True)
    before = _modes(state) | _modes(server.bin_dir())
    env = {"ZDLAB_STATE_DIR": str(state), "ZDLAB_PORT": str(free_port()), "DATABASE_URL": "",
           "ZDLAB_SERVICE_HOME": str(base / "service")}
    try:
        started = run_zdlab("db", "start", env=env, timeout=180)
        assert started.returncode == 0, started.stderr
        url = run_zdlab("db", "url", "--show-password", env=env).stdout.strip()
        with psycopg.connect(url) as conn:
            assert conn.execute("SELECT 1").fetchone() == (1,)
    finally:
        run_zdlab("db", "stop", env=env)
    assert _modes(state) | _modes(server.bin_dir()) == before, "a folder's mode was changed"
    assert private.stat().st_mode & 0o777 == 0o700
    assert list((base / "service").glob("*/pgdata/PG_VERSION")), "the data went where the service user can reach"


def test_secret_files_are_private_and_socket_auth_is_not_trust(home):
    path, env = home
    created: list[int] = []
    real_open = os.open

    def spy(file, flags, mode=0o777, *args, **kwargs):  # the mode each secret file is created with
        if os.fspath(file).endswith((".tmp",)) and flags & os.O_CREAT:
            created.append(mode)
        return real_open(file, flags, mode, *args, **kwargs)

    started = run_zdlab("db", "start", env=env, timeout=180)
    assert started.returncode == 0, started.stderr
    for name in ("password", "pgpass"):
        assert (path / ".zdlab" / name).stat().st_mode & 0o077 == 0, name
    hba = (path / ".zdlab" / "pgdata" / "pg_hba.conf").read_text()
    rules = [line.split() for line in hba.splitlines() if line.strip() and not line.startswith("#")]
    assert rules and not any(rule[-1] == "trust" for rule in rules), rules
    # write_secret creates the file with mode 600 itself (never chmod'ed after writing)
    os.open = spy
    try:
        config.write_secret(path / "probe", "x")
    finally:
        os.open = real_open
    assert created == [0o600] and (path / "probe").stat().st_mode & 0o777 == 0o600


def test_a_full_disk_says_so_and_advises_nothing_that_deletes_data(base):
    if not ROOT or shutil.which("mount") is None:
        pytest.skip("mounting a small file system needs root")
    small = base / "small"
    small.mkdir()
    small.chmod(0o755)
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=8m,mode=0755", "tmpfs", str(small)]).returncode:
        pytest.skip("this machine cannot mount a tmpfs")
    try:
        env = {"ZDLAB_STATE_DIR": str(small / "state"), "ZDLAB_PORT": str(free_port()), "DATABASE_URL": ""}
        result = run_zdlab("db", "start", env=env, timeout=180)
        assert_clear(result)
        assert "is full" in result.stderr and "Your data is intact" in result.stderr, result.stderr
        assert "reset --server" not in result.stderr and "Remove" not in result.stderr
        assert not list((small / "state").glob("*.tmp")) and not (small / "state" / "password").exists()
        # doctor looks at the data folder's file system, not the checkout's
        with pytest.MonkeyPatch.context() as mp:  # the embedded server's folder, whatever server the suite uses
            mp.setenv("ZDLAB_STATE_DIR", env["ZDLAB_STATE_DIR"])
            mp.delenv("DATABASE_URL", raising=False)
            line = doctor._disk()
        assert not line.ok and str(small) in line.what and "0.0 GB" in line.what, line.what
    finally:
        subprocess.run(["umount", "-l", str(small)])


def test_a_full_disk_while_the_password_is_written_leaves_no_file(tmp_path, monkeypatch):
    monkeypatch.setenv("ZDLAB_STATE_DIR", str(tmp_path))

    def full(fd):  # where a full disk reports what the page cache could not write
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "fsync", full)
    with pytest.raises(ZdlabError, match="is full") as info:
        server._write_password("s3cret")
    monkeypatch.undo()
    assert "s3cret" not in info.value.message and "reset --server" not in info.value.message
    assert list(tmp_path.iterdir()) == [], "nothing left behind, not even a 0644 or empty file"


def test_an_empty_password_file_is_renewed_like_a_missing_one(home):
    path, env = home
    assert run_zdlab("db", "start", env=env, timeout=180).returncode == 0
    url = run_zdlab("db", "url", "--show-password", env=env).stdout.strip()
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("CREATE TABLE kept (x int); INSERT INTO kept VALUES (7)")
    assert run_zdlab("db", "stop", env=env).returncode == 0
    (path / ".zdlab" / "password").write_text("")  # truncated by a full disk
    message = run_zdlab("db", "url", env=env)
    assert_clear(message)
    assert "missing or empty" in message.stderr
    again = run_zdlab("db", "start", env=env, timeout=180)
    assert again.returncode == 0, again.stderr
    with psycopg.connect(run_zdlab("db", "url", "--show-password", env=env).stdout.strip()) as conn:
        assert conn.execute("SELECT x FROM kept").fetchone() == (7,)


def test_a_data_folder_deleted_under_a_running_server_is_named_as_such(home):
    path, env = home
    assert run_zdlab("db", "start", env=env, timeout=180).returncode == 0
    pid = int((path / ".zdlab" / "pgdata" / "postmaster.pid").read_text().split()[0])
    try:
        shutil.rmtree(path / ".zdlab" / "pgdata")
        result = run_zdlab("db", "start", env=env, timeout=60)
        assert_clear(result)
        assert "was deleted while the server was running" in result.stderr, result.stderr
        assert f"kill -INT {pid}" in result.stderr and "in use by another program" not in result.stderr
    finally:
        os.kill(pid, signal.SIGINT)
        for _ in range(200):
            if not server._is_alive(pid):
                break
            time.sleep(0.05)
