"""The demo schema, bulk-loaded on the server side (generate_series), indexes after.

Loading first and indexing after is how a fast bulk load works: one index build beats a
million index insertions. Later tools and checks rely on these exact names.

All or nothing: the tables are loaded in a schema of their own (``<sandbox>_seeding``) and
moved into the sandbox, with the foreign key, in one transaction at the very end. A seed that
is killed halfway (a kernel, the server) leaves no ``users``/``orders`` that look complete:
only that staging schema, which the next seed drops and ``zdlab doctor`` reports.
"""

from __future__ import annotations

import contextlib
import hashlib
import threading

import psycopg
from psycopg import sql
from tqdm.auto import tqdm

from . import config
from .errors import ZdlabError, first_line
from .sandbox import Sandbox

DEMO_TABLES = ("users", "orders")

SCHEMA_SQL = """
DROP TABLE IF EXISTS orders, users CASCADE;
CREATE TABLE users (
    id         bigint NOT NULL,
    email      text NOT NULL,
    name       text,
    created_at timestamptz NOT NULL DEFAULT now()
);
CREATE TABLE orders (
    id           bigint NOT NULL,
    user_id      bigint NOT NULL,
    amount_cents integer NOT NULL,
    status       text NOT NULL DEFAULT 'new',
    created_at   timestamptz NOT NULL DEFAULT now()
);
"""

USERS_BATCH = """
INSERT INTO users (id, email, name, created_at)
SELECT g, 'user' || g || '@example.com', 'User ' || g,
       now() - make_interval(mins => (g %% 525600)::int)
FROM generate_series(%(lo)s::bigint, %(hi)s::bigint) AS g
"""

ORDERS_BATCH = """
INSERT INTO orders (id, user_id, amount_cents, status, created_at)
SELECT g, 1 + (g * 7919) %% %(users)s, 100 + (g * 31) %% 99900,
       (ARRAY['new', 'paid', 'shipped', 'delivered'])[1 + g %% 4],
       now() - make_interval(mins => (g %% 43200)::int)
FROM generate_series(%(lo)s::bigint, %(hi)s::bigint) AS g
"""

USERS_PK = "ALTER TABLE users ADD PRIMARY KEY (id)"
ORDERS_PK = "ALTER TABLE orders ADD PRIMARY KEY (id)"
ORDERS_INDEX = "CREATE INDEX orders_user_id_idx ON orders (user_id)"
FK_SQL = "ALTER TABLE orders ADD CONSTRAINT orders_user_id_fkey FOREIGN KEY (user_id) REFERENCES users (id)"
# VACUUM sets the visibility map and hint bits now, so autovacuum does not wake up mid-demo.
VACUUM_USERS, VACUUM_ORDERS = "VACUUM (ANALYZE) users", "VACUUM (ANALYZE) orders"
# Each table's keys are built on the connection that loaded it, both tables at once
# (2 cores: one each); the foreign key needs both, so it comes last.
USERS_AFTER = [USERS_PK, VACUUM_USERS]
ORDERS_AFTER = [ORDERS_PK, ORDERS_INDEX, VACUUM_ORDERS]
LOAD_SETTINGS = ["SET synchronous_commit = off", "SET maintenance_work_mem = '256MB'"]
SEEDING_SUFFIX = "_seeding"
SEEDING_COMMENT = "zdlab: seed of "  # + the sandbox's schema; how doctor tells whose staging schema it is


def seeding_schema(schema: str) -> str:
    """Where a seed of ``schema`` loads its tables before moving them in: a ``zd_`` name of at
    most 48 characters, so `zdlab reset` finds and drops it like a sandbox (a long name is
    shortened with a hash of it, so two sandboxes never share one)."""
    if len(schema) > 40:
        schema = f"{schema[:31].rstrip('_')}_{hashlib.sha1(schema.encode()).hexdigest()[:8]}"
    return schema + SEEDING_SUFFIX


def interrupted_seeds(conn: psycopg.Connection) -> list[tuple[str, str]]:
    """(staging schema, sandbox schema) of the seeds that stopped halfway in this database:
    a staging schema that no live seed session of its sandbox is filling."""
    return [(r[0], r[1]) for r in conn.execute(
        "SELECT n.nspname, substr(d.description, length(%(c)s) + 1) FROM pg_namespace n "
        "JOIN pg_description d ON d.objoid = n.oid AND d.classoid = 'pg_namespace'::regclass "
        "WHERE n.nspname LIKE 'zd\\_%%' AND starts_with(d.description, %(c)s) "
        "AND NOT EXISTS (SELECT 1 FROM pg_stat_activity a WHERE a.datname = current_database() "
        "  AND a.application_name = %(app)s || '/' || substr(d.description, length(%(c)s) + 1) || '/seed') "
        "ORDER BY 1", {"c": SEEDING_COMMENT, "app": config.APP_PREFIX})]


def seed(box: Sandbox, rows: int = 100_000, *, orders: int | None = None, progress: bool = True) -> dict:
    """Create ``users`` and ``orders`` in the sandbox with ``rows`` users (and as many orders).

    Returns the row counts. Existing demo tables in the sandbox are replaced, in the same
    transaction that moves the new ones in: a seed that stops halfway changes nothing there.
    """
    if rows < 1:
        raise ValueError("rows must be at least 1")
    scale = config.demo_scale()  # 1 unless ZDLAB_DEMO_SCALE is set (the any-machine runs)
    n_orders = rows if orders is None else orders
    rows, n_orders = max(1, round(rows * scale)), max(0, round(n_orders * scale))
    try:
        return _seed(box, rows, n_orders, progress)
    except psycopg.OperationalError as exc:  # the server went away, or someone ended our sessions
        raise ZdlabError(
            f"The seed of {box.schema} stopped halfway: {first_line(exc)}. Nothing half-loaded was "
            f"left as {box.schema}.users or .orders (a seed moves its tables in only once they are "
            f"complete). Check the server with `zdlab doctor` (`zdlab db start` if it is down), then "
            f"run this cell again.") from None


def ensure_seeded(box: Sandbox, rows: int = 100_000) -> None:
    """Seed ``box`` with ``rows`` users unless it already has users and orders (a checker run in
    a fresh sandbox, before the notebook's own seed cell)."""
    with box.connect("check") as conn:
        have = conn.execute("SELECT to_regclass('users') IS NOT NULL AND to_regclass('orders') IS NOT NULL"
                            ).fetchone()[0]
    if not have:
        seed(box, rows, progress=False)


def _seed(box: Sandbox, rows: int, n_orders: int, progress: bool) -> dict:
    staging = sql.Identifier(seeding_schema(box.schema))
    target = sql.Identifier(box.schema)
    batch = max(10_000, rows // 10)
    with box.connect("seed") as conn, tqdm(total=rows + n_orders, unit="rows", desc=f"seed {box.schema}",
                                            disable=not progress, leave=False) as bar:
        # An earlier seed that was killed left its staging schema: start from a clean one.
        with conn.transaction():
            conn.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(staging))
            conn.execute(sql.SQL("CREATE SCHEMA {}").format(staging))
            conn.execute(sql.SQL("COMMENT ON SCHEMA {} IS {}").format(
                staging, sql.Literal(SEEDING_COMMENT + box.schema)))
            conn.execute(sql.SQL("SET LOCAL search_path = {}").format(staging))
            conn.execute(SCHEMA_SQL)
        lock = threading.Lock()
        errors: list[BaseException] = []

        def load(sql_text: str, total: int, after: list[str], own: psycopg.Connection | None) -> None:
            try:
                with contextlib.ExitStack() as stack:
                    c = own or stack.enter_context(box.connect("seed"))
                    c.execute(sql.SQL("SET search_path = {}").format(staging))
                    for setting in LOAD_SETTINGS:
                        c.execute(setting)
                    for lo in range(1, total + 1, batch):
                        hi = min(lo + batch - 1, total)
                        c.execute(sql_text, {"lo": lo, "hi": hi, "users": rows})
                        with lock:
                            bar.update(hi - lo + 1)
                    for stmt in after:
                        c.execute(stmt)
            except BaseException as exc:  # re-raised in the caller's thread
                errors.append(exc)

        helper = threading.Thread(target=load, args=(ORDERS_BATCH, n_orders, ORDERS_AFTER, None))
        helper.start()
        load(USERS_BATCH, rows, USERS_AFTER, conn)
        helper.join()
        if errors:
            raise errors[0]
        bar.set_postfix_str("foreign key")
        # The one commit that makes the tables visible: old ones out, new ones in, with their key.
        with conn.transaction():
            conn.execute(sql.SQL("SET LOCAL search_path = {}").format(target))
            conn.execute("DROP TABLE IF EXISTS orders, users CASCADE")
            for table in ("users", "orders"):
                conn.execute(sql.SQL("ALTER TABLE {}.{} SET SCHEMA {}").format(
                    staging, sql.Identifier(table), target))
            conn.execute(FK_SQL)
            conn.execute(sql.SQL("DROP SCHEMA {}").format(staging))
    return {"users": rows, "orders": n_orders}
