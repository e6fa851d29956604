"""The room's tools (issue 17): `zdlab lint` (real squawk runs), `zdlab progress`, `zdlab preflight`,
`zdlab db stop`'s message and `zdlab lab` finding a lab already running."""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
import sys
import uuid
from pathlib import Path

import nbformat
import pytest

from zdlab import config, db, lint, progress
from zdlab.exercises.nb00 import ex as nb00

REPO = Path(__file__).resolve().parent.parent


def zdlab(*args: str, env: dict | None = None, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "zdlab", *args], capture_output=True, text=True,
                          timeout=timeout, env={**os.environ, **(env or {})})


# -- lint ---------------------------------------------------------------------------------------------

def _sql(tmp: Path, name: str, text: str) -> Path:
    path = tmp / name
    path.write_text(text)
    return path


def test_lint_flags_a_plain_create_index_and_points_at_notebook_02(tmp_path):
    path = _sql(tmp_path, "0001_index.sql", "CREATE INDEX orders_created_at_idx ON orders (created_at);\n")
    result = zdlab("lint", str(path))
    assert result.returncode == 1, result.stdout + result.stderr
    out = result.stdout
    assert f"{path}:1: require-concurrent-index-creation" in out
    assert "ShareLock: writes wait for the whole build" in out  # the cheat sheet's lock
    assert "CREATE INDEX CONCURRENTLY (ShareUpdateExclusiveLock)" in out  # its recipe
    assert 'notebooks/02_preventive_actions.ipynb, section "4. Build indexes concurrently"' in out
    assert "zdlab measure" in out


def test_lint_passes_create_index_concurrently_and_says_why_it_ignores_squawks_advice(tmp_path):
    path = _sql(tmp_path, "0002_index.sql", "CREATE INDEX CONCURRENTLY orders_created_at_idx ON orders (created_at);\n")
    result = zdlab("lint", str(path))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "squawk found nothing to flag" in result.stdout
    # squawk did ask for IF NOT EXISTS and timeouts: shown, with the kit's measured reason, not counted
    assert "prefer-robust-stmts  (not counted)" in result.stdout
    assert "INVALID index" in result.stdout


def test_lint_json_over_a_folder_for_ci(tmp_path):
    _sql(tmp_path, "a.sql", "CREATE INDEX CONCURRENTLY i1 ON orders (created_at);\n")
    (tmp_path / "sub").mkdir()
    _sql(tmp_path / "sub", "b.sql", "SET lock_timeout = '1s';\nALTER TABLE users ADD CONSTRAINT u UNIQUE (email);\n")
    result = zdlab("lint", str(tmp_path), "--json")
    assert result.returncode == 1, result.stderr
    report = json.loads(result.stdout)
    counted = [v for v in report["violations"] if not v["overruled"]]
    assert report["findings"] == len(counted) >= 1
    unique = [v for v in counted if v["rule"] == "disallowed-unique-constraint"]
    assert unique and unique[0]["file"].endswith("sub/b.sql") and unique[0]["line"] == 2
    assert unique[0]["section"].startswith("Exercise 3: a unique constraint")
    assert {v["file"] for v in report["violations"] if v["overruled"]} == {str(tmp_path / "a.sql")}


def test_lint_says_nothing_false_where_squawk_is_silent(tmp_path):
    """A lock-safe ADD COLUMN breaks prepared SELECT * (notebook 03 §4): squawk does not see it, and
    lint claims no finding of its own; it points at zdlab measure."""
    path = _sql(tmp_path, "0003.sql", "SET lock_timeout = '1s';\nSET statement_timeout = '5s';\n"
                                      "ALTER TABLE users ADD COLUMN IF NOT EXISTS nickname text;\n")
    result = zdlab("lint", str(path))
    assert result.returncode == 0, result.stdout
    assert "squawk found nothing to flag" in result.stdout and "zdlab measure" in result.stdout
    assert "prepared SELECT *" in result.stdout  # said as what a linter cannot see, not as a finding


def _headings(notebook: str) -> set[str]:
    nb = nbformat.read(REPO / notebook, as_version=4)
    return {line.lstrip("#").strip() for c in nb.cells if c.cell_type == "markdown"
            for line in c.source.splitlines() if line.startswith("#")}


def test_every_section_lint_names_is_a_heading_of_that_notebook():
    named = [(a.notebook, a.section) for a in lint.ADVICE.values() if a.notebook]
    named += [(nb, section) for _, nb, section in lint.OVERRULED.values()]
    for notebook, section in named:
        assert section in _headings(notebook), f"{notebook} has no heading {section!r}"


def test_lint_rule_names_are_squawks(tmp_path):
    """The ADVICE keys are rule names squawk really reports: each statement below trips its rule."""
    trips = {
        "require-concurrent-index-creation": "CREATE INDEX i ON orders (created_at);",
        "disallowed-unique-constraint": "ALTER TABLE users ADD CONSTRAINT u UNIQUE (email);",
        "renaming-column": "ALTER TABLE users RENAME COLUMN name TO full_name;",
        "ban-drop-column": "ALTER TABLE users DROP COLUMN name;",
        "ban-drop-table": "DROP TABLE orders;",
        "changing-column-type": "ALTER TABLE orders ALTER COLUMN amount_cents TYPE bigint;",
        "adding-field-with-default": "ALTER TABLE users ADD COLUMN t timestamptz DEFAULT clock_timestamp();",
        "adding-not-nullable-field": "ALTER TABLE users ALTER COLUMN name SET NOT NULL;",
        "adding-required-field": "ALTER TABLE users ADD COLUMN status text NOT NULL;",
        "constraint-missing-not-valid": "ALTER TABLE users ADD CONSTRAINT c CHECK (id > 0);",
        "adding-foreign-key-constraint": "ALTER TABLE orders ADD CONSTRAINT f FOREIGN KEY (user_id) REFERENCES users;",
        "ban-concurrent-index-creation-in-transaction": "BEGIN; CREATE INDEX CONCURRENTLY i ON orders (id); COMMIT;",
        "require-lock-timeout": "ALTER TABLE users ADD COLUMN x int;",
    }
    for rule, statement in trips.items():
        found = {f.rule for f in lint.lint(str(_sql(tmp_path, f"{rule}.sql", statement + "\n")))}
        assert rule in found, (rule, found)
        assert rule in lint.ADVICE


# -- progress -----------------------------------------------------------------------------------------

ANSWER_00 = ("SELECT pid, application_name FROM pg_stat_activity WHERE datname = current_database() "
             "AND starts_with(application_name, 'zdlab/zd_00_setup/')")


@pytest.fixture
def own_progress(tmp_path, monkeypatch):
    monkeypatch.setenv("ZDLAB_PROGRESS_DIR", str(tmp_path / "progress"))
    monkeypatch.delenv("ZDLAB_LEARNER", raising=False)
    return tmp_path / "progress"


def _exercises_in_the_notebooks() -> int:
    """The exercises a learner meets: one `ex.qN.check()` cell each in the solution notebooks."""
    found = set()
    for nb in (Path(__file__).resolve().parent.parent / "solutions").glob("*.ipynb"):
        for cell in json.loads(nb.read_text())["cells"]:
            found |= {(nb.stem, q) for q in re.findall(r"^ex\.(q\d+)\.check\(\)", "".join(cell["source"]), re.M)}
    return len(found)


EXERCISES = _exercises_in_the_notebooks()


def test_a_passed_check_records_itself_per_learner(db_url, own_progress, monkeypatch):
    monkeypatch.delenv("ZDLAB_STRICT_CHECKS", raising=False)  # an incorrect answer returns, not raises
    monkeypatch.setenv("ZDLAB_LEARNER", "alice")
    box = nb00.q1._sandbox().reset()
    try:
        wrong = nb00.q1.check(answer_sql="SELECT 1 AS pid, 'x' AS application_name", sandbox=box)
        assert wrong.status == "incorrect"
        assert "00_setup q1" not in progress.load(), "an incorrect answer was recorded as passed"
        assert nb00.q1.check(answer_sql=ANSWER_00, sandbox=box)
        assert "00_setup q1" in progress.load()
        assert (own_progress / "alice.json").exists()
        table = zdlab("progress", env={"ZDLAB_LEARNER": "alice", "ZDLAB_PROGRESS_DIR": str(own_progress)})
        assert table.returncode == 0
        assert [line for line in table.stdout.splitlines() if line.startswith("00_setup") and "✓" in line]
        assert f"1 of {EXERCISES} exercises passed by alice" in table.stdout
        other = zdlab("progress", env={"ZDLAB_LEARNER": "bob", "ZDLAB_PROGRESS_DIR": str(own_progress)})
        assert f"0 of {EXERCISES} exercises passed by bob" in other.stdout and "✓" not in other.stdout
        reset = zdlab("progress", "--reset", env={"ZDLAB_LEARNER": "alice", "ZDLAB_PROGRESS_DIR": str(own_progress),
                                                  "DATABASE_URL": ""})
        assert reset.returncode == 0 and "cleared" in reset.stdout
        monkeypatch.setenv("ZDLAB_LEARNER", "alice")
        assert progress.load() == {}
    finally:
        box.drop()


def test_a_progress_file_that_cannot_be_written_never_breaks_a_check(db_url, tmp_path, monkeypatch):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    monkeypatch.setenv("ZDLAB_PROGRESS_DIR", str(blocker / "progress"))  # under a file: cannot be created
    box = nb00.q1._sandbox().reset()
    try:
        assert nb00.q1.check(answer_sql=ANSWER_00, sandbox=box).status == "correct"
        assert progress.load() == {}
    finally:
        box.drop()


def test_the_room_view_reads_every_learner_on_the_shared_server(db_url, tmp_path, monkeypatch):
    """Shared-server mode: DATABASE_URL + ZDLAB_LEARNER; passes land in each learner's database."""
    learners = [f"room_{uuid.uuid4().hex[:6]}_{i}" for i in range(2)]
    env = {"DATABASE_URL": db_url, "ZDLAB_PROGRESS_DIR": str(tmp_path)}
    try:
        for learner, passed in zip(learners, (("00_setup", "q1"), ("01_risks", "q2")), strict=True):
            monkeypatch.setenv("DATABASE_URL", db_url)
            monkeypatch.setenv("ZDLAB_LEARNER", learner)
            monkeypatch.setenv("ZDLAB_PROGRESS_DIR", str(tmp_path / learner))
            progress.record(*passed)
            with db.connect() as conn:  # the row is in that learner's own database
                assert conn.execute("SELECT exercise FROM public.zdlab_progress").fetchall() == [(" ".join(passed),)]
        room = zdlab("progress", "--room", env={**env, "ZDLAB_LEARNER": ""})
        assert room.returncode == 0, room.stderr
        rows = {line.split()[0]: line for line in room.stdout.splitlines() if line.startswith("room_")}
        assert set(rows) >= set(learners)
        assert "1/1" in rows[learners[0]].split()[1] and "0/5" in rows[learners[0]].split()[2]
        assert "0/1" in rows[learners[1]].split()[1] and "1/5" in rows[learners[1]].split()[2]
        # the same through the learners' files (an embedded server each, files under a shared folder)
        files = zdlab("progress", "--room", "--files", str(tmp_path / "*" / "*.json"), env={"DATABASE_URL": ""})
        assert files.returncode == 0, files.stderr
        assert all(any(line.startswith(x) for line in files.stdout.splitlines()) for x in learners)
    finally:
        for learner in learners:
            db.drop_learner_database(learner, db_url)


# -- db stop and lab ----------------------------------------------------------------------------------

def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_db_stop_says_it_stopped_a_running_server(tmp_path):
    if config.external_url():
        pytest.skip("DATABASE_URL is set: the kit starts and stops no server")
    env = {"ZDLAB_STATE_DIR": str(tmp_path / "state"), "ZDLAB_PORT": str(_free_port()), "DATABASE_URL": ""}
    try:
        started = zdlab("db", "start", env=env)
        assert started.returncode == 0, started.stderr
        stopped = zdlab("db", "stop", env=env)
        assert stopped.returncode == 0 and stopped.stdout.startswith("stopped the embedded PostgreSQL (pid ")
        again = zdlab("db", "stop", env=env)
        assert "was not running" in again.stdout and "nothing to stop" in again.stdout
    finally:
        zdlab("db", "stop", env=env)


def test_lab_already_running_prints_its_url_instead_of_starting_another(tmp_path):
    runtime = tmp_path / "runtime"
    runtime.mkdir()
    notebooks = tmp_path / "nbs"
    notebooks.mkdir()
    port = _free_port()
    info = {"url": f"http://127.0.0.1:{port}/", "port": port, "pid": os.getpid(), "token": "abc123",
            "root_dir": str(notebooks), "hostname": "127.0.0.1", "base_url": "/", "secure": False,
            "notebook_dir": str(notebooks), "password": False, "sock": "", "version": "2"}
    (runtime / f"jpserver-{os.getpid()}.json").write_text(json.dumps(info))
    result = zdlab("lab", "--notebook-dir", str(notebooks), env={"JUPYTER_RUNTIME_DIR": str(runtime)}, timeout=60)
    assert result.returncode == 0, result.stderr
    url = f"http://127.0.0.1:{port}/lab?token=abc123"
    assert f"already running for this kit (pid {os.getpid()}): {url}" in result.stdout


# -- preflight ----------------------------------------------------------------------------------------

def _last_line(result: subprocess.CompletedProcess) -> str:
    return result.stdout.strip().splitlines()[-1]


def test_preflight_ok_prints_one_line_to_paste(db_url):
    result = zdlab("preflight", "--rows", "1000", env={"ZDLAB_LAB_PORT": str(_free_port())}, timeout=600)
    line = _last_line(result)
    assert result.returncode == 0, result.stdout + result.stderr
    assert line.startswith("zdlab preflight: OK (python ")
    for part in ("disk ", "server up", "seed 1k rows in ", "00_setup ran in "):
        assert part in line, line


def test_preflight_fails_with_a_clear_line_when_the_port_is_taken(tmp_path):
    if config.external_url():
        pytest.skip("DATABASE_URL is set: no embedded server port to check")
    holder = socket.socket()
    holder.bind(("127.0.0.1", 0))
    holder.listen()
    port = holder.getsockname()[1]
    try:
        result = zdlab("preflight", "--rows", "1000", "--no-notebook",
                       env={"ZDLAB_PORT": str(port), "ZDLAB_STATE_DIR": str(tmp_path / "state"), "DATABASE_URL": ""})
    finally:
        holder.close()
    line = _last_line(result)
    assert result.returncode == 1
    # this test's own process holds the port: the line names it
    assert line.startswith(f"zdlab preflight: FAIL: port {port} taken by "), line
    assert f"(pid {os.getpid()})" in line or "lsof" in line, line
    assert "server start skipped" in result.stdout and "seed skipped" in result.stdout


@pytest.mark.skipif(os.geteuid() != 0 or not shutil.which("mount"), reason="mounting a tiny tmpfs needs root")
def test_preflight_fails_with_a_clear_line_when_the_disk_is_full(tmp_path):
    tiny = tmp_path / "tiny"
    tiny.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(tiny)], capture_output=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.decode().strip()}")
    try:
        (tiny / "filler").write_bytes(b"\0" * 900_000)  # a nearly full filesystem, measured for real
        result = zdlab("preflight", "--rows", "1000", "--no-notebook", "--disk-path", str(tiny))
    finally:
        subprocess.run(["umount", str(tiny)], check=False)
    line = _last_line(result)
    assert result.returncode == 1
    assert line.startswith("zdlab preflight: FAIL: disk "), line
    assert f"MB free at {tiny} (needs 2 GB)" in line, line
