"""Bad input, one test per case: the kit's own message, with the next step, and nothing lost.

Every case listed in docs/troubleshooting.md (between its ``bad-input cases`` markers) is run
here, and the phrases that page quotes are what the test expects, so the page and the kit say
the same thing. Each case asserts:

(a) the kit's kind of failure: exit 2 for BadInput, 1 for any other ZdlabError (cli.py), or the
    exception type from Python; never a traceback;
(b) one paragraph that names the problem and the next step (the page's quoted phrases);
(c) nothing lost: a sentinel table in a sandbox made before the bad call has the same rows after;
    for migrations, no scratch sandbox and no session is left behind, and a target sandbox's
    tables are unchanged.

The last part gives every exercise's ``check()`` answers of the wrong type or shape, found by
walking the registered notebooks, so a new exercise is covered without touching this file.
"""

from __future__ import annotations

import importlib
import os
import pkgutil
import pwd
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg
import pytest

import zdlab.exercises
from zdlab import checks, config, db, server
from zdlab.checks import Exercise
from zdlab.errors import BadInput, ZdlabError
from zdlab.locks import locks_taken
from zdlab.measure import measure
from zdlab.sandbox import Sandbox
from zdlab.seed import seed

REPO = Path(__file__).resolve().parent.parent
DOC = REPO / "docs" / "troubleshooting.md"
BEGIN, END = "<!-- bad-input cases: begin", "<!-- bad-input cases: end -->"


# -- the documented cases --------------------------------------------------------------------------

@dataclass
class Row:
    """One documented case: the phrases the kit prints for the problem, and for the next step."""

    case: str
    section: str
    problem: list[str]
    next_step: str | None


def documented() -> dict[str, Row]:
    """The rows of docs/troubleshooting.md's case tables: ``| `case` | see | why | do |``."""
    text = DOC.read_text(encoding="utf-8")
    assert BEGIN in text and END in text, f"{DOC}: the case markers are missing"
    rows, section = {}, ""
    for line in text[text.index(BEGIN):text.index(END)].splitlines():
        if line.startswith("## "):
            section = line[3:]
        cells = [c.strip() for c in line.strip().strip("|").split("|")] if line.startswith("|") else []
        match = re.fullmatch(r"`([a-z-]+)`", cells[0]) if len(cells) == 4 else None
        if match:
            opening = re.match(r"`([^`]+)`", cells[3])  # what to do: a phrase in code that opens the cell
            rows[match.group(1)] = Row(match.group(1), section, re.findall(r"`([^`]+)`", cells[1]),
                                       opening.group(1) if opening else None)
    return rows


ROWS = documented()


def row(case: str) -> Row:
    assert case in ROWS, f"case {case!r} is not documented in {DOC.relative_to(REPO)}"
    return ROWS[case]


def assert_says(text: str, case: str, *, next_step: bool = True) -> None:
    """The documented phrases of ``case`` are in ``text``, which is one paragraph, with no traceback."""
    r = row(case)
    assert "Traceback" not in text and 'File "' not in text, text
    missing = [p for p in r.problem if p not in text]
    assert r.problem and not missing, f"{case}: the message lacks {missing}:\n{text}"
    if next_step:
        assert r.next_step, f"{case}: the page gives no next step (a phrase in code opening 'what to do')"
        assert r.next_step in text, f"{case}: the message lacks the next step {r.next_step!r}:\n{text}"


def test_every_case_has_a_problem_and_a_next_step_on_the_page():
    assert len(ROWS) >= 30, sorted(ROWS)
    for r in ROWS.values():
        assert r.problem, f"{r.case}: no quoted message"
        if not r.section.startswith("Answers"):  # a check's verdict may stop at what is wrong
            assert r.next_step, f"{r.case}: no quoted next step"


def test_every_documented_case_is_tested():
    tested = ({c.row for c in CLI_CASES} | {c.row for c in API_CASES} | set(DOCUMENTED_ANSWERS.values())
              | {"answer-could-not-check", "sql-error", "missing-table", "api-not-a-sandbox", "demo-scale-invalid",
                 "claim-failed"})
    assert tested == set(ROWS), {"documented, not tested": set(ROWS) - tested,
                                 "tested, not documented": tested - set(ROWS)}


@pytest.mark.parametrize("value", ["abc", "0", "1000", "nan"])
def test_demo_scale_must_be_a_usable_number(value, monkeypatch):
    from zdlab.config import demo_scale

    monkeypatch.setenv("ZDLAB_DEMO_SCALE", value)
    with pytest.raises(BadInput) as info:
        demo_scale()
    assert_says(info.value.message, "demo-scale-invalid")


def test_a_claim_that_does_not_hold_is_one_paragraph(capsys):
    from zdlab.claims import ClaimFailed, confirm

    confirm("a held claim", True, "what was measured")
    assert capsys.readouterr().out == "✓ a held claim: what was measured\n"
    with pytest.raises(ClaimFailed) as info:
        confirm("the build blocks writes", False, "SAFE; longest wait 0 ms")
    assert_says(info.value.message, "claim-failed")
    assert "the build blocks writes" in info.value.message and "SAFE; longest wait 0 ms" in info.value.message
    assert info.value._render_traceback_() == [f"\x1b[31mClaimFailed\x1b[0m: {info.value.message}"]


def test_readme_and_facilitator_guide_point_here():
    for doc in (REPO / "README.md", REPO / "docs" / "facilitator.md"):
        assert "troubleshooting.md" in doc.read_text(encoding="utf-8"), doc


# -- helpers -----------------------------------------------------------------------------------------

def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_zdlab(*args: str, env: dict | None = None, timeout: float = 120,
          wrapper: list[str] | None = None) -> subprocess.CompletedProcess:
    cmd = wrapper or [sys.executable, "-m", "zdlab"]
    return subprocess.run([*cmd, *args], capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, **(env or {})})


def assert_kit_failure(result: subprocess.CompletedProcess, code: int, case: str) -> None:
    """(a) and (b) on the command line: the exit code, one paragraph on stderr, the page's phrases."""
    out = result.stdout + result.stderr
    assert result.returncode == code, (result.returncode, out)
    message = result.stderr.strip()
    assert message.startswith("zdlab: "), out
    assert "\n" not in message, f"not one paragraph:\n{message}"
    assert_says(message, case)


@pytest.fixture(scope="module")
def sentinel(db_url):
    """(c): a sandbox with a table whose rows must survive every bad call."""
    box = Sandbox(f"test_badinput_sentinel_{uuid.uuid4().hex[:6]}", db_url).reset()
    with box.connect() as conn:
        conn.execute("CREATE TABLE sentinel (id int PRIMARY KEY, note text)")
        conn.execute("INSERT INTO sentinel VALUES (1, 'kept'), (2, 'after'), (3, 'bad input')")
    yield box
    box.drop()


def rows_of(box: Sandbox, table: str = "sentinel") -> list[tuple]:
    with box.connect("test") as conn:
        return conn.execute(psycopg.sql.SQL("SELECT * FROM {} ORDER BY 1").format(
            psycopg.sql.Identifier(table))).fetchall()


def tables_of(box: Sandbox) -> dict[str, tuple]:
    """Every table of the sandbox: row count and an md5 of its rows."""
    with box.connect("test") as conn:
        names = [r[0] for r in conn.execute("SELECT tablename FROM pg_tables WHERE schemaname = %s", [box.schema])]
        return {n: conn.execute(psycopg.sql.SQL("SELECT count(*), md5(coalesce(string_agg(t::text, '|' "
                                                "ORDER BY t::text), '')) FROM {} t").format(
            psycopg.sql.Identifier(n))).fetchone() for n in names}


def leftovers(prefixes: tuple[str, ...] = ("zd_measure_", "zd_locks_")) -> tuple[set[str], int]:
    """Scratch sandboxes of measure/locks in this database, and sessions tagged for them."""
    with db.connect(application_name="zdlab/test") as conn:
        schemas = {r[0] for r in conn.execute("SELECT nspname FROM pg_namespace")
                   if r[0].startswith(prefixes)}
        sessions = conn.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
            "AND starts_with(application_name, 'zdlab/') AND split_part(application_name, '/', 2) "
            "LIKE ANY(%s)", [[p.replace("_", "\\_") + "%" for p in prefixes]]).fetchone()[0]
    return schemas, sessions


def no_leftovers(before: set[str], prefixes: tuple[str, ...] = ("zd_measure_", "zd_locks_")) -> None:
    deadline = time.monotonic() + 5  # a backend exits a moment after its client closed the socket
    while True:
        schemas, sessions = leftovers(prefixes)
        if (schemas <= before and not sessions) or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    assert schemas <= before, f"scratch sandboxes left: {schemas - before}"
    assert not sessions, f"{sessions} session(s) left behind"


# -- connections and the embedded server, from the command line ---------------------------------------

@dataclass
class Ctx:
    """What a case needs to build its command: the workshop URL, a folder of its own, a busy port."""

    url: str
    tmp: Path
    cleanup: list[Callable[[], None]] = field(default_factory=list)

    def part(self, key: str) -> str:
        return str(psycopg.conninfo.conninfo_to_dict(self.url).get(key, ""))

    def not_postgres(self) -> int:
        """A port where a program that is not PostgreSQL answers (a web server's reply)."""
        listener = socket.socket()
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        self.cleanup.append(listener.close)

        def serve() -> None:
            while True:
                try:
                    conn, _ = listener.accept()
                except OSError:
                    return
                with conn:
                    conn.sendall(b"HTTP/1.0 400 Bad Request\r\n\r\n")

        threading.Thread(target=serve, daemon=True).start()
        return listener.getsockname()[1]

    def busy_port(self) -> int:
        holder = socket.socket()
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        self.cleanup.append(holder.close)
        return holder.getsockname()[1]

    def own_state(self, **env: str) -> dict:
        """A state folder of its own (the shared server is never touched), no DATABASE_URL."""
        return {"ZDLAB_STATE_DIR": str(self.tmp / "state"), "DATABASE_URL": "", **env}

    def stopped_server(self) -> dict:
        """The state of an embedded server that is stopped: its password, no running postmaster."""
        state = self.tmp / "stopped"
        state.mkdir()
        (state / "password").write_text("not-used\n")
        return {"ZDLAB_STATE_DIR": str(state), "DATABASE_URL": "", "ZDLAB_PORT": str(free_port())}


def url_with(ctx: Ctx, **parts: str) -> str:
    p = {"user": ctx.part("user"), "password": ctx.part("password"), "host": "127.0.0.1",
         "port": ctx.part("port") or "5432", "dbname": ctx.part("dbname"), **parts}
    return f"postgresql://{p['user']}:{p['password']}@{p['host']}:{p['port']}/{p['dbname']}"


@dataclass
class CliCase:
    id: str
    row: str
    code: int  # exit code: 2 BadInput, 1 ZdlabError
    args: Callable[[Ctx], tuple[list[str], dict]]
    reaches_db: bool = False  # the call talks to the workshop's server: check the sentinel after


def _sql_file(ctx: Ctx, text: str | bytes, name: str = "m.sql") -> str:
    path = ctx.tmp / name
    path.write_bytes(text if isinstance(text, bytes) else text.encode())
    return str(path)


CLI_CASES = [
    CliCase("url-unparsable", "url-not-valid", 1, lambda c: (["db", "status"], {"DATABASE_URL": "not a url"})),
    CliCase("url-ipv6-unclosed", "url-not-valid", 1,
            lambda c: (["db", "status"], {"DATABASE_URL": "postgresql://u:secret@[::1/workshop"})),
    CliCase("url-port-not-a-number", "url-not-valid", 1,
            lambda c: (["db", "status"], {"DATABASE_URL": url_with(c, port="notaport")})),
    CliCase("url-port-out-of-range", "url-not-valid", 1,
            lambda c: (["db", "status"], {"DATABASE_URL": url_with(c, port="99999")})),
    CliCase("url-wrong-host", "url-wrong-host", 1,
            lambda c: (["db", "status"], {"DATABASE_URL": url_with(c, host="no-such-host.invalid")})),
    CliCase("url-wrong-port", "url-wrong-port", 1,
            lambda c: (["db", "status"], {"DATABASE_URL": url_with(c, port=str(c.not_postgres()))})),
    CliCase("url-wrong-database", "url-wrong-database", 1,
            lambda c: (["db", "status"], {"DATABASE_URL": url_with(c, dbname="no_such_database")}), True),
    CliCase("wrong-password", "wrong-password", 1,
            lambda c: (["db", "status"], {"DATABASE_URL": url_with(c, password="not-the-password")}), True),
    CliCase("wrong-password-reset", "wrong-password", 1,
            lambda c: (["reset"], {"DATABASE_URL": url_with(c, password="not-the-password")}), True),
    CliCase("server-down-status", "server-down", 1,
            lambda c: (["db", "status"], {"DATABASE_URL": url_with(c, port=str(free_port()))})),
    CliCase("server-down-reset", "server-down", 1,
            lambda c: (["reset"], {"DATABASE_URL": url_with(c, port=str(free_port()))})),
    CliCase("server-down-measure", "server-down", 1,
            lambda c: (["measure", _sql_file(c, "SELECT 1;"), "--rows", "10"],
                       {"DATABASE_URL": url_with(c, port=str(free_port()))})),
    CliCase("server-down-locks", "server-down", 1,
            lambda c: (["locks", _sql_file(c, "SELECT 1;")], {"DATABASE_URL": url_with(c, port=str(free_port()))})),
    CliCase("embedded-stopped-reset", "embedded-not-running", 1, lambda c: (["reset"], c.stopped_server())),
    CliCase("embedded-stopped-measure", "server-down", 1,
            lambda c: (["measure", _sql_file(c, "SELECT 1;"), "--rows", "10"], c.stopped_server())),
    CliCase("learner-name-punctuation", "learner-name-invalid", 2,
            lambda c: (["db", "url"], {"ZDLAB_LEARNER": "'; --"})),
    CliCase("port-busy", "port-busy", 1, lambda c: (["db", "start"], c.own_state(ZDLAB_PORT=str(c.busy_port())))),
    *[CliCase(f"port-invalid-{label}", "port-invalid", 2,
              lambda c, v=value: (["db", "start"], c.own_state(ZDLAB_PORT=v)))
      for label, value in [("letters", "abc"), ("privileged", "80"), ("too-large", "70000"),
                           ("negative", "-5"), ("suffix", "5432x"), ("zero", "0")]],
    CliCase("state-dir-under-a-file", "state-dir-unwritable", 1,
            lambda c: (["db", "start"], {"ZDLAB_STATE_DIR": _sql_file(c, "x", "a-file") + "/state",
                                         "DATABASE_URL": ""})),
    # the room's commands (issue 17)
    CliCase("lab-port-busy", "lab-port-busy", 1,
            lambda c: (["lab", "--notebook-dir", str(c.tmp)], {"ZDLAB_LAB_PORT": str(c.busy_port())})),
    *[CliCase(f"lab-port-invalid-{label}", "lab-port-invalid", 2,
              lambda c, v=value: (["lab", "--notebook-dir", str(c.tmp)], {"ZDLAB_LAB_PORT": v}))
      for label, value in [("letters", "abc"), ("privileged", "80"), ("too-large", "70000")]],
    CliCase("lint-path-missing", "lint-path-missing", 2, lambda c: (["lint", str(c.tmp / "no-such.sql")], {})),
    CliCase("lint-folder-empty", "lint-folder-empty", 2, lambda c: (["lint", str(c.tmp)], {})),
    CliCase("room-without-server", "room-without-server", 1,
            lambda c: (["progress", "--room"], {"DATABASE_URL": ""})),
    CliCase("room-no-files", "room-no-files", 2,
            lambda c: (["progress", "--room", "--files", str(c.tmp / "*" / "progress" / "*.json")], {})),
    # migration files
    *[CliCase(f"{command}-{label}", case, 2, lambda c, cmd=command, mk=make: ([cmd, mk(c)], {}))
      for command in ("measure", "locks")
      for label, case, make in [
          ("missing", "file-missing", lambda c: str(c.tmp / "no-such.sql")),
          ("folder", "file-folder", lambda c: str(c.tmp)),
          ("empty", "file-empty", lambda c: _sql_file(c, "")),
          ("comments-only", "file-empty", lambda c: _sql_file(c, "-- to do\n/* later */\n")),
          ("binary", "file-binary", lambda c: _sql_file(c, b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR\xff\xfe\x80")),
          ("nul-bytes", "file-nul", lambda c: _sql_file(c, "SELECT 1;\x00DROP TABLE sentinel;")),
          ("prose", "not-sql", lambda c: _sql_file(c, "Add a column to users, then backfill it.\n")),
          ("first-word-typo", "not-sql", lambda c: _sql_file(c, "SELEC * FROM users;")),
          ("psql-meta-command", "not-sql", lambda c: _sql_file(c, "\\d users\n")),
      ]],
]


@pytest.mark.parametrize("case", CLI_CASES, ids=[c.id for c in CLI_CASES])
def test_command_line(case, db_url, sentinel, tmp_path):
    ctx = Ctx(db_url, tmp_path)
    before = rows_of(sentinel)
    try:
        args, env = case.args(ctx)
        result = run_zdlab(*args, env=env, timeout=60)
    finally:
        for close in ctx.cleanup:
            close()
    assert_kit_failure(result, case.code, case.row)
    secret = ctx.part("password")
    assert not secret or f":{secret}@" not in result.stderr, "the server's password leaked into the message"
    assert "secret" not in result.stderr and "not-the-password" not in result.stderr
    if case.reaches_db:
        assert rows_of(sentinel) == before
    if env.get("ZDLAB_STATE_DIR"):  # a start that failed left no server behind
        assert not (Path(env["ZDLAB_STATE_DIR"]) / "pgdata" / "postmaster.pid").exists()


def test_unwritable_state_folder_as_an_unprivileged_user(db_url):
    """A folder the user may not write. Root writes anywhere, so as root the kit runs as zdlab-pg."""
    top = Path(tempfile.mkdtemp(prefix="zdlab-ro-", dir="/tmp"))
    try:
        readonly = top / "readonly"
        readonly.mkdir()
        top.chmod(0o755)
        readonly.chmod(0o555)
        wrapper = [sys.executable, "-m", "zdlab"]
        if os.geteuid() == 0:
            try:
                user = pwd.getpwnam(server.SERVICE_USER)
            except KeyError:
                pytest.skip(f"no {server.SERVICE_USER} user to drop root privileges to")
            # The interpreter lives under /root: load what the command needs, then drop privileges.
            wrapper = [sys.executable, "-c",
                       "import os, sys\nimport zdlab.cli, zdlab.server, zdlab.db, zdlab.sandbox\n"
                       f"os.setgroups([]); os.setgid({user.pw_gid}); os.setuid({user.pw_uid})\n"
                       "sys.exit(zdlab.cli.main(sys.argv[1:]))"]
        for state in (readonly, readonly / "state"):  # the folder itself, or one to create in it
            result = run_zdlab("db", "start", env={"ZDLAB_STATE_DIR": str(state), "DATABASE_URL": ""},
                           wrapper=wrapper, timeout=60)
            assert_kit_failure(result, 1, "state-dir-unwritable")
            assert "Permission denied" in result.stderr
    finally:
        shutil.rmtree(top, ignore_errors=True)


# -- the same through Python ----------------------------------------------------------------------------

URL_CASES = [c for c in CLI_CASES if c.id in (
    "url-unparsable", "url-ipv6-unclosed", "url-port-not-a-number", "url-port-out-of-range", "url-wrong-host",
    "url-wrong-port", "url-wrong-database", "wrong-password", "server-down-status")]


@pytest.mark.parametrize("case", URL_CASES, ids=lambda c: c.id)
def test_connection_cases_from_python(case, db_url, sentinel, tmp_path, monkeypatch):
    """A notebook's ``zdlab.sandbox(...)`` on a bad URL: a ZdlabError with the same paragraph."""
    ctx = Ctx(db_url, tmp_path)
    try:
        _, env = case.args(ctx)
        monkeypatch.setenv("DATABASE_URL", env["DATABASE_URL"])
        with pytest.raises(ZdlabError) as info:
            Sandbox("bad_url", url=config.external_url()).reset()
    finally:
        for close in ctx.cleanup:
            close()
    assert type(info.value) is ZdlabError and "\n" not in info.value.message
    assert_says(info.value.message, case.row)
    assert info.value._render_traceback_() == [f"\x1b[31mZdlabError\x1b[0m: {info.value.message}"]


@pytest.mark.parametrize("port, kind, case", [
    ("busy", ZdlabError, "port-busy"), ("abc", BadInput, "port-invalid"), ("80", BadInput, "port-invalid")])
def test_server_start_from_python(port, kind, case, tmp_path, monkeypatch):
    ctx = Ctx("", tmp_path)
    try:
        monkeypatch.setenv("ZDLAB_STATE_DIR", str(tmp_path / "state"))
        monkeypatch.setenv("ZDLAB_PORT", str(ctx.busy_port()) if port == "busy" else port)
        with pytest.raises(kind) as info:
            server.start()
    finally:
        for close in ctx.cleanup:
            close()
    assert_says(info.value.message, case)
    assert not (tmp_path / "state" / "pgdata").exists()


# -- migrations given to measure() and locks_taken() -------------------------------------------------------

@dataclass
class ApiCase:
    id: str
    row: str
    value: Callable[[Path], Any]


API_CASES = [
    ApiCase("empty", "file-empty", lambda tmp: ""),
    ApiCase("comments-only", "file-empty", lambda tmp: "-- nothing yet"),
    ApiCase("prose", "not-sql", lambda tmp: "make the email column unique"),
    ApiCase("first-word-typo", "not-sql", lambda tmp: "SELEC 1; SELECT 2"),
    ApiCase("second-statement-typo", "not-sql", lambda tmp: "SELECT 1; DELET FROM users"),
    ApiCase("psql-meta-command", "not-sql", lambda tmp: "\\timing on"),
    ApiCase("file-name-as-sql", "not-sql", lambda tmp: "migrations/0001_add_column.sql"),
    ApiCase("nul-bytes", "file-nul", lambda tmp: "SELECT 1;\x00DROP TABLE sentinel"),
    ApiCase("bytes", "api-bytes", lambda tmp: b"SELECT 1"),
    ApiCase("none", "api-wrong-type", lambda tmp: None),
    ApiCase("number", "api-wrong-type", lambda tmp: 42),
    ApiCase("list", "api-wrong-type", lambda tmp: ["SELECT 1"]),
    ApiCase("path-missing", "file-missing", lambda tmp: tmp / "nope.sql"),
    ApiCase("path-folder", "file-folder", lambda tmp: tmp),
    ApiCase("path-binary", "file-binary", lambda tmp: _write(tmp / "b.sql", b"\xff\xfe\x00\x81")),
    ApiCase("path-empty", "file-empty", lambda tmp: _write(tmp / "e.sql", b"\n\n")),
]


def _write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


@pytest.fixture(scope="module")
def target(db_url):
    """A seeded sandbox that locks_taken() is pointed at; its tables must not change."""
    box = Sandbox(f"test_badinput_target_{uuid.uuid4().hex[:6]}", db_url).reset()
    seed(box, 300, progress=False)
    with box.connect() as conn:
        conn.execute("CREATE TABLE sentinel (id int PRIMARY KEY, note text)")
        conn.execute("INSERT INTO sentinel VALUES (1, 'kept')")
    yield box
    box.drop()


@pytest.mark.parametrize("case", API_CASES, ids=[c.id for c in API_CASES])
def test_measure_from_python(case, tmp_path, sentinel):
    name = f"measure_{uuid.uuid4().hex[:8]}"
    before = rows_of(sentinel)
    with pytest.raises(BadInput) as info:  # checked before anything is seeded: no sandbox is made
        measure(case.value(tmp_path), rows=100, sandbox_name=name, progress=False)
    assert "\n" not in info.value.message
    assert_says(info.value.message, case.row)
    assert rows_of(sentinel) == before
    assert name not in leftovers(("zd_" + name,))[0]


@pytest.mark.parametrize("case", API_CASES, ids=[c.id for c in API_CASES])
def test_locks_taken_from_python(case, tmp_path, target):
    before = tables_of(target)
    with pytest.raises(BadInput) as info:
        locks_taken(target, case.value(tmp_path))
    assert "\n" not in info.value.message
    assert_says(info.value.message, case.row)
    assert tables_of(target) == before
    no_leftovers({target.schema}, (target.schema,))


@pytest.mark.parametrize("rows", [0, -5, 2.5, "1000", None])
def test_measure_rows_must_be_a_whole_number(rows):
    with pytest.raises(BadInput, match="rows should be a whole number of users to seed, at least 1"):
        measure("SELECT 1", rows=rows, sandbox_name=f"measure_{uuid.uuid4().hex[:8]}")


@pytest.mark.parametrize("value", ["SELECT 1", "users"])
def test_locks_taken_without_a_sandbox(value):
    with pytest.raises(BadInput) as info:
        locks_taken(value, "SELECT 1")
    assert_says(info.value.message, "api-not-a-sandbox")


@pytest.mark.parametrize("sql, case, words", [
    ("ALTER TABLE users ADD COLUMN;", "sql-error", "syntax error"),
    ("ALTER TABLE no_such_table ADD COLUMN x int", "missing-table", 'relation "no_such_table" does not exist'),
])
def test_a_failing_statement_is_a_result_from_python(sql, case, words, target):
    """Through Python the result says what failed (the CLI adds the next step), and nothing stays."""
    before, (schemas, _) = tables_of(target), leftovers()
    name = f"measure_{uuid.uuid4().hex[:8]}"
    report = measure(sql, rows=300, sandbox_name=name, progress=False, workers=2)
    assert report.verdict == "failed" and words in report.statements[0]["error"], report
    assert_says(str(report), case, next_step=False)
    [res] = locks_taken(target, sql)
    assert res.status == "error" and words in res.error, res
    assert tables_of(target) == before
    no_leftovers(schemas | {target.schema}, ("zd_measure_", "zd_locks_", target.schema))


@pytest.mark.parametrize("command", ["measure", "locks"])
@pytest.mark.parametrize("sql, case", [
    ("ALTER TABLE users ADD COLUMN note text;\nALTER TABLE users ADD COLUMN;\nSELECT 1;", "sql-error"),
    ("ALTER TABLE no_such_table ADD COLUMN x int;", "missing-table"),
])
def test_a_failing_statement_on_the_command_line(command, sql, case, tmp_path, sentinel):
    """Exit 0 (the failure is the measurement), the error, and a last line with the next step."""
    path = tmp_path / "m.sql"
    path.write_text(sql)
    schemas, _ = leftovers()
    before = rows_of(sentinel)
    result = run_zdlab(command, str(path), "--rows", "300", "--workers", "2") if command == "measure" else \
        run_zdlab(command, str(path), "--rows", "300")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Traceback" not in result.stdout + result.stderr
    assert_says(result.stdout, case)
    last = result.stdout.strip().splitlines()[-1]
    number = 2 if case == "sql-error" else 1
    assert last.startswith(f"next step: statement {number} of {path} failed"), last
    assert rows_of(sentinel) == before
    no_leftovers(schemas)


# -- every exercise's check() with answers of the wrong type or shape -------------------------------------

def no_arguments() -> None:
    """A function with the wrong signature for every exercise."""


def raises(*args: object, **kwargs: object) -> None:
    raise RuntimeError("a bug in the learner's code")


BAD_ANSWERS: dict[str, Any] = {
    "none": None,
    "int": 42,
    "list": [1, "two"],
    "dict": {"sql": "SELECT 1"},
    "text": "this is not code",  # a str where a function (or a number...) is expected
    "function": no_arguments,  # a function where SQL is expected, or one with the wrong signature
    "raises": raises,
    "sql-typo": "SELEC * FROM users",
    "escape": "COMMIT; SET statement_timeout = 0",  # issue 19: refused before anything runs
    "empty": "",
}
# (notebook, exercise, answer) -> the documented case its verdict is quoted for
DOCUMENTED_ANSWERS = {
    ("00_setup", "q1", "empty"): "answer-not-attempted",
    ("00_setup", "q1", "int"): "answer-wrong-type",
    ("01_risks", "q2", "text"): "answer-not-a-function",
    ("02_preventive_actions", "q4", "function"): "answer-wrong-signature",
    ("01_risks", "q2", "raises"): "answer-function-raises",
    ("00_setup", "q1", "sql-typo"): "answer-sql-fails",
    ("04_capstone", "q1", "int"): "answer-wrong-shape",
    ("00_setup", "q1", "escape"): "answer-not-allowed",
    ("02_preventive_actions", "q1", "escape"): "answer-not-allowed",
}


def _exercises() -> list[tuple[str, str]]:
    """(notebook, qN) of every registered exercise: importing zdlab.exercises.* registers them."""
    for module in pkgutil.iter_modules(zdlab.exercises.__path__):
        importlib.import_module(f"zdlab.exercises.{module.name}")
    return [(nb, q) for nb, book in sorted(checks.NOTEBOOKS.items()) for q in book.exercises]


EXERCISES = _exercises()


def own_sandbox(exercise: Exercise) -> bool:
    """The checker works in a sandbox of its own (it never gets the notebook's)."""
    return type(exercise)._sandbox is not Exercise._sandbox


@pytest.fixture(scope="module")
def learner_boxes(db_url):
    """Per notebook, a learner's sandbox mid-notebook: seeded tables plus a table of their own."""
    made: dict[str, Sandbox] = {}

    def get(notebook: str) -> Sandbox:
        if notebook not in made:
            box = Sandbox(f"test_bad_{notebook}_{uuid.uuid4().hex[:6]}", db_url).reset()
            seed(box, 2_000, progress=False)
            with box.connect() as conn:
                conn.execute("CREATE TABLE my_notes (id int PRIMARY KEY, note text)")
                conn.execute("INSERT INTO my_notes VALUES (1, 'my work'), (2, 'keep it')")
            made[notebook] = box
        return made[notebook]

    yield get
    for box in made.values():
        box.drop()


def schemas_like(box: Sandbox) -> set[str]:
    with box.connect("test") as conn:
        return {r[0] for r in conn.execute("SELECT nspname FROM pg_namespace WHERE starts_with(nspname, %s)",
                                           [box.schema])}


@pytest.fixture
def small_checks(monkeypatch):
    """Bad answers fail the same on any size: the checkers that seed their own sandbox seed little."""
    from zdlab.exercises import nb03

    monkeypatch.delenv(checks.STRICT_ENV, raising=False)
    monkeypatch.setattr(nb03, "CHECK_ROWS", 2_000)


@pytest.mark.parametrize("label", BAD_ANSWERS)
@pytest.mark.parametrize("notebook, q", EXERCISES, ids=[f"{nb}-{q}" for nb, q in EXERCISES])
def test_check_with_a_bad_answer(notebook, q, label, learner_boxes, small_checks, capsys):
    exercise = checks.NOTEBOOKS[notebook].exercises[q]
    box = learner_boxes(notebook)
    before, schemas = rows_of(box, "my_notes"), schemas_like(box)
    answers = {name: BAD_ANSWERS[label] for name in exercise.answers}
    where = {} if own_sandbox(exercise) else {"sandbox": box}

    result = exercise.check(**answers, **where)  # any exception here fails the test: never raised

    shown = capsys.readouterr().out
    text = result.text()
    assert result.status in ("incorrect", "not_attempted"), text
    assert text in shown and "Traceback" not in shown, shown
    assert "\n" not in result.message, f"not one paragraph: {result.message}"
    assert "could not check" not in result.message, text  # a checker failure, not a verdict
    if label in ("none", "empty"):
        assert result.status == "not_attempted" and exercise.answers[0] in result.message, text
    else:
        assert result.status == "incorrect", text
    if label in ("list", "dict"):  # never the right kind: the message names the variable to fix
        assert any(name in result.message for name in exercise.answers), text
    if label == "raises":  # called: the learner's own error is named; not called: what is expected instead
        assert "a bug in the learner's code" in text or "should be" in text, text
    if "failed" in result.message and label in ("sql-typo", "text"):
        assert "syntax error" in result.message, text  # PostgreSQL's reason reaches the learner
    case = DOCUMENTED_ANSWERS.get((notebook, q, label))
    if case:
        assert_says(text, case, next_step=row(case).next_step is not None)
    # (c) the learner's own table is intact, no scratch schema is left, no session of the check stays
    assert rows_of(box, "my_notes") == before
    assert schemas_like(box) == schemas
    with box.connect("test") as conn:
        alive = conn.execute("SELECT count(*) FROM pg_stat_activity WHERE starts_with(application_name, %s) "
                             "AND pid <> pg_backend_pid()", [f"zdlab/{box.schema}"]).fetchone()[0]
    assert alive == 0, "the check left a session behind"


@pytest.mark.parametrize("notebook, q", EXERCISES, ids=[f"{nb}-{q}" for nb, q in EXERCISES])
def test_strict_mode_raises_only_assertion_error(notebook, q, learner_boxes, monkeypatch, capsys):
    """The test suite's notebook kernels: a wrong answer raises AssertionError with the verdict."""
    monkeypatch.setenv(checks.STRICT_ENV, "1")
    exercise = checks.NOTEBOOKS[notebook].exercises[q]
    where = {} if own_sandbox(exercise) else {"sandbox": learner_boxes(notebook)}
    with pytest.raises(AssertionError) as info:
        exercise.check(**{name: {"not": "an answer"} for name in exercise.answers}, **where)
    assert f"{exercise.label}: ✗ Incorrect: " in str(info.value)
    assert exercise.check(**{name: None for name in exercise.answers}, **where).status == "not_attempted"


def test_documented_answer_cases_exist():
    for (notebook, q, label) in DOCUMENTED_ANSWERS:
        assert q in checks.NOTEBOOKS[notebook].exercises and label in BAD_ANSWERS


def test_a_check_when_the_database_is_down(learner_boxes):
    from zdlab.exercises.nb00 import ex

    down = Sandbox("00_setup", url=f"postgresql://postgres:x@127.0.0.1:{free_port()}/workshop")
    result = ex.q1.evaluate(answer_sql="SELECT pid, application_name FROM pg_stat_activity", sandbox=down)
    assert result.status == "incorrect" and "\n" not in result.message
    assert_says(result.text(), "answer-could-not-check", next_step=False)
    assert_says(result.message.removeprefix("could not check: "), "server-down")


@pytest.mark.parametrize("make, words", [
    (lambda s: s.in_batches(42), "sql should be the UPDATE as text"),
    (lambda s: s.in_batches("UPDATE orders SET status = 'x'"), "must use %(lo)s and %(hi)s"),
    (lambda s: s.in_batches("UPDATE orders SET x = 1 WHERE id BETWEEN %(lo)s AND %(hi)s", "10"),
     "batch_size should be a whole number"),
    (lambda s: s.deploy("v2"), "deploy() takes an AppVersion, not str"),
])
def test_plan_building_blocks_refuse_bad_arguments_as_bad_input(make, words):
    """nb04's plan is built in a notebook cell: a wrong argument there shows one paragraph, too."""
    from zdlab import scoreboard

    with pytest.raises(BadInput, match=re.escape(words)) as info:
        make(scoreboard)
    assert info.value._render_traceback_()[0].endswith(info.value.message)
