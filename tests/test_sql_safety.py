"""No Python value is formatted into SQL: names go through ``sql.Identifier``, values through
parameters (``%s``) or ``sql.Literal``.

1. A static guard: every ``.py`` file of ``zdlab/`` and ``tools/`` and every code cell of
   ``solutions/*.ipynb`` is parsed, and the query given to ``.execute()``, ``.executemany()``,
   ``.copy()`` or ``.stream()`` may not be an f-string, a ``%``-format, a ``.format()`` call on
   anything but ``sql.SQL(...)``, or a ``+`` that mixes a non-literal in; nor may ``sql.SQL()``
   wrap such a string. A name is followed to what it was assigned in the same function or module
   (and, for ``zdlab`` imports, in the module it comes from), so ``q = f"..."; conn.execute(q)``
   is caught too. Failures name file:line.
2. The scanner's own self-test on small snippets: it catches each form and accepts the safe ones.
3. Behaviour: sandbox, learner, table, index and constraint names with a quote, a space, upper
   case and a semicolon are either refused with a clear BadInput or used exactly as given, and
   never run as SQL.
"""

from __future__ import annotations

import ast
import json
import os
import re
import subprocess
import sys
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import psycopg
import pytest
from psycopg import sql

from zdlab import config
from zdlab.errors import BadInput
from zdlab.sandbox import Sandbox, schema_name

REPO = Path(__file__).resolve().parent.parent
QUERY_METHODS = {"execute", "executemany", "copy", "stream"}
COMPOSABLES = {"SQL", "Identifier", "Literal", "Composed", "Placeholder"}


# -- the scanner ---------------------------------------------------------------------------------

@dataclass
class Source:
    """One file (or a notebook's code cells joined) to scan; ``where(line)`` names a place in it."""

    name: str
    module: str | None  # dotted name for a zdlab module, to resolve imports of its constants
    text: str
    lines: list[str] = field(default_factory=list)  # notebook: the original place of each line

    def where(self, line: int) -> str:
        return self.lines[line - 1] if self.lines else f"{self.name}:{line}"


_ASSIGNED_MAGIC = re.compile(r"^(\s*[\w\s,\[\]().]+=\s*)[%!].*$")


def notebook_source(path: Path) -> Source:
    """The code cells of a notebook as one module; IPython magics and shell lines become ``pass``."""
    text, places = [], []
    for index, cell in enumerate(json.loads(path.read_text(encoding="utf-8"))["cells"]):
        if cell["cell_type"] != "code":
            continue
        source = "".join(cell["source"]).splitlines()
        cell_magic = bool(source) and source[0].lstrip().startswith("%%")  # %%sql: the whole cell is SQL
        for number, line in enumerate(source, 1):
            stripped = line.lstrip()
            if cell_magic:
                line = "pass"
            elif stripped.startswith(("%", "!")):  # a line magic, maybe inside a block: keep its indent
                line = line[: len(line) - len(stripped)] + "pass"
            else:  # rows = %sql SELECT ...: the magic's result is a value
                line = _ASSIGNED_MAGIC.sub(r"\1None", line)
            text.append(line)
            places.append(f"{path.relative_to(REPO)} cell {index} line {number}")
        text.append("")
        places.append(f"{path.relative_to(REPO)} cell {index} (end)")
    return Source(str(path.relative_to(REPO)), None, "\n".join(text), places)


def python_source(path: Path) -> Source:
    rel = path.relative_to(REPO)
    module = ".".join(rel.with_suffix("").parts) if rel.parts[0] == "zdlab" else None
    if module and module.endswith(".__init__"):
        module = module.removesuffix(".__init__")
    return Source(str(rel), module, path.read_text(encoding="utf-8"))


def _bindings(body: list[ast.stmt]) -> dict[str, list[ast.expr]]:
    """name -> the expressions assigned to it in this scope (not in nested functions or classes)."""
    out: dict[str, list[ast.expr]] = {}

    def visit(node: ast.AST) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef | ast.Lambda):
                continue
            if isinstance(child, ast.Assign):
                for target in child.targets:
                    if isinstance(target, ast.Name):
                        out.setdefault(target.id, []).append(child.value)
            elif isinstance(child, ast.AnnAssign | ast.AugAssign) and isinstance(child.target, ast.Name):
                if child.value is not None:
                    # x += "..." keeps x a string built from pieces: judge it as x + value
                    value = (ast.BinOp(child.target, child.op, child.value) if isinstance(child, ast.AugAssign)
                             else child.value)
                    out.setdefault(child.target.id, []).append(value)
            visit(child)

    visit(ast.Module(body=body, type_ignores=[]))
    return out


class Scanner:
    """Finds the unsafe SQL of one source; ``modules`` resolves ``from zdlab... import NAME``."""

    def __init__(self, source: Source, modules: dict[str, dict[str, list[ast.expr]]] | None = None) -> None:
        self.source = source
        try:
            self.tree = ast.parse(source.text, filename=source.name)
        except SyntaxError as exc:  # say where, in the notebook's terms
            raise AssertionError(f"{source.where(exc.lineno or 1)}: cannot parse: {exc.msg}") from None
        self.modules = modules or {}
        self.imports: dict[str, tuple[str, str | None]] = {}  # local name -> (module, attribute or None)
        for node in ast.walk(self.tree):
            if isinstance(node, ast.ImportFrom):
                base = self._absolute(node.module, node.level)
                for alias in node.names:
                    local = alias.asname or alias.name
                    if f"{base}.{alias.name}" in self.modules:  # from zdlab.exercises import nb02
                        self.imports[local] = (f"{base}.{alias.name}", None)
                    else:
                        self.imports[local] = (base, alias.name)
            elif isinstance(node, ast.Import):
                for alias in node.names:
                    self.imports[alias.asname or alias.name] = (alias.name, None)
        self.problems: list[str] = []

    def _absolute(self, module: str | None, level: int) -> str:
        if not level:
            return module or ""
        package = (self.source.module or "").split(".")
        if not self.source.name.endswith("__init__.py"):  # a package's __init__ is its own package
            package = package[:-1]
        package = package[: len(package) - (level - 1)]
        return ".".join([*package, module] if module else package)

    # -- what an expression is ------------------------------------------------------------------

    def _lookup(self, node: ast.expr, scopes: list[dict[str, list[ast.expr]]]) -> list[ast.expr] | None:
        """What a name (or module.NAME) was assigned, or None when it cannot be known here."""
        if isinstance(node, ast.Name):
            for scope in reversed(scopes):
                if node.id in scope:
                    return scope[node.id]
            module, attribute = self.imports.get(node.id, (None, None))
            if module in self.modules and attribute:
                return self.modules[module].get(attribute)
        elif isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name):
            module, attribute = self.imports.get(node.value.id, (None, None))
            if module in self.modules and attribute is None:
                return self.modules[module].get(node.attr)
        return None

    def _kind(self, node: ast.expr, scopes: list, depth: int = 0) -> str:
        """'literal' (a constant string), 'composable' (psycopg.sql), 'unsafe: why', or 'unknown'."""
        if depth > 8:
            return "unknown"
        if isinstance(node, ast.Constant):
            return "literal" if isinstance(node.value, str | bytes) else "unknown"
        if isinstance(node, ast.JoinedStr):
            if any(isinstance(v, ast.FormattedValue) for v in node.values):
                return "unsafe: an f-string"
            return "literal"
        if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Mod):
            return "unsafe: a %-format"
        if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Add):
            kinds = {self._kind(side, scopes, depth + 1) for side in (node.left, node.right)}
            unsafe = [k for k in kinds if k.startswith("unsafe")]
            if unsafe:
                return unsafe[0]
            if kinds == {"literal"} or kinds == {"composable"}:
                return kinds.pop()
            return "unsafe: a + concatenation involving a non-literal"
        if isinstance(node, ast.IfExp):
            kinds = {self._kind(side, scopes, depth + 1) for side in (node.body, node.orelse)}
            unsafe = [k for k in kinds if k.startswith("unsafe")]
            return unsafe[0] if unsafe else (kinds.pop() if len(kinds) == 1 else "unknown")
        if isinstance(node, ast.Call):
            func = node.func
            name = func.attr if isinstance(func, ast.Attribute) else func.id if isinstance(func, ast.Name) else ""
            if name in COMPOSABLES:
                return "composable"
            if isinstance(func, ast.Attribute) and func.attr in ("format", "join", "as_string"):
                receiver = self._kind(func.value, scopes, depth + 1)
                if receiver == "composable":
                    return "unknown" if func.attr == "as_string" else "composable"
                if func.attr == "format":
                    return "unsafe: a .format() call on a plain string"
            return "unknown"
        if isinstance(node, ast.Name | ast.Attribute):
            values = self._lookup(node, scopes)
            if not values:
                return "unknown"
            kinds = {self._kind(v, scopes, depth + 1) for v in values}
            unsafe = [k for k in kinds if k.startswith("unsafe")]
            if unsafe:
                label = node.id if isinstance(node, ast.Name) else ast.unparse(node)
                return f"{unsafe[0]} (through {label})"
            return kinds.pop() if len(kinds) == 1 else "unknown"
        return "unknown"

    # -- the walk ---------------------------------------------------------------------------------

    def scan(self) -> list[str]:
        self._walk(self.tree.body, [_bindings(self.tree.body)])
        return self.problems

    def _walk(self, body: list[ast.stmt], scopes: list) -> None:
        for stmt in body:
            self._visit(stmt, scopes)

    def _visit(self, node: ast.AST, scopes: list) -> None:
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            for default in [*node.args.defaults, *node.args.kw_defaults, *node.decorator_list]:
                if default is not None:
                    self._visit(default, scopes)
            self._walk(node.body, [*scopes, _bindings(node.body)])
            return
        if isinstance(node, ast.Call):
            self._check_call(node, scopes)
        for child in ast.iter_child_nodes(node):
            self._visit(child, scopes)

    def _check_call(self, call: ast.Call, scopes: list) -> None:
        func = call.func
        name = func.attr if isinstance(func, ast.Attribute) else func.id if isinstance(func, ast.Name) else ""
        if isinstance(func, ast.Attribute) and name in QUERY_METHODS:
            query = call.args[0] if call.args else next((k.value for k in call.keywords if k.arg == "query"), None)
            if query is not None and not isinstance(query, ast.Starred):
                kind = self._kind(query, scopes)
                if kind.startswith("unsafe"):
                    self.problems.append(f"{self.source.where(call.lineno)}: .{name}() query is "
                                         f"{kind.removeprefix('unsafe: ')}: {ast.unparse(query)[:80]}")
        elif name == "SQL" and call.args:  # sql.SQL(f"...") would defeat the composition
            kind = self._kind(call.args[0], scopes)
            if kind.startswith("unsafe"):
                self.problems.append(f"{self.source.where(call.lineno)}: sql.SQL() wraps "
                                     f"{kind.removeprefix('unsafe: ')}: {ast.unparse(call.args[0])[:80]}")


def kit_sources() -> list[Source]:
    files = sorted([*REPO.glob("zdlab/**/*.py"), *REPO.glob("tools/**/*.py")])
    return [python_source(p) for p in files] + [notebook_source(p) for p in sorted(REPO.glob("solutions/*.ipynb"))]


def module_index(sources: list[Source]) -> dict[str, dict[str, list[ast.expr]]]:
    """Module-level assignments of every zdlab module, to follow imported constants."""
    return {s.module: _bindings(ast.parse(s.text).body) for s in sources if s.module}


def scan_snippet(code: str) -> list[str]:
    return Scanner(Source("snippet.py", None, code)).scan()


# -- 1. the guard -----------------------------------------------------------------------------------


def test_no_python_value_is_formatted_into_sql():
    sources = kit_sources()
    assert any(s.name.startswith("solutions/") for s in sources) and any(s.module for s in sources)
    index = module_index(sources)
    problems = [p for s in sources for p in Scanner(s, index).scan()]
    assert not problems, ("SQL built from Python values (use sql.SQL(...).format(sql.Identifier(...)) for "
                          "names, %s parameters or sql.Literal for values):\n" + "\n".join(problems))


# -- 2. the scanner's self-test ------------------------------------------------------------------------

CAUGHT = {
    "f-string": 'conn.execute(f"DROP TABLE {name}")',
    "%-format": 'conn.execute("DROP TABLE %s" % name)',
    "%-format of a tuple": 'cur.executemany("INSERT INTO %s VALUES (%%s)" % (t,), rows)',
    ".format() on a string": 'conn.execute("DROP TABLE {}".format(name))',
    ".format() on a string constant": 'DROP = "DROP TABLE {t}"\nconn.execute(DROP.format(t=name))',
    "+ with a variable": 'conn.execute("DROP TABLE " + name)',
    "+ with a call": 'conn.execute("SELECT " + ", ".join(cols) + " FROM t")',
    "f-string in a variable": 'def f(conn, t):\n    q = f"SELECT * FROM {t}"\n    conn.execute(q)',
    "built up with +=": 'def f(conn, t):\n    q = "SELECT * FROM "\n    q += t\n    conn.execute(q)',
    "copy": 'with cur.copy(f"COPY {t} FROM STDIN") as copy: pass',
    "stream": 'for row in cur.stream(f"SELECT * FROM {t}"): pass',
    "query= keyword": 'conn.execute(query=f"SELECT * FROM {t}")',
    "sql.SQL of an f-string": 'conn.execute(sql.SQL(f"DROP TABLE {name}"))',
    "one branch of a conditional": 'conn.execute(f"DROP {t}" if t else "SELECT 1")',
}
ACCEPTED = {
    "sql.Identifier": 'conn.execute(sql.SQL("DROP TABLE {}").format(sql.Identifier(name)))',
    "named pieces": 'conn.execute(sql.SQL("SELECT {c} FROM {t}").format(c=sql.Identifier(c), t=sql.Identifier(t)))',
    "joined identifiers": 'conn.execute(sql.SQL("SELECT {} FROM t").format(sql.SQL(",").join(map(sql.Identifier, c))))',
    "a composable in a variable": 'Q = pgsql.SQL("SELECT * FROM {}")\nconn.execute(Q.format(pgsql.Identifier(t)))',
    "composables added": 'conn.execute(sql.SQL("SELECT 1") + sql.SQL(" WHERE true"))',
    "parameters": 'conn.execute("SELECT * FROM t WHERE id = %s", [x])',
    "set_config": 'conn.execute("SELECT set_config(\'lock_timeout\', %s, true)", [t])',
    "literals added": 'conn.execute("SELECT 1 " + "FROM t")',
    "a constant plus a literal": 'BASE = "UPDATE users SET x = 1"\nconn.execute(BASE + " WHERE id <= %s", [n])',
    "a plain variable": 'def f(conn, stmt):\n    conn.execute(stmt)',
    "a literal with % inside": 'conn.execute("SELECT * FROM users WHERE id % 100 = 0")',
    "starred arguments": "conn.execute(*record)",
    "sql.SQL of a constant": 'RULE = "CASE WHEN x END"\nconn.execute(sql.SQL("SELECT {}").format(sql.SQL(RULE)))',
    "an f-string elsewhere": 'print(f"{name}")\nconn.execute("SELECT 1")',
}


@pytest.mark.parametrize("code", CAUGHT.values(), ids=CAUGHT.keys())
def test_the_scanner_catches(code):
    problems = scan_snippet(code)
    assert len(problems) == 1, problems
    assert problems[0].startswith("snippet.py:"), problems


@pytest.mark.parametrize("code", ACCEPTED.values(), ids=ACCEPTED.keys())
def test_the_scanner_accepts(code):
    assert scan_snippet(code) == []


def test_the_scanner_follows_a_zdlab_import():
    """A constant imported from a zdlab module is judged by what that module assigned."""
    module = Source("zdlab/example.py", "zdlab.example", 'TEMPLATE = "DROP TABLE {t}"\nSAFE = sql.SQL("{t}")\n')
    index = module_index([module])
    bad = Source("nb.ipynb", None, "from zdlab.example import TEMPLATE\nconn.execute(TEMPLATE.format(t=x))")
    good = Source("nb.ipynb", None, "from zdlab import example\nconn.execute(example.SAFE.format(t=x))")
    assert len(Scanner(bad, index).scan()) == 1
    assert Scanner(good, index).scan() == []


def test_notebook_magics_are_stripped_and_places_named(tmp_path, monkeypatch):
    nb = {"cells": [
        {"cell_type": "code", "source": ["%%sql\n", "SELECT {not python}\n"]},
        {"cell_type": "markdown", "source": ["text"]},
        {"cell_type": "code", "source": ["%time x = 1\n", "!ls\n", "conn.execute(f'SELECT {x}')\n"]},
    ]}
    monkeypatch.setattr(sys.modules[__name__], "REPO", tmp_path)
    path = tmp_path / "demo.ipynb"
    path.write_text(json.dumps(nb))
    [problem] = Scanner(notebook_source(path)).scan()
    assert problem.startswith("demo.ipynb cell 2 line 3: .execute() query is an f-string"), problem


# -- 3. awkward names: refused clearly, or used exactly, never run as SQL ----------------------------

AWKWARD = ["Robert'); DROP TABLE sentinel; --", 'We"ird Name', "MiXeD Case", "semi;colon", "o'brien"]


@pytest.fixture
def guarded(make_sandbox):
    """A sandbox with a sentinel table: an injected DROP or DELETE would show here."""
    box = make_sandbox("safety")
    with box.connect() as conn:
        conn.execute("CREATE TABLE sentinel (id int PRIMARY KEY, note text)")
        conn.execute("INSERT INTO sentinel VALUES (1, 'keep'), (2, 'me')")
    yield box
    with box.connect() as conn:
        assert conn.execute("SELECT count(*) FROM sentinel").fetchone()[0] == 2, "the sentinel lost rows"


@pytest.mark.parametrize("name", AWKWARD)
def test_awkward_sandbox_names_become_a_plain_schema(name, db_url):
    box = Sandbox(f"{name} {uuid.uuid4().hex[:6]}", db_url)
    assert re.fullmatch(r"zd_[a-z0-9_]+", box.schema), box.schema
    box.reset()
    try:
        with box.connect() as conn:
            assert conn.execute("SELECT current_schema()").fetchone()[0] == box.schema
            assert conn.execute("SELECT count(*) FROM pg_namespace WHERE nspname = 'public'").fetchone()[0] == 1
    finally:
        box.drop()


@pytest.mark.parametrize("name", ["'; --", "", "   ", "!!!"])
def test_a_sandbox_name_with_nothing_usable_is_bad_input(name):
    with pytest.raises(BadInput) as info:
        schema_name(name)
    assert "cannot name a sandbox" in info.value.message and "letters, digits" in info.value.message


@pytest.mark.parametrize("name", AWKWARD)
def test_awkward_learner_names_get_a_database_of_exactly_their_slug(name, db_url, monkeypatch):
    suffix = uuid.uuid4().hex[:6]
    monkeypatch.setenv("ZDLAB_LEARNER", f"{name} {suffix}")
    slug = config.learner()
    assert re.fullmatch(r"[a-z0-9_]+", slug) and len(slug) <= config.MAX_LEARNER, slug
    result = subprocess.run([sys.executable, "-m", "zdlab", "db", "url", "--show-password"], capture_output=True,
                            text=True, timeout=60, env={**os.environ, "ZDLAB_LEARNER": f"{name} {suffix}"})
    try:
        assert result.returncode == 0, result.stderr
        with psycopg.connect(result.stdout.strip()) as conn:
            assert conn.execute("SELECT current_database()").fetchone()[0] == f"zdlab_{slug}"
    finally:
        with psycopg.connect(db_url, autocommit=True) as admin:
            admin.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(
                sql.Identifier(f"zdlab_{slug}")))


@pytest.mark.parametrize("name", ["'; --", "!!!", " _-_ "])
def test_a_learner_name_with_nothing_usable_is_bad_input(name, monkeypatch):
    monkeypatch.setenv("ZDLAB_LEARNER", name)
    with pytest.raises(BadInput, match="cannot name a database"):
        config.learner()


@pytest.mark.parametrize("name", AWKWARD)
def test_awkward_table_names_are_used_exactly(guarded, name):
    """The kit's helpers that take a table name work on a table called exactly that."""
    from zdlab.exercises.nb03 import column_state
    from zdlab.fingerprint import checksum, fingerprint
    from zdlab.longtx import LongTransaction

    table = sql.Identifier(name)
    with guarded.connect() as conn:
        conn.execute(sql.SQL("CREATE TABLE {} (id int PRIMARY KEY, {} text)").format(table, sql.Identifier(name)))
        conn.execute(sql.SQL("INSERT INTO {} VALUES (1, 'a'), (2, NULL)").format(table))
        rows, digest, columns = checksum(conn, name)
        assert rows == 2 and [c[0] for c in columns] == sorted(["id", name])
        seen = fingerprint(conn, name)
        assert seen["rows"] == 2 and len(seen["columns"]) == 2 and seen["constraints"]
        state = column_state(conn, name, name)
        assert state is not None and state["type"] == "text" and not state["notnull"]
    with LongTransaction(guarded, name, seconds=0.1) as lt:
        assert lt.lived_s >= 0
    with guarded.connect() as conn:
        assert conn.execute(sql.SQL("SELECT count(*) FROM {}").format(table)).fetchone()[0] == 2


def test_a_constraint_named_to_inject_is_dropped_by_name(guarded):
    """nb02's reset drops constraints and indexes a learner named: by their exact names."""
    from zdlab.exercises.nb02 import reset_users_email
    from zdlab.seed import seed

    seed(guarded, 200, progress=False)
    evil = 'users_email_key"; DROP TABLE sentinel; --'
    with guarded.connect() as conn:
        conn.execute(sql.SQL("ALTER TABLE users ADD CONSTRAINT {} UNIQUE (email)").format(sql.Identifier(evil)))
        conn.execute(sql.SQL("CREATE INDEX {} ON users (email, id)").format(sql.Identifier(evil + " idx")))
        reset_users_email(conn)
        left = conn.execute("SELECT count(*) FROM pg_class WHERE relname LIKE 'users_email_key%'").fetchone()[0]
    assert left == 0


def test_locks_undo_drops_an_awkwardly_named_index_exactly(guarded):
    """locks_taken undoes a CREATE INDEX CONCURRENTLY: a name with a quote must not break out."""
    from zdlab.locks import locks_taken

    evil = 'ix"; DROP TABLE sentinel; --'
    create = sql.SQL("CREATE INDEX CONCURRENTLY {} ON sentinel (note)").format(sql.Identifier(evil))
    with guarded.connect() as conn:
        text = create.as_string(conn)
    [res] = locks_taken(guarded, text)
    assert res.error is None and res.status == "ok", res
    with guarded.connect() as conn:
        assert conn.execute("SELECT to_regclass(quote_ident(%s))", [evil]).fetchone()[0] is None


@pytest.mark.parametrize("name", ["My Key", 'k"ey', "Id; DROP TABLE sentinel"])
def test_in_batches_quotes_the_table_and_key(guarded, name):
    from zdlab.scoreboard import Batched, in_batches

    table = f"T {name}"
    with guarded.connect() as conn:
        conn.execute(sql.SQL("CREATE TABLE {} ({} int PRIMARY KEY, v int)").format(
            sql.Identifier(table), sql.Identifier(name)))
        conn.execute(sql.SQL("INSERT INTO {} SELECT g, 0 FROM generate_series(1, 25) g").format(sql.Identifier(table)))
        update = sql.SQL("UPDATE {} SET v = 1 WHERE {} BETWEEN %(lo)s AND %(hi)s").format(
            sql.Identifier(table), sql.Identifier(name)).as_string(conn)
        step = in_batches(update, 10, table=table, key=name)
        assert isinstance(step, Batched)

        class Board:  # what Batched.run needs of a scoreboard: no retries
            _retrying = False
            _retry_count = 0

        assert step.run(Board(), conn) == "3 batches of 10, 25 rows updated"
        assert conn.execute(sql.SQL("SELECT sum(v) FROM {}").format(sql.Identifier(table))).fetchone()[0] == 25
