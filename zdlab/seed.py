"""The demo schema, bulk-loaded on the server side (generate_series), indexes after.

Loading first and indexing after is how a fast bulk load works: one index build beats a
million index insertions. Later tools and checks rely on these exact names.
"""

from __future__ import annotations

import contextlib
import threading

import psycopg
from tqdm.auto import tqdm

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


def seed(box: Sandbox, rows: int = 100_000, *, orders: int | None = None, progress: bool = True) -> dict:
    """Create ``users`` and ``orders`` in the sandbox with ``rows`` users (and as many orders).

    Returns the row counts. Existing demo tables in the sandbox are replaced.
    """
    if rows < 1:
        raise ValueError("rows must be at least 1")
    n_orders = rows if orders is None else orders
    batch = max(10_000, rows // 10)
    with box.connect("seed") as conn, tqdm(total=rows + n_orders, unit="rows", desc=f"seed {box.schema}",
                                            disable=not progress, leave=False) as bar:
        conn.execute(SCHEMA_SQL)
        lock = threading.Lock()
        errors: list[BaseException] = []

        def load(sql: str, total: int, after: list[str], own: psycopg.Connection | None) -> None:
            try:
                with contextlib.ExitStack() as stack:
                    c = own or stack.enter_context(box.connect("seed"))
                    for setting in LOAD_SETTINGS:
                        c.execute(setting)
                    for lo in range(1, total + 1, batch):
                        hi = min(lo + batch - 1, total)
                        c.execute(sql, {"lo": lo, "hi": hi, "users": rows})
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
        conn.execute(FK_SQL)
    return {"users": rows, "orders": n_orders}
