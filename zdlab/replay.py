"""A data migration replayed on the schema of another moment (notebook 02, section 2).

    replay(sb, "CREATE TABLE members (id bigint PRIMARY KEY, name text)",
           lambda conn: conn.execute("INSERT INTO members (id, name) VALUES (2, 'Support')"))
    # -> "name='Support'", or "ERROR UndefinedColumn" when the migration failed

The table is re-created from the given schema, the migration runs (on the connection it is given,
or through anything else, an ORM session for instance), and the row it wrote is read back with
every column but ``id``: which column got the value is the point.
"""

from __future__ import annotations

from collections.abc import Callable

import psycopg
from psycopg import sql

from .sandbox import Sandbox


def replay(sb: Sandbox, schema_sql: str, migration: Callable[[psycopg.Connection], object], *,
           table: str = "members", row_id: int = 2) -> str:
    """Create ``table`` from ``schema_sql``, run ``migration``, and read back row ``row_id``:
    ``"col='value', ..."``, or ``"ERROR <class>"`` when the migration raised (the driver's error
    class, also when an ORM wraps it)."""
    with sb.connect("replay") as conn:
        conn.execute(sql.SQL("DROP TABLE IF EXISTS {}").format(sql.Identifier(table)))
        conn.execute(schema_sql)
        try:
            migration(conn)
        except Exception as exc:  # what the replay shows is which error, not a traceback
            cause = getattr(exc, "orig", None) or exc  # SQLAlchemy keeps the driver's error in .orig
            return f"ERROR {type(cause).__name__}"
        cols = [r[0] for r in conn.execute("SELECT column_name FROM information_schema.columns WHERE "
                                           "table_schema = current_schema() AND table_name = %s "
                                           "ORDER BY ordinal_position", [table])]
        names = [c for c in cols if c != "id"]  # column names from the catalog: quoted, never formatted in
        got = conn.execute(sql.SQL("SELECT {} FROM {} WHERE id = %s").format(
            sql.SQL(", ").join(map(sql.Identifier, names)), sql.Identifier(table)), [row_id]).fetchone()
        return ", ".join(f"{c}={v!r}" for c, v in zip(names, got, strict=True))
