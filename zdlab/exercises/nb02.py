"""Notebook 02_preventive_actions: the checkers of its four exercises and the tables they use.

    from zdlab.exercises.nb02 import ex
    ex.q1  the missing downgrade: up, down, up must give back the same schema and data
    ex.q2  the dual-write trigger of a rename, run under two application versions
    ex.q3  a unique constraint on users(email) without blocking writes
    ex.q4  a guarded DROP COLUMN: refuses while read, or without a backup

Measured on the database (catalogs, row checksums, ``zdlab.measure_in`` for runs under traffic); q1,
q2 and q4 work in a scratch schema of their own, dropped afterwards: a check never disturbs the notebook.
"""

from __future__ import annotations

import contextlib
from collections import Counter
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

import psycopg
from psycopg import sql

from .. import grader
from ..checks import (
    Exercise,
    Incorrect,
    Notebook,
    need_function,
    need_sql,
    require_no_failed_requests,
    require_ran,
    require_unnoticed,
)
from ..errors import first_line
from ..fingerprint import differences, fingerprint, values_md5
from ..measure import measure_in
from ..migrate import Migration, MigrationError, Migrator
from ..rename import CUSTOMERS_SQL, app_versions, backfill, out_of_sync, unmirrored_writes
from ..sandbox import Sandbox
from ..seed import seed
from ..traffic import request_in_flight, wait_until

if TYPE_CHECKING:
    from ..traffic import Traffic


# -- section 1: the products table and the migration whose down is missing ----------------------

PRODUCTS_SQL = """
DROP TABLE IF EXISTS products;
CREATE TABLE products (
    id          bigint PRIMARY KEY,
    name        text NOT NULL,
    price       numeric(10, 2) NOT NULL,
    legacy_code text
);
INSERT INTO products
SELECT g, 'Product ' || g, round(((g * 37) % 10000) / 100.0 + 0.49, 2), 'LC-' || g
FROM generate_series(1, 1000) AS g;
"""

Q1_UP_SQL = """
ALTER TABLE products ADD COLUMN currency char(3) NOT NULL DEFAULT 'EUR';
ALTER TABLE products ADD CONSTRAINT products_price_positive CHECK (price > 0);
CREATE INDEX products_name_idx ON products (name);
"""

# -- what the checkers share -----------------------------------------------------------------------

@contextlib.contextmanager
def scratch(box: Sandbox, suffix: str) -> Iterator[Sandbox]:
    """A fresh schema next to ``box`` (``<schema>_<suffix>``), dropped afterwards."""
    sb = Sandbox(f"{box.name} {suffix}", box.url).reset()
    try:
        yield sb
    finally:
        with contextlib.suppress(Exception):
            sb.drop()


CHECK_SETTLE_S = 0.5  # traffic before and after a checker's steps: the noise baseline and the tail


# -- q1: the missing downgrade -------------------------------------------------------------------

class MissingDowngrade(Exercise):
    """Write the down of Q1_UP_SQL; up, down, up must give back the same schema and data."""

    answers = ("answer_down_sql",)
    hints = (
        "Undo each statement of the up, in reverse order: the last thing the up did is the first "
        "thing the down undoes.",
        "The up adds an index, a CHECK constraint and a column. DROP INDEX, ALTER TABLE ... DROP "
        "CONSTRAINT and ALTER TABLE ... DROP COLUMN undo them.",
        "DROP INDEX products_name_idx; ALTER TABLE products DROP CONSTRAINT products_price_positive; "
        "ALTER TABLE products DROP COLUMN currency;",
    )

    def grade(self, box: Sandbox, answer_down_sql: str) -> str:
        grader.vet(need_sql("answer_down_sql", answer_down_sql, "SQL statements (the down migration)"),
                   "answer_down_sql")
        with scratch(box, "q1") as sb, grader.connect(sb, "check") as conn:
            conn.execute(PRODUCTS_SQL)
            m = Migrator(conn, [Migration(4, "currency, price check, name index", Q1_UP_SQL, answer_down_sql)])
            base = fingerprint(conn, "products")
            m.up()
            upped = fingerprint(conn, "products")
            try:
                m.down()
            except MigrationError as exc:
                raise Incorrect(f"your down failed: {exc.message}") from None
            downed = fingerprint(conn, "products")
            diff = differences(base, downed)
            if diff:
                raise Incorrect("after up then down, products is not what it was before the up: "
                                + "; ".join(diff) + ".")
            try:
                m.up()
            except MigrationError as exc:
                raise Incorrect(f"after your down, the up no longer runs: {exc.message}") from None
            diff = differences(upped, fingerprint(conn, "products"))
            if diff:
                raise Incorrect("up, down, up does not give the same result as one up: " + "; ".join(diff) + ".")
        return (f"up, down, up: the schema ({len(base['columns'])} columns, {len(base['constraints'])} "
                f"constraints, {len(base['indexes'])} indexes) and the data ({base['rows']} rows, checksum "
                f"{base['checksum'][:8]}) came back identical each time.")


# -- q2: the dual-write trigger, under two application versions -----------------------------------

Q2_CUSTOMERS = 5_000


class DualWriteTrigger(Exercise):
    """Step 2 of the rename: a trigger that keeps name and full_name equal whoever writes."""

    answers = ("answer_trigger_sql",)
    hints = (
        "A BEFORE INSERT OR UPDATE ... FOR EACH ROW trigger can change NEW before the row is written. "
        "v1 writes name, v2 writes full_name: the trigger copies whichever one the statement set.",
        "On INSERT fill the one that is NULL from the other. On UPDATE compare NEW with OLD: if "
        "NEW.name IS DISTINCT FROM OLD.name copy it to full_name; else if full_name changed, copy it to name.",
        "CREATE FUNCTION customers_sync_name() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN IF TG_OP = "
        "'INSERT' THEN NEW.full_name := coalesce(NEW.full_name, NEW.name); NEW.name := coalesce(NEW.name, "
        "NEW.full_name); ELSIF NEW.name IS DISTINCT FROM OLD.name THEN NEW.full_name := NEW.name; ELSIF "
        "NEW.full_name IS DISTINCT FROM OLD.full_name THEN NEW.name := NEW.full_name; END IF; RETURN NEW; "
        "END $$; then CREATE TRIGGER customers_sync_name BEFORE INSERT OR UPDATE ON customers FOR EACH ROW "
        "EXECUTE FUNCTION customers_sync_name();",
    )

    def grade(self, box: Sandbox, answer_trigger_sql: str) -> str:
        stmts = grader.vet(need_sql("answer_trigger_sql", answer_trigger_sql,
                                    "SQL statements (a function and its trigger)"), "answer_trigger_sql")
        v1, v2 = app_versions(Q2_CUSTOMERS)

        def step_3_backfill(conn: psycopg.Connection) -> None:
            backfill(conn)

        def step_4_v2_on_two_pods(conn: psycopg.Connection, *, traffic: Traffic) -> None:
            start = traffic.served("v2")
            traffic.deploy(v2, pods=2)  # step 4 begins: two pods of each version
            wait_until(lambda: traffic.served("v2") >= start + 60 and traffic.served("v1") >= 60)

        with scratch(box, "q2") as sb:
            seed(sb, 2_000, progress=False)  # the demo tables, as in every traffic run
            with sb.connect("setup") as conn:
                conn.execute(CUSTOMERS_SQL.format(rows=Q2_CUSTOMERS))
                conn.execute("ALTER TABLE customers ADD COLUMN full_name text")  # step 1, done
            report = measure_in(sb, [*stmts, step_3_backfill, step_4_v2_on_two_pods], apps=[v1], lock_timeout="2s",
                                settle_s=CHECK_SETTLE_S, connect=grader.connect)
            require_ran(report, "your SQL failed under traffic")
            with sb.connect("check") as conn:
                triggers = conn.execute("SELECT count(*) FROM pg_trigger WHERE tgrelid = 'customers'::regclass "
                                        "AND NOT tgisinternal").fetchone()[0]
                drift = out_of_sync(conn)
                probes = unmirrored_writes(conn)
        require_no_failed_requests(report, " while your step ran")
        require_unnoticed(report, "your step 2")
        if not triggers:
            raise Incorrect("there is no trigger on customers after your SQL ran.")
        if probes:
            raise Incorrect(probes[0])
        if drift:
            raise Incorrect(f"after traffic from v1 and v2 and the backfill, {drift} customers have name and "
                            f"full_name different: some writes were not copied.")
        served = Counter(r.app for r in report.timeline.requests)
        return (f"under traffic ({served['v1']} requests by v1, {served['v2']} by v2, none failed, longest stall "
                f"{report.longest_stall_ms:,.0f} ms) every customer has name = full_name, and a write "
                f"by either version reaches both columns.")


# -- q3: a unique constraint on users(email) without blocking writes --------------------------------

SLOW_TX_S = 0.6  # an application transaction in flight when the migration starts (a slow request)

_EMAIL_OBJECTS_SQL = """
SELECT c.conname, NULL, NULL FROM pg_constraint c
WHERE c.conrelid = 'users'::regclass AND c.contype IN ('u', 'p', 'x')
  AND c.conkey = ARRAY[(SELECT attnum FROM pg_attribute WHERE attrelid = 'users'::regclass
                        AND attname = 'email')]::int2[]
UNION ALL
SELECT NULL, (SELECT relnamespace::regnamespace::name FROM pg_class WHERE oid = i.indexrelid),
       (SELECT relname FROM pg_class WHERE oid = i.indexrelid) FROM pg_index i
WHERE i.indrelid = 'users'::regclass AND NOT EXISTS (
      SELECT 1 FROM pg_constraint c WHERE c.conindid = i.indexrelid)
  AND (SELECT attnum FROM pg_attribute WHERE attrelid = 'users'::regclass AND attname = 'email')
      = ANY(i.indkey::int2[])"""


def reset_users_email(conn: psycopg.Connection) -> None:
    """Remove every constraint and index on users(email): each check starts from the same place."""
    for constraint, schema, index in conn.execute(_EMAIL_OBJECTS_SQL).fetchall():
        # Names come from the catalog, and a learner chose them: quoted, never formatted in.
        if constraint:
            conn.execute(sql.SQL("ALTER TABLE users DROP CONSTRAINT {}").format(sql.Identifier(constraint)))
        else:
            conn.execute(sql.SQL("DROP INDEX {}").format(sql.Identifier(schema, index)))


class UniqueEmail(Exercise):
    """Add a unique constraint on users(email) while the application keeps writing."""

    answers = ("answer_unique_sql",)
    hints = (
        "Two statements: build the unique index without blocking writes, then turn it into a constraint.",
        "CREATE UNIQUE INDEX CONCURRENTLY builds it with ShareUpdateExclusiveLock; "
        "ALTER TABLE ... ADD CONSTRAINT ... UNIQUE USING INDEX adopts it in a moment.",
        "CREATE UNIQUE INDEX CONCURRENTLY users_email_key ON users (email); "
        "ALTER TABLE users ADD CONSTRAINT users_email_key UNIQUE USING INDEX users_email_key;",
    )

    def grade(self, box: Sandbox, answer_unique_sql: str) -> str:
        stmts = grader.vet(need_sql("answer_unique_sql", answer_unique_sql,
                                    "SQL statements (an index, then a constraint)"), "answer_unique_sql")
        with box.connect("check") as conn:
            if not conn.execute("SELECT to_regclass('users') IS NOT NULL").fetchone()[0]:
                seed(box, 20_000, progress=False)
            reset_users_email(conn)
            rows = conn.execute("SELECT count(*) FROM users").fetchone()[0]
        with request_in_flight(box, "INSERT INTO users (id, email) VALUES (-1, 'slow-request@example.com')",
                               SLOW_TX_S) as in_flight:
            report = measure_in(box, [in_flight, *stmts], rows=rows, settle_s=CHECK_SETTLE_S,
                                connect=grader.connect)
        require_ran(report, "your SQL failed")
        with box.connect("check") as conn:
            found = conn.execute("""SELECT c.conname, i.indexrelid::regclass::text, i.indisvalid FROM pg_constraint c
                JOIN pg_index i ON i.indexrelid = c.conindid WHERE c.conrelid = 'users'::regclass AND c.contype = 'u'
                AND c.conkey = ARRAY[(SELECT attnum FROM pg_attribute WHERE attrelid = 'users'::regclass
                                      AND attname = 'email')]::int2[]""").fetchone()
            invalid = conn.execute("SELECT string_agg(indexrelid::regclass::text, ', ') FROM pg_index "
                                   "WHERE indrelid = 'users'::regclass AND NOT indisvalid").fetchone()[0]
        if found is None:
            raise Incorrect("users has no UNIQUE constraint on (email) (pg_constraint, contype 'u'). A unique "
                            "index alone is not a constraint: adopt it with ADD CONSTRAINT ... USING INDEX.")
        if not found[2]:
            raise Incorrect(f"the constraint's index {found[1]} is INVALID (pg_index.indisvalid = false).")
        if invalid:
            raise Incorrect(f"an INVALID index is left on users: {invalid}. Drop it (DROP INDEX CONCURRENTLY).")
        require_no_failed_requests(report)
        try:
            measured = require_unnoticed(report, "your statements")
        except Incorrect as exc:
            raise Incorrect(f"{exc} Your index build held a lock that writes wait for, or queued behind the "
                            f"request in flight: build it CONCURRENTLY, and keep strong locks to a brief "
                            f"catalog change.") from None
        return (f"constraint {found[0]} on users(email) is backed by the valid index {found[1]}; under "
                f"traffic on {rows:,} users, with a request in flight, {measured}; "
                f"{report.requests:,} requests ran, none failed.")


# -- q4: the guarded drop --------------------------------------------------------------------------

Q4_SETUP_SQL = """
CREATE TABLE accounts (id bigint PRIMARY KEY, email text NOT NULL, fax text);
INSERT INTO accounts SELECT g, 'a' || g || '@example.com', '+1-555-' || lpad(g::text, 4, '0')
FROM generate_series(1, 1000) AS g;
"""
READS_FAX = ["SELECT id, email, fax FROM accounts WHERE id = %s", "UPDATE accounts SET email = %s WHERE id = %s"]
NO_FAX = ["SELECT id, email FROM accounts WHERE id = %s", "UPDATE accounts SET email = %s WHERE id = %s"]
REFUSALS = [  # (the backup table's query or None, the deployed queries, what dropping anyway means)
    ("SELECT id, fax FROM accounts", READS_FAX,
     "a deployed query still reads accounts.fax, and your function dropped it anyway."),
    (None, NO_FAX, "there is no backup table, and your function dropped the column anyway."),
    ("SELECT id, fax FROM accounts WHERE id <> 500", NO_FAX,
     "the backup lacks a row (id 500), and your function dropped the column anyway."),
]


def _has_column(conn: psycopg.Connection, table: str, column: str) -> bool:
    return conn.execute("SELECT count(*) FROM pg_attribute WHERE attrelid = to_regclass(quote_ident(%s)) "
                        "AND attname = %s AND NOT attisdropped", [table, column]).fetchone()[0] == 1


class GuardedDrop(Exercise):
    """A function that drops a column only when nothing reads it and a complete backup exists."""

    answers = ("answer_drop",)
    hints = (
        "Three refusals before the DROP: a deployed query still names the column; the backup table does "
        "not exist; the backup does not hold every (id, value) of the table.",
        "Search each query with a word match (re.search(rf'\\b{column}\\b', sql)); to_regclass(name) is NULL "
        "when a table does not exist; (SELECT id, col FROM t EXCEPT SELECT id, col FROM backup) finds "
        "rows the backup lacks. Raise an exception to refuse.",
        "Then SET lock_timeout = '1s' and ALTER TABLE t DROP COLUMN c. See the worked answer with .solution().",
    )

    def grade(self, box: Sandbox, answer_drop: Callable[..., Any]) -> str:
        need_function("answer_drop", answer_drop, "conn, table, column, *, backup_table, deployed_sql")
        with scratch(box, "q4") as sb, sb.connect("check") as conn:
            conn.execute(Q4_SETUP_SQL)
            before = fingerprint(conn, "accounts")
            values = values_md5(conn, "accounts", ["id", "fax"])

            def attempt(queries: list[str]) -> BaseException | None:
                try:
                    answer_drop(conn, "accounts", "fax", backup_table="accounts_fax_backup", deployed_sql=queries)
                except Exception as exc:  # a refusal, by design
                    return exc
                finally:
                    if conn.info.transaction_status != psycopg.pq.TransactionStatus.IDLE:
                        conn.rollback()
                return None

            for backup, queries, wrong in REFUSALS + [("SELECT id, fax FROM accounts", NO_FAX, "")]:
                conn.execute("DROP TABLE IF EXISTS accounts_fax_backup")
                if backup:
                    conn.execute(sql.SQL("CREATE TABLE accounts_fax_backup AS {}").format(sql.SQL(backup)))
                refused = attempt(queries)
                if wrong and (refused is None or not _has_column(conn, "accounts", "fax")):
                    raise Incorrect(wrong)
            if refused is not None:
                raise Incorrect(f"nothing reads fax and the backup is complete, but your function refused: "
                                f"{first_line(refused)}")
            if _has_column(conn, "accounts", "fax"):
                raise Incorrect("your function returned without error, but accounts.fax is still there.")
            after = fingerprint(conn, "accounts")
            kept = values_md5(conn, "accounts_fax_backup", ["id", "fax"])
        if after["rows"] != before["rows"] or [c[0] for c in after["columns"]] != ["email", "id"]:
            raise Incorrect(f"after the drop accounts should keep its {before['rows']} rows and the columns "
                            f"email and id; it has {after['rows']} rows and {[c[0] for c in after['columns']]}.")
        if kept != values:
            raise Incorrect("the backup no longer matches the dropped values (checksum differs).")
        return ("refused while a deployed query read fax, without a backup, and with an incomplete one; "
                f"then dropped it with all {before['rows']} values safe in the backup (checksum {values[:8]}).")


ex = Notebook("02_preventive_actions", q1=MissingDowngrade(), q2=DualWriteTrigger(), q3=UniqueEmail(),
              q4=GuardedDrop())
