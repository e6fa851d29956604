"""Where a migration runs in a rolling deploy: pods that migrate at start, a Job before the
rollout, a contract step after it; a start-up migration stuck in the lock queue; readiness.

Notebook 06 and its checker run the very same scenario, so it lives here:

- ``V1`` and ``V2``: the application before and after release 2. v1 reads ``users.referrer``;
  v2 reads ``users.plan`` and upgrades users to the ``'pro'`` or ``'team'`` plan.
- ``RELEASE_2``: the kit's ``Migrator`` migrations of both releases: 1 adds ``referrer`` (release
  1), 2 is release 2's expand (``plan``), 3 its contract (drop ``referrer``, which v1 reads).
- ``race(sb, pods, lock=...)``: several pods run the same pending migrations at once, as an
  init container or a release's start command does on every new pod; with ``lock=True`` each
  takes ``pg_advisory_lock`` around its run first (what Ecto's ``:pg_advisory_lock`` migration
  lock and Rails' advisory lock do).
- ``PodStartup``: one new pod whose readiness is "my start-up migration is done", with a
  progress deadline, optionally with ``lock_timeout`` and retries; a step for ``measure_in``.
- ``run_placed`` / ``tally``: run migrations at a point of a rollout, and count each version's
  requests and failures after it.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

import psycopg
from psycopg import sql as pgsql

from .errors import first_line
from .longtx import LongTransaction
from .migrate import Migration, MigrationError, Migrator
from .records import Span
from .sandbox import Sandbox
from .traffic import AppVersion, RequestContext, Traffic

VERSIONS_TABLE = "schema_migrations"
RACE_TABLE = "race_migrations"  # the race demo's own version table, reset on its own
PLANS = ("free", "pro", "team")


# -- the application, before and after release 2 ---------------------------------------------

def _v1_read(conn: psycopg.Connection, ctx: RequestContext) -> None:
    conn.execute("SELECT id, email, name, referrer FROM users WHERE id = %s", [ctx.user_id]).fetchall()


def _v1_rename(conn: psycopg.Connection, ctx: RequestContext) -> None:
    conn.execute("UPDATE users SET name = %s WHERE id = %s", [f"User {ctx.user_id}", ctx.user_id])


def _v2_read(conn: psycopg.Connection, ctx: RequestContext) -> None:
    conn.execute("SELECT id, email, name, plan FROM users WHERE id = %s", [ctx.user_id]).fetchall()


def _v2_upgrade(conn: psycopg.Connection, ctx: RequestContext) -> None:
    conn.execute("UPDATE users SET plan = %s WHERE id = %s", [ctx.rng.choice(PLANS[1:]), ctx.user_id])


V1 = AppVersion("v1", {"read_user": _v1_read, "rename_user": _v1_rename})
V2 = AppVersion("v2", {"read_user": _v2_read, "upgrade_plan": _v2_upgrade})

# -- the migrations of releases 1 and 2 -------------------------------------------------------

PLAN_CHECK = f"CHECK (plan IN ({', '.join(repr(p) for p in PLANS)}))"
# Instant: a constant default (no rewrite) and the CHECK NOT VALID (a CHECK added with the column would
# read every row under AccessExclusiveLock; the constant default satisfies it anyway).
EXPAND_SQL = ("ALTER TABLE users ADD COLUMN plan text NOT NULL DEFAULT 'free', "
              f"ADD CONSTRAINT users_plan_check {PLAN_CHECK} NOT VALID")
CONTRACT_SQL = "ALTER TABLE users DROP COLUMN referrer"
RELEASE_1 = [Migration(1, "referrer", "ALTER TABLE users ADD COLUMN referrer text",
                       "ALTER TABLE users DROP COLUMN referrer")]
EXPAND = Migration(2, "plans", EXPAND_SQL, "ALTER TABLE users DROP COLUMN plan")
CONTRACT = Migration(3, "drop referrer", CONTRACT_SQL, "ALTER TABLE users ADD COLUMN referrer text")
RELEASE_2 = [*RELEASE_1, EXPAND, CONTRACT]


def prepare_release_1(sb: Sandbox) -> None:
    """The database as release 1 left it: ``referrer`` there, no ``plan``, version 1 recorded."""
    with sb.connect("setup") as conn:
        conn.execute("DROP TABLE IF EXISTS schema_migrations")
        conn.execute("ALTER TABLE users DROP COLUMN IF EXISTS plan, DROP COLUMN IF EXISTS referrer")
        Migrator(conn, RELEASE_2).up(target=1)


# -- the race: every new pod runs pending migrations at start ---------------------------------

def race_migrations(rows: int, batch: int = 5_000) -> list[Migration]:
    """Release 1 added ``users.credits``; release 2 grants users 1..``rows`` 100 welcome credits,
    in batches outside a transaction (the backfill recipe: ``transactional=False``)."""
    batches = ";\n".join(f"UPDATE users SET credits = credits + 100 WHERE id BETWEEN {lo} AND "
                         f"{min(lo + batch - 1, rows)}" for lo in range(1, rows + 1, batch))
    return [Migration(1, "credits column", "ALTER TABLE users ADD COLUMN credits int NOT NULL DEFAULT 0",
                      "ALTER TABLE users DROP COLUMN credits"),
            Migration(2, "welcome credits", batches, "UPDATE users SET credits = credits - 100",
                      transactional=False)]


def prepare_race(sb: Sandbox, migrations: Sequence[Migration]) -> None:
    """Release 1 applied (``credits`` at 0), release 2's data migration pending."""
    with sb.connect("setup") as conn:
        conn.execute(pgsql.SQL("DROP TABLE IF EXISTS {}").format(pgsql.Identifier(RACE_TABLE)))
        conn.execute("ALTER TABLE users DROP COLUMN IF EXISTS credits")
        Migrator(conn, migrations, table=RACE_TABLE).up(target=1)


@contextlib.contextmanager
def migration_lock(conn: psycopg.Connection, key: str = VERSIONS_TABLE) -> Iterator[float]:
    """``pg_advisory_lock`` on ``hashtext(key)`` for the ``with`` block (session level: it
    outlives transactions, so non-transactional migrations run under it); yields the seconds
    spent waiting for it. Unlocked on the way out, even after an error."""
    start = time.monotonic()
    conn.execute("SELECT pg_advisory_lock(hashtext(%s))", [key])
    try:
        yield time.monotonic() - start
    finally:
        with contextlib.suppress(psycopg.Error):
            conn.execute("SELECT pg_advisory_unlock(hashtext(%s))", [key])


@dataclass
class PodRun:
    """One pod's start-up migration run: what it applied, how it ended, when (monotonic)."""

    pod: str
    applied: list[int] = field(default_factory=list)
    error: str | None = None
    started: float = 0.0
    locked: float | None = None  # when it got the advisory lock (lock=True)
    done: float = 0.0  # when its Migrator.up() returned (before it let the lock go)
    finished: float = 0.0

    @property
    def outcome(self) -> str:
        if self.error:
            return f"FAILED: {self.error}"
        return f"applied {self.applied}" if self.applied else "nothing to do"


def race(sb: Sandbox, migrations: Sequence[Migration], pods: int = 3, *, lock: bool = False,
         table: str = RACE_TABLE) -> list[PodRun]:
    """``pods`` pods start together and each runs ``Migrator.up()``; returns each pod's run.

    Every pod opens its connection first, then all start at one barrier, as pods scheduled by
    one rollout do. ``lock``: each pod takes ``migration_lock`` around its run."""
    runs = [PodRun(f"pod-{i + 1}") for i in range(pods)]
    barrier = threading.Barrier(pods)

    def start(run: PodRun) -> None:
        with sb.connect(run.pod) as conn:
            migrator = Migrator(conn, migrations, table=table)
            barrier.wait(timeout=30)
            run.started = time.monotonic()
            try:
                if lock:
                    with migration_lock(conn, table):
                        run.locked = time.monotonic()
                        run.applied = migrator.up()
                        run.done = time.monotonic()
                else:
                    run.applied = migrator.up()
            except MigrationError as exc:
                run.error = first_line(exc.__cause__) if exc.__cause__ else str(exc)
            run.finished = time.monotonic()
            run.done = run.done or run.finished

    threads = [threading.Thread(target=start, args=(r,), name=f"zdlab-{r.pod}") for r in runs]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    return runs


def applied_rows(sb: Sandbox, table: str = RACE_TABLE) -> list[tuple[int, str]]:
    """The version table's rows (version, name): what the database says was applied."""
    with sb.connect("check") as conn:
        return conn.execute(pgsql.SQL("SELECT version, name FROM {} ORDER BY version").format(
            pgsql.Identifier(table))).fetchall()


def serialised(runs: Sequence[PodRun]) -> bool:
    """Each pod got the lock only once the pod before it had finished its run (``lock=True``)."""
    ordered = sorted(runs, key=lambda r: r.locked or 0.0)
    return all(b.locked is not None and a.locked is not None and b.locked >= a.done
               for a, b in zip(ordered, ordered[1:], strict=False))


def credits_histogram(sb: Sandbox) -> dict[int, int]:
    """credits -> users: 100 each when the welcome credits were granted once."""
    with sb.connect("check") as conn:
        return dict(conn.execute("SELECT credits, count(*) FROM users GROUP BY 1 ORDER BY 1").fetchall())


# -- placements in a rollout ------------------------------------------------------------------

@dataclass
class Placed:
    """Migrations run at one point of a rollout, and which versions served while they ran."""

    label: str
    span: Span
    serving: list[str]
    applied: list[int]


def run_placed(t: Traffic, conn: psycopg.Connection, migrations: Sequence[Migration], label: str, *,
               target: int | None = None) -> Placed:
    """Run the pending ``migrations`` (up to ``target``) on ``conn`` as one span of ``t``."""
    serving = t.versions()
    with t.statement(label, conn=conn) as span:
        applied = Migrator(conn, migrations).up(target)
    return Placed(label, span, serving, applied)


def roll_out(t: Traffic, app: AppVersion, timeout: float = 10.0) -> bool:
    """Replace every pod with ``app`` and wait (bounded) until no old pod serves."""
    t.deploy(app)
    deadline = time.monotonic() + timeout
    while not t.deployed() and time.monotonic() < deadline:
        time.sleep(0.01)
    return t.deployed()


def tally(t: Traffic, start: float, end: float = float("inf")) -> dict[str, tuple[int, int]]:
    """Per version: (requests, failed) among those that returned in [start, end) (timeline s)."""
    out: dict[str, tuple[int, int]] = {}
    for r in list(t.requests):
        if start <= r.end < end:
            n, failed = out.get(r.app, (0, 0))
            out[r.app] = (n + 1, failed + bool(r.error))
    return out


def errors_after(t: Traffic, start: float) -> dict[str, int]:
    """Error -> count among requests that returned at or after ``start``."""
    out: dict[str, int] = {}
    for r in list(t.requests):
        if r.error and r.end >= start:
            out[f"{r.app}: {r.error}"] = out.get(f"{r.app}: {r.error}", 0) + 1
    return out


# -- a start-up migration stuck in the lock queue ---------------------------------------------

@dataclass
class Startup:
    """What a rollout sees of one new pod: attempts, when it became ready, against its deadline."""

    deadline_s: float
    attempts: list[str] = field(default_factory=list)  # "ok" or the error of each attempt
    ready_after_s: float | None = None  # None: never ready (gave up)
    waited_on: str | None = None
    blocked_by: list[str] = field(default_factory=list)

    @property
    def ready_in_time(self) -> bool:
        return self.ready_after_s is not None and self.ready_after_s <= self.deadline_s

    def line(self) -> str:
        ready = ("never ready: gave up at the deadline, the old pods keep serving" if self.ready_after_s is None
                 else f"ready after {self.ready_after_s:,.2f} s")
        verdict = "rollout progressing" if self.ready_in_time else "ProgressDeadlineExceeded"
        tries = f"{len(self.attempts)} attempt(s): {', '.join(dict.fromkeys(self.attempts))}"
        return f"{ready} (deadline {self.deadline_s:.2f} s) -> {verdict}; {tries}"


class PodStartup:
    """A new pod: it runs the pending migrations at start and is ready once they are done.

    Called with a connection (a ``measure_in`` step). ``long_tx_s``: a report's transaction is
    open on ``users`` when the pod starts and ends that long after the pod's migration first
    waits (``LongTransaction``). ``lock_timeout``: the runner's own (``"0"``: wait forever, what
    a runner that sets none does). ``retry``: after a lock timeout, try again with backoff until
    the deadline, then give up (the rollout fails; the old pods keep serving)."""

    def __init__(self, sb: Sandbox, migrations: Sequence[Migration], *, deadline_s: float,
                 lock_timeout: str = "0", retry: bool = False, long_tx_s: float | None = None,
                 backoff_s: float = 0.05) -> None:
        self.sb, self.migrations = sb, list(migrations)
        self.deadline_s, self.lock_timeout, self.retry = deadline_s, lock_timeout, retry
        self.long_tx_s, self.backoff_s = long_tx_s, backoff_s
        self.__name__ = "pod start-up migration" + (f" (lock_timeout {lock_timeout}, retries)" if retry else "")
        self.result = Startup(deadline_s)

    def __call__(self, conn: psycopg.Connection) -> Startup:
        self.result = Startup(self.deadline_s)
        report = (LongTransaction(self.sb, "users", seconds=self.long_tx_s, watch_pid=conn.info.backend_pid,
                                  role="report") if self.long_tx_s is not None else contextlib.nullcontext())
        with report as lt:
            self._start(conn)
        if isinstance(lt, LongTransaction):
            self.result.waited_on, self.result.blocked_by = lt.waited_on, list(lt.blocked_by)
        return self.result

    def _start(self, conn: psycopg.Connection) -> None:
        began, pause = time.monotonic(), self.backoff_s
        while True:
            try:
                Migrator(conn, self.migrations, lock_timeout=self.lock_timeout).up()
            except MigrationError as exc:
                self.result.attempts.append(type(exc.__cause__).__name__ if exc.__cause__ else "error")
                late = time.monotonic() - began + pause > self.deadline_s
                if not (self.retry and isinstance(exc.__cause__, psycopg.errors.LockNotAvailable)) or late:
                    return  # the pod crashes or gives up: never ready
                time.sleep(pause)
                pause *= 2
                continue
            self.result.attempts.append("ok")
            self.result.ready_after_s = time.monotonic() - began
            return
