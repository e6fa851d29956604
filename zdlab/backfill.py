"""The backfill of notebook 01's risk 2: ``users.email_domain = split_part(email, '@', 2)``.

The one-statement backfill, the batched one the learner writes, and the check that reads the
result all use the same column and expression, so they live here once:

    reset_column(conn)          # an empty email_domain column again: metadata only
    unfilled_rows(conn)         # users whose email_domain is missing or wrong
"""

from __future__ import annotations

import psycopg
from psycopg import sql as pgsql

COLUMN = "email_domain"
EXPR = "split_part(email, '@', 2)"


def unfilled_rows(conn: psycopg.Connection) -> int:
    """Users whose backfilled column is missing or wrong."""
    return conn.execute(pgsql.SQL("SELECT count(*) FROM users WHERE {} IS DISTINCT FROM {}").format(
        pgsql.Identifier(COLUMN), pgsql.SQL(EXPR))).fetchone()[0]


def reset_column(conn: psycopg.Connection) -> None:
    """An empty ``email_domain`` column again (a nullable column without default: instant)."""
    column = pgsql.Identifier(COLUMN)
    conn.execute(pgsql.SQL("ALTER TABLE users DROP COLUMN IF EXISTS {}").format(column))
    conn.execute(pgsql.SQL("ALTER TABLE users ADD COLUMN {} text").format(column))
