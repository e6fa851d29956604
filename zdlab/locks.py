"""Which table locks each statement of a migration takes, read from ``pg_locks``, never guessed.

    from zdlab.locks import locks_taken
    for s in locks_taken(sb, "ALTER TABLE users ADD COLUMN c int"):
        print(s.sql, s.locks)       # [{'relation': 'users', 'mode': 'AccessExclusiveLock'}]

How it measures
---------------
* Statements that can run in a transaction all run, in file order, in ONE transaction on the
  connection ``sb.connect("locks")``; after each one we read ``pg_locks`` for that backend and
  report the (table, mode) pairs that were not held before it. Everything is rolled back at
  the end, so statement N sees the effects of 1..N-1 and nothing is committed.
* Limitation of that diff: Postgres keeps one ``pg_locks`` row per (table, mode), so a mode an
  earlier statement of the file already holds would be invisible when a later statement
  requests it again (``CREATE INDEX a ...; CREATE INDEX b ...`` on one table). To close that
  gap, every statement that ran while locks were already held is also run ALONE in a fresh
  transaction (rolled back); the modes it takes there on a table that was already held in that
  mode are added. If it cannot run alone (it depends on an earlier statement), the gap stays.
* Statements that cannot run in a transaction block (``CREATE INDEX CONCURRENTLY``,
  ``DROP INDEX CONCURRENTLY``, ``REINDEX ... CONCURRENTLY``/``REINDEX SCHEMA``, ``VACUUM t``)
  run for real on an autocommit session while a second session polls ``pg_locks`` for that
  backend every ~1 ms. A third session holds an old snapshot so that the concurrent builds,
  which wait for older snapshots, sit visibly on their lock until we have seen them wait.
  They run against the committed sandbox: effects of earlier, rolled-back statements of the
  same file are not visible to them. Afterwards their effect on indexes is undone (a created
  index dropped, a dropped index re-created), so the sandbox ends as it began.
* Server-wide statements (``ALTER SYSTEM``, ``CREATE DATABASE``, ``VACUUM`` without a table,
  ...) and any statement Postgres refuses inside a transaction (SQLSTATE 25001) that we do not
  know how to undo are not run: reported as skipped, with a note.
* ``BEGIN``/``COMMIT``/``ROLLBACK`` in the file are skipped (we wrap everything ourselves).
* A statement that fails is reported with Postgres's message and no locks; the statements
  after it are reported as not run (they would usually depend on it).

Only locks on tables (relkind r, p, m) count; indexes, sequences, system catalogs and
transaction-id locks are ignored. Sequence values consumed by a rolled-back INSERT are not
given back (Postgres never does).
"""

from __future__ import annotations

import re
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import psycopg
import psycopg.sql

from .errors import BadInput
from .sandbox import Sandbox
from .statements import is_begin, is_end, migration_text, split

Lock = dict[str, str]

# Run on an autocommit session and observed from outside (their effect is undone afterwards).
_OBSERVE = re.compile(
    r"^(CREATE\s+(UNIQUE\s+)?INDEX\s+CONCURRENTLY\b"
    r"|DROP\s+INDEX\s+CONCURRENTLY\b"
    r"|REINDEX\b.*\bCONCURRENTLY\b"
    r"|REINDEX\s+(\([^)]*\)\s*)?SCHEMA\b"
    r"|VACUUM\b)", re.I | re.S)
# Cannot run in a transaction and reach beyond the sandbox: never run.
_REFUSE = re.compile(
    r"^(ALTER\s+SYSTEM\b|PREPARE\s+TRANSACTION\b|(CREATE|DROP)\s+(DATABASE|TABLESPACE|SUBSCRIPTION)\b"
    r"|ALTER\s+SUBSCRIPTION\b|REINDEX\s+(\([^)]*\)\s*)?(SYSTEM|DATABASE)\b"
    r"|CLUSTER(\s+VERBOSE)?\s*$|ALTER\s+TABLE\b.*\bDETACH\s+PARTITION\b.*\bCONCURRENTLY\b)", re.I | re.S)
# VACUUM with options only, no table: it would vacuum every table of the shared database.
_VACUUM_ALL = re.compile(r"^VACUUM\s*(\([^)]*\))?(\s+(FULL|FREEZE|VERBOSE|ANALYZE|ANALYSE))*\s*$", re.I)
_CONCURRENTLY = re.compile(r"\s+CONCURRENTLY\b", re.I)

_TABLES_SQL = """
SELECT c.oid, n.nspname, c.relname
FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE c.relkind IN ('r', 'p', 'm')
  AND n.nspname NOT IN ('pg_catalog', 'information_schema') AND n.nspname NOT LIKE 'pg\\_toast%'
"""
_LOCKS_SQL = """
SELECT l.locktype, l.relation, l.mode, l.granted
FROM pg_locks l
WHERE l.pid = %s
  AND (l.locktype = 'virtualxid'
       OR (l.locktype = 'relation'
           AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database())))
"""
_INDEXES_SQL = """
SELECT n.nspname, ic.relname, pg_get_indexdef(ic.oid), i.indrelid, tn.nspname
FROM pg_index i
JOIN pg_class ic ON ic.oid = i.indexrelid JOIN pg_namespace n ON n.oid = ic.relnamespace
JOIN pg_class t ON t.oid = i.indrelid JOIN pg_namespace tn ON tn.oid = t.relnamespace
WHERE n.nspname NOT IN ('pg_catalog', 'information_schema') AND n.nspname NOT LIKE 'pg\\_toast%'
"""

# Table lock modes, weakest first (PostgreSQL docs, "Table-Level Locks").
MODES = ("AccessShareLock", "RowShareLock", "RowExclusiveLock", "ShareUpdateExclusiveLock", "ShareLock",
         "ShareRowExclusiveLock", "ExclusiveLock", "AccessExclusiveLock")

POLL_S = 0.001          # observer poll period: a lock held for a few ms is still seen
HOLD_MAX_S = 5.0        # the holder is released at the latest after this long
DEFAULT_TIMEOUT_S = 300.0


@dataclass
class StatementLocks:
    """One statement of the file and the table locks it took."""

    sql: str
    locks: list[Lock] = field(default_factory=list)
    error: str | None = None
    # ok | error | not run (after an earlier error) | skipped (transaction control, refused)
    status: str = "ok"
    # transaction: measured inside our transaction; observed: watched from another session
    method: str | None = None
    note: str | None = None

    def to_dict(self) -> dict:
        return asdict(self)

    def modes(self, relation: str) -> list[str]:
        """The lock modes taken on ``relation`` (a convenience for notebooks and tests)."""
        return [lk["mode"] for lk in self.locks if lk["relation"] == relation]

    def strongest(self, relation: str) -> str | None:
        """The strongest mode taken on ``relation``: the one that decides what it blocks."""
        modes = self.modes(relation)
        return max(modes, key=MODES.index) if modes else None


def _bare(stmt: str) -> str:
    import sqlparse

    return sqlparse.format(stmt, strip_comments=True).strip()


def _tables(conn: psycopg.Connection, schema: str) -> dict[int, str]:
    """oid -> display name of every table the session can see (schema-qualified outside the sandbox)."""
    return {oid: (rel if nsp == schema else f"{nsp}.{rel}")
            for oid, nsp, rel in conn.execute(_TABLES_SQL).fetchall()}


def _lock_rows(conn: psycopg.Connection, pid: int) -> list[tuple]:
    return conn.execute(_LOCKS_SQL, [pid]).fetchall()


def _table_locks(rows: list[tuple], names: dict[int, str]) -> set[tuple[str, str]]:
    return {(names[rel], mode) for kind, rel, mode, _ in rows if kind == "relation" and rel in names}


def _as_list(pairs: set[tuple[str, str]]) -> list[Lock]:
    return [{"relation": r, "mode": m} for r, m in sorted(pairs)]


def _message(exc: BaseException) -> str:
    diag = getattr(exc, "diag", None)
    primary = getattr(diag, "message_primary", None) if diag else None
    return primary or str(exc).strip().splitlines()[0]


def locks_taken(sb: Sandbox, sql: str | Path, *, lock_timeout: str = "5s",
                timeout: float = DEFAULT_TIMEOUT_S) -> list[StatementLocks]:
    """For each statement of ``sql`` (SQL text, or a ``Path`` to a .sql file), the table locks it
    takes; nothing is committed. Input that is no SQL at all raises ``BadInput``; a statement
    that fails is a result (``status="error"``), not an exception.

    ``lock_timeout`` bounds each wait for a lock held by someone else (a DDL queued behind a
    live transaction would otherwise block the application meanwhile); ``timeout`` bounds each
    observed non-transactional statement, which gets no lock_timeout: those statements take
    only ShareUpdateExclusiveLock, which queues no application query, and their legitimate
    wait for every older transaction in the database would trip it.
    """
    if not isinstance(sb, Sandbox):  # a common slip: locks_taken(sql) or the sandbox's name
        raise BadInput(f"locks_taken(sb, sql): sb should be a sandbox (sb = zdlab.sandbox(\"name\")), "
                       f"not {type(sb).__name__}.")
    sql = migration_text(sql)
    results: list[StatementLocks] = []
    replay: list[str] = []      # transactional form of the statements done so far
    probes: list[tuple[int, set[tuple[str, str]]]] = []   # (index, locks held before it)
    stopped = False
    with sb.connect("locks", prepare_threshold=None) as conn:
        conn.execute("SELECT set_config('lock_timeout', %s, false)", [lock_timeout])
        pid = conn.info.backend_pid
        in_tx = False
        for stmt in split(sql):
            if stopped:
                results.append(StatementLocks(stmt, status="not run", note="an earlier statement failed"))
                continue
            if is_begin(stmt) or is_end(stmt):
                results.append(StatementLocks(stmt, status="skipped",
                                              note="transaction control: locks_taken runs the file in its own "
                                                   "transaction and rolls it back"))
                continue
            bare = _bare(stmt)
            if _REFUSE.match(bare) or _VACUUM_ALL.match(bare):
                results.append(StatementLocks(stmt, status="skipped",
                                              note="not run: it acts beyond the sandbox and cannot be rolled back"))
                continue
            if _OBSERVE.match(bare):
                if in_tx:  # our open transaction's locks would block the statement we watch
                    conn.execute("ROLLBACK")
                    in_tx = False
                res = _observe(sb, stmt, timeout, prefix=bool(replay))
                results.append(res)
                if res.error:
                    stopped = True
                elif not bare.upper().startswith(("VACUUM", "REINDEX")):
                    # later statements must see its effect: replay it in transaction form
                    replay.append(_CONCURRENTLY.sub("", stmt, count=1))
                continue

            if not in_tx:
                conn.execute("BEGIN")
                in_tx = True
                try:
                    for earlier in replay:
                        conn.execute(earlier)
                except psycopg.Error as exc:
                    results.append(StatementLocks(stmt, status="error", method="transaction",
                                                  error=f"replaying an earlier statement failed: {_message(exc)}"))
                    stopped = True
                    continue
            names = _tables(conn, sb.schema)
            before = _table_locks(_lock_rows(conn, pid), names)
            try:
                conn.execute(stmt)
            except psycopg.errors.ActiveSqlTransaction as exc:
                conn.execute("ROLLBACK")
                in_tx = False
                results.append(StatementLocks(stmt, status="skipped",
                                              note=f"not run: {_message(exc)}, and zdlab does not know how to "
                                                   f"undo it afterwards"))
                continue
            except psycopg.Error as exc:
                conn.execute("ROLLBACK")
                in_tx = False
                results.append(StatementLocks(stmt, status="error", method="transaction", error=_message(exc)))
                stopped = True
                continue
            names.update(_tables(conn, sb.schema))  # tables the statement created
            after = _table_locks(_lock_rows(conn, pid), names)
            results.append(StatementLocks(stmt, _as_list(after - before), method="transaction"))
            replay.append(stmt)
            if before:
                probes.append((len(results) - 1, before))
        if in_tx:
            conn.execute("ROLLBACK")
        for index, held in probes:
            _probe_alone(conn, pid, sb.schema, results[index], held)
    return results


def _probe_alone(conn: psycopg.Connection, pid: int, schema: str, res: StatementLocks,
                 held: set[tuple[str, str]]) -> None:
    """Add the modes the statement takes when run alone that the in-file diff could not see."""
    conn.execute("BEGIN")
    try:
        names = _tables(conn, schema)
        conn.execute(res.sql)
        names.update(_tables(conn, schema))
        alone = _table_locks(_lock_rows(conn, pid), names)
    except psycopg.Error:
        alone = None  # it depends on earlier statements: keep the diff, with its limitation
    finally:
        conn.execute("ROLLBACK")
    seen = {(lk["relation"], lk["mode"]) for lk in res.locks}
    if alone is None:
        res.note = ("modes already held by earlier statements of the file are not re-reported "
                    "(it cannot run alone to check)")
        return
    hidden = (alone & held) - seen
    if hidden:
        res.locks = _as_list(seen | hidden)
        res.note = ("includes modes an earlier statement already held, measured by running this "
                    "statement alone")


def _indexes(conn: psycopg.Connection) -> dict[tuple[str, str], tuple[str, int, str]]:
    return {(nsp, name): (definition, table, table_nsp)
            for nsp, name, definition, table, table_nsp in conn.execute(_INDEXES_SQL).fetchall()}


def _observe(sb: Sandbox, stmt: str, timeout: float, *, prefix: bool) -> StatementLocks:
    """Run a statement that cannot run in a transaction and watch its locks from outside."""
    res = StatementLocks(stmt, method="observed")
    with (sb.connect("locks-observer", prepare_threshold=None) as obs,
          sb.connect("locks-holder") as holder,
          sb.connect("locks-run", prepare_threshold=None) as run):
        names = _tables(obs, sb.schema)
        indexes_before = _indexes(obs)
        _hold(holder, sb.schema, [rel for oid, rel in names.items() if "." not in rel])
        holding = True
        run_pid = run.info.backend_pid
        failure: list[BaseException] = []

        def target() -> None:
            try:
                run.execute(stmt)
            except BaseException as exc:  # reported by the main thread
                failure.append(exc)

        seen: set[tuple[str, str]] = set()
        thread = threading.Thread(target=target, name="zdlab-locks-run", daemon=True)
        start = time.monotonic()
        thread.start()
        cancelled = False
        while thread.is_alive():
            rows = _lock_rows(obs, run_pid)
            seen |= _table_locks(rows, names)
            now = time.monotonic() - start
            waiting = any(not granted for *_, granted in rows)  # seen waiting: the holder has done its job
            if holding and (waiting or now > HOLD_MAX_S):
                holder.execute("ROLLBACK")
                holding = False
            if now > timeout and not cancelled:
                run.cancel_safe()
                cancelled = True
            thread.join(POLL_S)
        if holding:
            holder.execute("ROLLBACK")
        thread.join()
        res.locks = _as_list(seen)
        if failure:
            res.status = "error"
            res.error = _message(failure[0])
            if cancelled:
                res.error = f"cancelled after {timeout:.0f} s: {res.error}"
            elif prefix:
                res.error += (" (it ran outside the transaction, so the earlier statements of the file "
                              "were not applied for it)")
            res.locks = []
        elif not seen:
            res.note = "finished before any table lock could be observed"
        undo = _undo_indexes(obs, indexes_before, sb.schema, names, {rel for rel, _ in seen})
        if undo:
            res.note = "; ".join(filter(None, [res.note, undo]))
    return res


def _hold(holder: psycopg.Connection, schema: str, tables: list[str]) -> None:
    """Open the transaction that makes a fast statement wait where we can see it.

    On a 1,000-row table a concurrent index build or a VACUUM is over in a few ms, faster than a
    poll can be sure to catch. So the holder takes ShareUpdateExclusiveLock on the sandbox's
    tables (it conflicts with every statement observed here, and with no application query:
    reads and writes take weaker modes) and keeps a snapshot (CREATE INDEX / REINDEX
    CONCURRENTLY wait for every older snapshot, holding their table lock). The statement then
    sits in pg_locks, waiting, until the poll sees it and the holder ends.
    """
    holder.execute("BEGIN ISOLATION LEVEL REPEATABLE READ")
    if tables:
        holder.execute("SET LOCAL lock_timeout = '1s'")  # busy with someone else's DDL: go without
        try:
            holder.execute(psycopg.sql.SQL("LOCK TABLE {} IN SHARE UPDATE EXCLUSIVE MODE").format(
                psycopg.sql.SQL(", ").join(psycopg.sql.Identifier(schema, t) for t in tables)))
        except psycopg.errors.LockNotAvailable:
            holder.execute("ROLLBACK")
            holder.execute("BEGIN ISOLATION LEVEL REPEATABLE READ")
    holder.execute("SELECT 1")  # takes the snapshot (LOCK TABLE does not)


def _undo_indexes(conn: psycopg.Connection, before: dict, schema: str, names: dict[int, str],
                  touched: set[str]) -> str | None:
    """Put the sandbox's indexes back as they were; a message if that failed."""
    after = _indexes(conn)

    def ours(table_nsp: str, table_oid: int) -> bool:
        # only indexes in the sandbox or on a table the statement locked: never another user's
        return table_nsp == schema or names.get(table_oid) in touched

    problems = []
    for (nsp, name), (_, table, table_nsp) in after.items():
        if (nsp, name) not in before and ours(table_nsp, table):
            try:
                conn.execute(psycopg.sql.SQL("DROP INDEX IF EXISTS {}").format(psycopg.sql.Identifier(nsp, name)))
            except psycopg.Error as exc:
                problems.append(f"could not drop index {nsp}.{name}: {_message(exc)}")
    for (nsp, name), (definition, table, table_nsp) in before.items():
        if (nsp, name) not in after and ours(table_nsp, table):
            try:
                conn.execute(definition)
            except psycopg.Error as exc:
                problems.append(f"could not re-create index {nsp}.{name}: {_message(exc)}")
    return "; ".join(problems) or None
