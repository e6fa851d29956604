"""What "the same table" means when a down, a restore or a backfill is checked.

One row hash for the whole kit: the row count and an md5 over every row as ``jsonb`` (so the
order of the columns does not matter, their names, values and NULLs do), rows in a fixed order.

- ``checksum(conn, table)``: (rows, md5, columns with their types): the data;
- ``fingerprint(conn, table)``: the same rows and md5, plus the columns, constraints and indexes
  from the catalogs: the schema too; ``differences(before, after)`` says in words what changed;
- ``values_md5(conn, table, columns)``: the md5 over some columns (a backup of one column).

``table`` is a name as it is, not SQL: it is quoted (sql.Identifier, quote_ident) where used.
"""

from __future__ import annotations

from typing import Any

import psycopg
from psycopg import sql

ROWS_SQL = sql.SQL("""
SELECT count(*), md5(coalesce(string_agg(r, '|' ORDER BY r), ''))
FROM (SELECT to_jsonb(t)::text AS r FROM (SELECT {columns} FROM {table}) AS t) AS rows""")
TYPES_SQL = """
SELECT attname, format_type(atttypid, atttypmod) FROM pg_attribute
WHERE attrelid = to_regclass(quote_ident(%(table)s)) AND attnum > 0 AND NOT attisdropped ORDER BY attname"""
COLUMNS_SQL = """
SELECT column_name, data_type, character_maximum_length, numeric_precision, numeric_scale,
       is_nullable, column_default
FROM information_schema.columns
WHERE table_schema = current_schema() AND table_name = %(table)s
ORDER BY column_name"""
CONSTRAINTS_SQL = """
SELECT conname, contype, pg_get_constraintdef(oid)
FROM pg_constraint
WHERE conrelid = to_regclass(quote_ident(%(table)s))
ORDER BY conname"""
INDEXES_SQL = """
SELECT indexname, indexdef FROM pg_indexes
WHERE schemaname = current_schema() AND tablename = %(table)s
ORDER BY indexname"""


def _rows(conn: psycopg.Connection, table: str, columns: list[str] | None = None) -> tuple[int | None, str | None]:
    if not conn.execute("SELECT to_regclass(quote_ident(%s)) IS NOT NULL", [table]).fetchone()[0]:
        return None, None
    cols = sql.SQL("*") if columns is None else sql.SQL(", ").join(map(sql.Identifier, columns))
    count, digest = conn.execute(ROWS_SQL.format(columns=cols, table=sql.Identifier(table))).fetchone()
    return count, digest


def values_md5(conn: psycopg.Connection, table: str, columns: list[str]) -> str | None:
    """The same row hash over some columns only: two tables hold the same (id, value) pairs."""
    return _rows(conn, table, columns)[1]


def checksum(conn: psycopg.Connection, table: str = "customers") -> tuple[int | None, str | None, tuple]:
    """(row count, md5 of every row, columns with types): equal means the same data."""
    count, digest = _rows(conn, table)
    return count, digest, tuple(conn.execute(TYPES_SQL, {"table": table}).fetchall())


def fingerprint(conn: psycopg.Connection, table: str) -> dict[str, Any]:
    """Columns, constraints, indexes (from the catalogs) and rows (count + md5, as ``checksum``)."""
    args = {"table": table}
    count, digest = _rows(conn, table)
    return {
        "columns": conn.execute(COLUMNS_SQL, args).fetchall(),
        "constraints": conn.execute(CONSTRAINTS_SQL, args).fetchall(),
        "indexes": conn.execute(INDEXES_SQL, args).fetchall(),
        "rows": count,
        "checksum": digest,
    }


def differences(before: dict[str, Any], after: dict[str, Any]) -> list[str]:
    """Which parts of two fingerprints differ, in words."""
    out = []
    for part in ("columns", "constraints", "indexes"):
        gone = sorted(set(before[part]) - set(after[part]), key=str)
        new = sorted(set(after[part]) - set(before[part]), key=str)
        if gone:
            out.append(f"{part} missing: {', '.join(str(x[0]) for x in gone)}")
        if new:
            out.append(f"{part} extra: {', '.join(str(x[0]) for x in new)}")
    if before["rows"] != after["rows"]:
        out.append(f"row count {before['rows']} -> {after['rows']}")
    elif before["checksum"] != after["checksum"]:
        out.append("same row count but different data (checksum)")
    return out
