"""A transaction left open on a table: a report, a console, a ``pg_dump``, a job.

Every lock-queue demo needs one: a migration queues behind it, and the application queues
behind the migration. ``LongTransaction`` opens it, watches one session (the migration's), and
ends it a set time after that session is first seen waiting, so a demo controls how long the
queue lasts without sleeping for a guessed time.

    with LongTransaction(sb, "users", seconds=1.0, watch_pid=mig.info.backend_pid) as lt:
        mig.execute("ALTER TABLE users ADD COLUMN x int")   # queues until lt ends
    lt.waits, lt.blocked_by, lt.waited_on

``repeatable_read=True`` keeps one snapshot (what ``pg_dump`` does): ``CREATE INDEX
CONCURRENTLY`` waits for it (on a ``virtualxid``) even though it holds no lock on the table.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field

import psycopg
from psycopg import sql as pgsql

from .sandbox import Sandbox

POLL_S = 0.005  # a 50-100 ms lock wait is seen ten times or more

_WAITING_SQL = ("SELECT mode, coalesce(relation::regclass::text, locktype) FROM pg_locks "
                "WHERE pid = %s AND NOT granted LIMIT 1")
_BLOCKERS_SQL = ("SELECT coalesce(nullif(split_part(application_name, '/', 3), ''), application_name) "
                 "|| ' (' || state || ')' FROM pg_stat_activity WHERE pid = ANY(pg_blocking_pids(%s))")


@dataclass
class LongTransaction:
    """A session that read ``table`` in a transaction it keeps open.

    It ends (rollback) ``seconds`` after the session ``watch_pid`` is first seen waiting for a
    lock, or when the ``with`` block ends, whichever comes first. A watcher in a second session
    records every stretch in which ``watch_pid`` waited (``waits``: (start, end) monotonic)."""

    box: Sandbox
    table: str = "users"
    seconds: float = 2.0
    watch_pid: int | None = None
    repeatable_read: bool = False  # one snapshot for its whole life, as pg_dump keeps
    role: str = "long-tx"  # its application_name in the sandbox: what the blocking chain shows
    waits: list[tuple[float, float]] = field(default_factory=list)
    blocked_by: list[str] = field(default_factory=list)  # who the watched session waited for, first time
    waited_on: str | None = None  # what it waited for first: a table, or a lock type ('virtualxid')
    started_at: float = 0.0
    released_at: float | None = None
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None
    _conn: psycopg.Connection | None = None
    _error: BaseException | None = None

    def __enter__(self) -> LongTransaction:
        self._conn = self.box.connect(self.role, autocommit=False)
        if self.repeatable_read:
            self._conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
        self._conn.execute(pgsql.SQL("SELECT count(*) FROM {}").format(pgsql.Identifier(self.table)))
        self.started_at = time.monotonic()
        self._thread = threading.Thread(target=self._watch, daemon=True, name="zdlab-long-tx")
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(10)
        self._release()
        if self._conn is not None:
            self._conn.close()

    @property
    def lived_s(self) -> float:
        end = self.released_at if self.released_at is not None else time.monotonic()
        return end - self.started_at

    def _release(self) -> None:
        # psycopg connections are thread-safe: the watcher thread may end it.
        if self.released_at is None and self._conn is not None and not self._conn.closed:
            self._conn.rollback()
            self.released_at = time.monotonic()

    def _watch(self) -> None:
        try:
            with self.box.connect(f"{self.role}-watch", prepare_threshold=None) as obs:
                release_at: float | None = None
                waiting_since: float | None = None
                while not self._stop.is_set():
                    now = time.monotonic()
                    seen = obs.execute(_WAITING_SQL, [self.watch_pid]).fetchone() \
                        if self.watch_pid is not None else None
                    if seen and waiting_since is None:
                        waiting_since = now
                        if release_at is None:
                            release_at = now + self.seconds
                            self.waited_on = seen[1]
                            self.blocked_by = [r[0] for r in obs.execute(_BLOCKERS_SQL, [self.watch_pid])]
                    elif not seen and waiting_since is not None:
                        self.waits.append((waiting_since, now))
                        waiting_since = None
                    if release_at is not None and now >= release_at and self.released_at is None:
                        self._release()  # the scenario: the transaction ends now
                    self._stop.wait(POLL_S)
                if waiting_since is not None:
                    self.waits.append((waiting_since, time.monotonic()))
        except BaseException as exc:  # shown by the caller; the rollback still happens in __exit__
            self._error = exc
