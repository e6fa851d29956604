"""Notebook 01's risk 5: a ``customers`` table whose ``name`` is split in two, expand/contract.

Its names hold what real data holds: one-word names, NULLs, more than two words. The backup
drill dumps and restores this table; exercise 5 writes the down of the contract step.

    conn.execute(CUSTOMERS_SQL.format(rows=100_000))
    SPLIT_NAME_STEPS   # 1 expand, 2 backfill, 3 contract: each its own migration
"""

from __future__ import annotations

from psycopg import sql as pgsql

# sql.SQL, not str.format: {rows} becomes a literal (CUSTOMERS_SQL.format(rows=100_000)).
CUSTOMERS_SQL = pgsql.SQL("""
CREATE TABLE customers AS
SELECT g AS id, 'customer' || g || '@example.com' AS email,
       CASE WHEN mod(g, 1000) = 7 THEN 'Cher'              -- one-word names
            WHEN mod(g, 1000) = 8 THEN NULL                -- never gave one
            WHEN mod(g, 1000) = 9 THEN 'Mary Ann Smith'    -- more than two words
            ELSE 'Customer ' || g END AS name
FROM generate_series(1, {rows}) AS g;
ALTER TABLE customers ADD PRIMARY KEY (id);
""")

# Expand/contract (notebook 02, section 3): each step is its own migration, shipped on its own.
# The backfill is a separate step so that the ADD COLUMN's AccessExclusiveLock is released at once
# (on a real table: in batches); the drop of `name` is the contract, a later release.
SPLIT_NAME_STEPS = {
    "1 expand": "ALTER TABLE customers ADD COLUMN first_name text, ADD COLUMN last_name text",
    "2 backfill": """UPDATE customers SET
    first_name = CASE WHEN position(' ' IN name) > 0 THEN left(name, position(' ' IN name) - 1) ELSE name END,
    last_name  = CASE WHEN position(' ' IN name) > 0 THEN substr(name, position(' ' IN name) + 1) END""",
    "3 contract": "ALTER TABLE customers DROP COLUMN name",
}
CONTRACT_SQL = SPLIT_NAME_STEPS["3 contract"]
