"""Try candidate migrations where they would fail, and keep nothing: risk 4 of notebook 01.

``try_migrations(sb, {"name": sql, ...}, data)`` runs each one in a transaction that is rolled
back, on ``empty`` tables (a fresh development database), on the ``sandbox``'s own rows, or on a
``production``-like copy: seeded rows plus the drift years of real use leave
(``PRODUCTION_DRIFT_SQL``). A migration that passes on an empty database can fail there.
"""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass
from typing import Literal

import psycopg
from psycopg import sql as pgsql

from . import statements
from .checks import limit_learner_time
from .errors import first_line
from .sandbox import Sandbox
from .seed import FK_SQL, ORDERS_AFTER, ORDERS_BATCH, SCHEMA_SQL, USERS_AFTER, USERS_BATCH

PRODUCTION_ROWS = 50_000  # the production-like copy: enough rows for the drift to show

PRODUCTION_DRIFT_SQL = """
-- Years of support tickets: accounts re-created with the e-mail typed in capitals.
INSERT INTO users (id, email, name)
SELECT m.top + u.id, upper(u.email), u.name
FROM users u, (SELECT max(id) AS top FROM users) m
WHERE u.id % 2000 = 0;
-- Users who signed up through single sign-on never gave a name.
UPDATE users SET name = NULL WHERE id % 500 = 0;
"""



@dataclass
class Attempt:
    """A candidate migration run in a transaction that was rolled back."""

    name: str
    sql: str
    ok: bool
    error: str | None
    ms: float


Data = Literal["empty", "sandbox", "production"]


def _scratch(conn: psycopg.Connection, box: Sandbox) -> str:
    """A schema inside the caller's transaction (gone at its rollback), first on the search_path."""
    name = f"{box.schema}_try_{uuid.uuid4().hex[:8]}"
    conn.execute(pgsql.SQL("CREATE SCHEMA {}").format(pgsql.Identifier(name)))
    conn.execute("SELECT set_config('search_path', %s, true)", [f"{name},public"])
    return name


def _load_schema(conn: psycopg.Connection, rows: int) -> None:
    conn.execute(SCHEMA_SQL)
    if rows:
        conn.execute(USERS_BATCH, {"lo": 1, "hi": rows})
        conn.execute(ORDERS_BATCH, {"lo": 1, "hi": rows, "users": rows})
    for stmt in [*USERS_AFTER, *ORDERS_AFTER, FK_SQL]:  # the keys seed() builds
        if not stmt.startswith("VACUUM"):  # VACUUM cannot run in a transaction
            conn.execute(stmt)
    if rows:
        conn.execute(PRODUCTION_DRIFT_SQL)


def try_migrations(box: Sandbox, migrations: dict[str, str], data: Data = "sandbox") -> list[Attempt]:
    """Run each migration on ``data`` and roll everything back; what failed, and why.

    ``empty``: the tables as a fresh development database has them, no rows. ``sandbox``: the
    sandbox's own tables and rows. ``production``: a production-like copy (seeded rows plus
    the drift of ``PRODUCTION_DRIFT_SQL``), built for the occasion.
    """
    out = []
    with box.connect("try", autocommit=False) as conn:
        conn.execute("SET LOCAL lock_timeout = '5s'")  # never queue behind someone's long transaction
        limit_learner_time(conn)
        if data != "sandbox":
            _scratch(conn, box)
            _load_schema(conn, PRODUCTION_ROWS if data == "production" else 0)
        for name, sql in migrations.items():
            conn.execute("SAVEPOINT candidate")
            start = time.perf_counter()
            try:
                for stmt in statements.split(sql):
                    conn.execute(stmt)
                error = None
            except psycopg.Error as exc:
                error = first_line(exc)
            ms = (time.perf_counter() - start) * 1000
            conn.execute("ROLLBACK TO SAVEPOINT candidate")
            out.append(Attempt(name, sql, error is None, error, ms))
        conn.rollback()
    return out
