"""A minimal migration runner: raw SQL up/down pairs and a version table.

    from zdlab.migrate import Migration, Migrator
    migrations = [
        Migration(1, "create products", up="CREATE TABLE products (...)", down="DROP TABLE products"),
        Migration(2, "index name", up="CREATE INDEX CONCURRENTLY ...", down="DROP INDEX CONCURRENTLY ...",
                  transactional=False),
    ]
    m = Migrator(conn, migrations)    # conn: an autocommit psycopg connection
    m.up()                            # apply every pending migration, in version order
    m.down(1)                         # revert down to version 1 (2's down runs)
    m.status()                        # [(version, name, applied?)]

What it does, and nothing more (docs/migrations.md says why the kit has its own):

* One row per applied migration in ``schema_migrations`` (version, name, checksum of the up
  SQL, applied_at), written in the same transaction as the migration, so a failed migration
  leaves neither its changes nor its row behind.
* A transactional migration runs in one transaction with ``SET LOCAL lock_timeout``: a DDL
  stuck behind a long transaction fails fast instead of queueing the application behind it.
  ``transactional=False`` (for ``CREATE INDEX CONCURRENTLY`` and friends, which refuse to run
  in a transaction block) runs statement by statement in autocommit, with a session
  ``lock_timeout``; if one fails, the earlier ones stay done and the version is not recorded.
* The one rule for concurrent index statements (``CREATE [UNIQUE] INDEX CONCURRENTLY``,
  ``REINDEX ... CONCURRENTLY``, ``DROP INDEX CONCURRENTLY``): they run with NO lock_timeout.
  They wait for every older transaction (a report, a ``pg_dump``) while holding only
  ShareUpdateExclusiveLock, which no application query waits behind, and a lock_timeout would
  make them fail there and leave an INVALID index. If one fails anyway (duplicate keys, a
  cancel, a ``statement_timeout``), the runner drops, concurrently, every INVALID index that
  appeared during that statement before it reports the error: a migration run by ``Migrator``
  never leaves an INVALID index behind.
* ``down=None`` marks a migration irreversible: ``down()`` refuses to pass it.
* An applied migration whose up SQL has since been edited is refused (checksum mismatch):
  the database no longer matches the file, so reverting it could not be trusted.
* ``Migrator.from_dir(conn, path)`` reads ``NNN_name.up.sql`` / ``NNN_name.down.sql`` files;
  a first line ``-- zdlab:no-transaction`` makes the migration non-transactional.
"""

from __future__ import annotations

import contextlib
import hashlib
import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import psycopg
import sqlparse
from psycopg import sql as pgsql

from .errors import ZdlabError, first_line
from .statements import short_sql, split

NO_TRANSACTION = "-- zdlab:no-transaction"
_FILE = re.compile(r"^(\d+)_(.+)\.(up|down)\.sql$")


class MigrationError(ZdlabError):
    """A migration failed, or cannot be applied or reverted."""


class IrreversibleMigration(MigrationError):
    """``down()`` would have to pass a migration that has no down."""


@dataclass(frozen=True)
class Migration:
    version: int
    name: str
    up: str
    down: str | None  # None: irreversible
    transactional: bool = True

    @property
    def checksum(self) -> str:
        return hashlib.md5(self.up.encode()).hexdigest()


class Migrator:
    """Applies and reverts ``migrations`` on ``conn`` (autocommit), recording them in ``table``."""

    def __init__(self, conn: psycopg.Connection, migrations: Iterable[Migration], *,
                 table: str = "schema_migrations", lock_timeout: str = "2s") -> None:
        if not conn.autocommit:
            raise MigrationError("Migrator needs an autocommit connection (sb.connect() gives one): it opens "
                                 "its own transactions, and CREATE INDEX CONCURRENTLY cannot run inside one.")
        self.conn = conn
        self.migrations = sorted(migrations, key=lambda m: m.version)
        versions = [m.version for m in self.migrations]
        if len(set(versions)) != len(versions) or any(v < 1 for v in versions):
            raise MigrationError(f"migration versions must be unique and >= 1, got {versions}")
        self.table = pgsql.Identifier(table)
        self.lock_timeout = lock_timeout
        self.log: list[str] = []  # "up 2 index name" / "down 2 index name", in order
        conn.execute(pgsql.SQL(
            "CREATE TABLE IF NOT EXISTS {} (version int PRIMARY KEY, name text NOT NULL, "
            "checksum text NOT NULL, applied_at timestamptz NOT NULL DEFAULT clock_timestamp())").format(self.table))

    @classmethod
    def from_dir(cls, conn: psycopg.Connection, path: str | Path, **kwargs: object) -> Migrator:
        return cls(conn, load_dir(path), **kwargs)  # type: ignore[arg-type]

    # -- reading the state -------------------------------------------------------------------

    def applied(self) -> dict[int, str]:
        """version -> checksum of every applied migration."""
        rows = self.conn.execute(pgsql.SQL("SELECT version, checksum FROM {} ORDER BY version").format(self.table))
        return dict(rows.fetchall())

    def current(self) -> int:
        """The highest applied version (0 when none)."""
        return max(self.applied(), default=0)

    def status(self) -> list[tuple[int, str, bool]]:
        done = self.applied()
        return [(m.version, m.name, m.version in done) for m in self.migrations]

    # -- changing it -------------------------------------------------------------------------

    def up(self, target: int | None = None) -> list[int]:
        """Apply every pending migration up to ``target`` (all by default); the versions applied."""
        done = self.applied()
        self._check_unchanged(done)
        ran = []
        for m in self.migrations:
            if m.version in done or (target is not None and m.version > target):
                continue
            self._run(m, m.up, "up")
            ran.append(m.version)
        return ran

    def down(self, target: int = 0) -> list[int]:
        """Revert applied migrations above ``target``, newest first; the versions reverted."""
        done = self.applied()
        self._check_unchanged(done)
        todo = [m for m in reversed(self.migrations) if m.version in done and m.version > target]
        stuck = [m for m in todo if m.down is None]
        if stuck:  # refuse before reverting anything: stopping half-way is worse
            m = stuck[0]
            raise IrreversibleMigration(f"migration {m.version} ({m.name}) has no down: it cannot be reverted. "
                                        f"Restore from a backup, or write a forward migration that undoes it.")
        for m in todo:
            self._run(m, m.down or "", "down")
        return [m.version for m in todo]

    def _check_unchanged(self, done: dict[int, str]) -> None:
        for m in self.migrations:
            if m.version in done and done[m.version] != m.checksum:
                raise MigrationError(f"migration {m.version} ({m.name}) was edited after it was applied: the "
                                     f"database does not match its file any more. Write a new migration instead.")

    def _run(self, m: Migration, body: str, direction: str) -> None:
        record = (pgsql.SQL("INSERT INTO {} (version, name, checksum) VALUES (%s, %s, %s)").format(self.table),
                  [m.version, m.name, m.checksum]) if direction == "up" else \
                 (pgsql.SQL("DELETE FROM {} WHERE version = %s").format(self.table), [m.version])
        stmts = split(body)
        current = ""
        try:
            if m.transactional:
                with self.conn.transaction():
                    self.conn.execute("SELECT set_config('lock_timeout', %s, true)", [self.lock_timeout])
                    for current in stmts:
                        self.conn.execute(current, prepare=False)
                    self.conn.execute(*record)
            else:
                try:
                    for current in stmts:
                        self._run_alone(current)
                    self.conn.execute("SELECT set_config('lock_timeout', %s, false)", [self.lock_timeout])
                    self.conn.execute(*record)
                finally:
                    self.conn.execute("RESET lock_timeout")
        except psycopg.Error as exc:
            first = first_line(exc)
            shown = short_sql(current, 100)
            raise MigrationError(f"{direction} {m.version} ({m.name}) failed at `{shown}`: {type(exc).__name__}: "
                                 f"{first}" + ("" if m.transactional else
                                               " (non-transactional: the statements before it stay applied)")
                                 ) from exc
        self.log.append(f"{direction} {m.version} {m.name}")

    def _run_alone(self, stmt: str) -> None:
        """One statement of a non-transactional migration, in autocommit."""
        if not is_concurrent_index(stmt):
            self.conn.execute("SELECT set_config('lock_timeout', %s, false)", [self.lock_timeout])
            self.conn.execute(stmt, prepare=False)
            return
        # No lock_timeout: waiting for older snapshots is harmless, failing there leaves an INVALID index.
        self.conn.execute("SET lock_timeout = 0")
        before = invalid_indexes(self.conn)
        try:
            self.conn.execute(stmt, prepare=False)
        except psycopg.Error:
            for schema, name in invalid_indexes(self.conn) - before:
                with contextlib.suppress(psycopg.Error):  # gone already: nothing to clean
                    self.conn.execute(pgsql.SQL("DROP INDEX CONCURRENTLY IF EXISTS {}").format(
                        pgsql.Identifier(schema, name)))
            raise


_CONCURRENT_INDEX = re.compile(r"^(CREATE\s+(UNIQUE\s+)?INDEX|REINDEX|DROP\s+INDEX)\b.*\bCONCURRENTLY\b",
                               re.I | re.S)


def is_concurrent_index(stmt: str) -> bool:
    """CREATE [UNIQUE] INDEX / REINDEX / DROP INDEX ... CONCURRENTLY: the statements run without lock_timeout."""
    return bool(_CONCURRENT_INDEX.match(sqlparse.format(stmt, strip_comments=True).strip()))


def invalid_indexes(conn: psycopg.Connection) -> set[tuple[str, str]]:
    """(schema, name) of every INVALID index in the database (pg_index.indisvalid = false)."""
    return {(r[0], r[1]) for r in conn.execute(
        "SELECT n.nspname, c.relname FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid "
        "JOIN pg_namespace n ON n.oid = c.relnamespace WHERE NOT i.indisvalid")}


def load_dir(path: str | Path) -> list[Migration]:
    """Migrations from ``NNN_name.up.sql`` and ``NNN_name.down.sql`` files (a down is optional)."""
    found: dict[int, dict[str, str]] = {}
    for f in sorted(Path(path).glob("*.sql")):
        match = _FILE.match(f.name)
        if not match:
            continue
        version, name, direction = int(match.group(1)), match.group(2), match.group(3)
        entry = found.setdefault(version, {"name": name})
        entry[direction] = f.read_text(encoding="utf-8")
    out = []
    for version, entry in sorted(found.items()):
        if "up" not in entry:
            raise MigrationError(f"migration {version} ({entry['name']}) has a down file but no up file")
        up = entry["up"]
        out.append(Migration(version, entry["name"], up, entry.get("down"),
                             transactional=not up.lstrip().startswith(NO_TRANSACTION)))
    return out


def write_dir(path: str | Path, migrations: Iterable[Migration]) -> list[Path]:
    """Write migrations as files ``from_dir`` reads back (and a linter such as squawk can check)."""
    root = Path(path)
    root.mkdir(parents=True, exist_ok=True)
    written = []
    for m in migrations:
        stem = f"{m.version:03d}_{re.sub(r'[^a-z0-9]+', '_', m.name.lower()).strip('_')}"
        up = m.up if m.transactional or m.up.lstrip().startswith(NO_TRANSACTION) else f"{NO_TRANSACTION}\n{m.up}"
        parts = [("up", up)] + ([("down", m.down)] if m.down is not None else [])
        for direction, body in parts:
            f = root / f"{stem}.{direction}.sql"
            f.write_text(body.strip() + "\n", encoding="utf-8")
            written.append(f)
    return written
