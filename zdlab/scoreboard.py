"""Score a migration step by step while application traffic (one or more app versions) runs.

    with Scoreboard(sb, apps=[v1, v2]) as board:          # traffic starts, data checksummed
        board.step("add column", "ALTER TABLE orders ADD COLUMN amount_big bigint")
        board.step("backfill", in_batches("UPDATE orders SET ... WHERE id BETWEEN %(lo)s AND %(hi)s"))
        board.step("roll out v2", deploy(v2))
    print(board)        # per step and cumulative: failed requests, longest stall, data check
    board.plot()        # the whole run as a timeline

Each step is scored over its window: from its start until the next step starts (the last
one: until traffic stops), so failures a step causes after it commits (old code meeting the
new schema) are counted against it. After each step the board lets every worker serve a few
requests before it prints the step's line. Stalls come from the lock sampler (app backends
with wait_event_type = 'Lock'), never from client latency. The data check compares row
count and checksum of the rows that existed before the first step, and, at the end, the
rows the traffic inserted with the inserts it reported as successful.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import psycopg
from psycopg import sql as pgsql
from psycopg.pq import TransactionStatus

from . import grader, statements
from .errors import BadInput
from .judge import blocks, held_floor_ms, noise_ms
from .measure import WARMUP_PER_KIND, run_step  # old code must hold prepared plans, as a real pool does
from .report import held_by, stall_intervals, working_in
from .retry import BACKOFF_S as RETRY_BACKOFF_S
from .retry import on_lock_timeout
from .sandbox import Sandbox
from .traffic import AppVersion, Traffic, describe_error, traffic

if TYPE_CHECKING:
    from matplotlib.figure import Figure

    from .report import Report

SETTLE_S = 1.0  # baseline before the first step and tail after the last: shows the contrast

AFTER_STEP_REQUESTS = 3  # per worker and request kind, served after a step before its line is printed
WAIT_S = 5.0  # bound on every wait for the application
DEFAULT_CHECKSUM = "hashtext(id::text || ':' || amount_cents::text)"


class StepError(BadInput):
    """A step could not run as written (not a database error: those are scored).

    A ``BadInput``: raised while a notebook builds its plan (``in_batches(42)``), it shows as one
    paragraph, without a traceback; inside ``step()`` it is scored as the step's error."""


# -- actions ----------------------------------------------------------------------------------


@dataclass
class Action:
    """Something a step does besides plain SQL; ``run`` returns a note for the score line."""

    shown: str  # what the step shows as its SQL

    def run(self, board: Scoreboard, conn: psycopg.Connection) -> str | None:
        raise NotImplementedError


@dataclass
class Batched(Action):
    sql: str = ""
    batch_size: int = 10_000
    table: str = "orders"
    key: str = "id"
    pause_s: float = 0.0

    def run(self, board: Scoreboard, conn: psycopg.Connection) -> str | None:
        # The key range is read once: rows inserted later are the dual-write's job, not the backfill's.
        lo, hi = conn.execute(pgsql.SQL("SELECT min({key}), max({key}) FROM {table}").format(
            key=pgsql.Identifier(self.key), table=pgsql.Identifier(self.table))).fetchone()
        if lo is None:
            return "empty table: nothing to backfill"
        batches = updated = 0
        for start in range(lo, hi + 1, self.batch_size):
            params = {"lo": start, "hi": min(start + self.batch_size - 1, hi)}
            cur = _with_retries(board, lambda p=params: conn.execute(self.sql, p, prepare=False))
            batches += 1
            updated += max(cur.rowcount, 0)
            if self.pause_s:
                time.sleep(self.pause_s)
        return f"{batches} batches of {self.batch_size:,}, {updated:,} rows updated"


def in_batches(sql: str, batch_size: int = 10_000, *, table: str = "orders", key: str = "id",
               pause_s: float = 0.0) -> Batched:
    """A backfill in short transactions: ``sql`` runs once per key range, each in its own transaction.

    ``sql`` names the range as ``%(lo)s`` and ``%(hi)s`` (inclusive), e.g.
    ``UPDATE orders SET b = a WHERE id BETWEEN %(lo)s AND %(hi)s``.
    """
    if not isinstance(sql, str):
        raise StepError(f"in_batches(sql): sql should be the UPDATE as text, with %(lo)s and %(hi)s for the key "
                        f"range of one batch, not {type(sql).__name__}.")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int):
        raise StepError(f"in_batches(): batch_size should be a whole number of rows, not {batch_size!r}.")
    if not isinstance(table, str) or not isinstance(key, str):
        raise StepError("in_batches(): table and key should be names, as strings (table=\"orders\", key=\"id\").")
    if "%(lo)s" not in sql or "%(hi)s" not in sql:
        raise StepError("in_batches(sql): the SQL must use %(lo)s and %(hi)s for the key range of one batch, "
                        "e.g. WHERE id BETWEEN %(lo)s AND %(hi)s")
    if batch_size < 1:
        raise StepError("in_batches(): batch_size must be at least 1")
    return Batched(f"{' '.join(sql.split())}  -- in batches of {batch_size:,} {key}s", sql, batch_size,
                   table, key, pause_s)


@dataclass
class Deploy(Action):
    app: AppVersion | None = None
    pods: int | None = None

    def run(self, board: Scoreboard, conn: psycopg.Connection) -> str | None:
        t = board.traffic
        t.deploy(self.app, self.pods)
        if not t.wait_deployed(WAIT_S):
            raise StepError(f"deploy({self.app.name}): some workers did not switch within {WAIT_S:.0f} s")
        return "pods: " + ", ".join(t.versions())


def deploy(app: AppVersion, pods: int | None = None) -> Deploy:
    """A step that rolls ``app`` out to the first ``pods`` workers (all by default), fresh connections."""
    if not isinstance(app, AppVersion):
        raise StepError(f"deploy() takes an AppVersion, not {type(app).__name__}")
    where = "all pods" if pods is None else f"{pods} pod(s)"
    return Deploy(f"-- deploy {app.name} to {where}", app, pods)


StepAction = str | Action | Callable[[psycopg.Connection], Any]


# -- scores -----------------------------------------------------------------------------------


@dataclass
class StepScore:
    number: int
    label: str
    shown: str
    start: float
    end: float = 0.0
    window_end: float | None = None  # the next step's start, or the end of traffic
    error: str | None = None
    retries: int = 0
    note: str | None = None
    failures: Counter = field(default_factory=Counter)  # (app, error) -> count
    requests: int = 0
    longest_stall_ms: float = 0.0  # app requests waiting on the migration, within this step's window
    noise_ms: float = 0.0  # the run's own noise so far (zdlab.judge): what a wait is compared with
    held_floor_ms: float = 0.0  # the run's slowest request so far: what a held lock's wait must exceed
    held: dict[str, Any] | None = None  # the step's held locks and their waiters (zdlab.report.held_by)
    rewritten: bool = False
    data: str = ""  # "ok" or what differs

    @property
    def duration_ms(self) -> float:
        return (self.end - self.start) * 1000

    @property
    def failed(self) -> int:
        return sum(self.failures.values())

    @property
    def verdict(self) -> str:
        if self.error:
            return "ERROR"
        bad = []
        if blocks(self.longest_stall_ms, [self.held] if self.held else [], self.noise_ms, self.held_floor_ms):
            bad.append("BLOCKING")
        if self.failed:
            apps = sorted({app for app, _ in self.failures})
            bad.append("BROKE " + "+".join(apps))
        if self.data != "ok":
            bad.append("DATA")
        return ", ".join(bad) or "ok"

    def line(self) -> str:
        retry = f" ({self.retries} retries)" if self.retries else ""
        table = "REWRITTEN" if self.rewritten else "kept"
        return (f"[{self.number}] {self.label[:28]:<28} {self.duration_ms:>7,.0f} ms{retry}  "
                f"failed {self.failed:>4}  stall {self.longest_stall_ms:>6,.0f} ms  table {table:<9}  "
                f"data {self.data}  -> {self.verdict}")


@dataclass
class DataCheck:
    rows: int
    checksum: int
    max_key: int


class Scoreboard:
    """Application traffic plus per-step scores; use as a context manager (see module docstring)."""

    def __init__(self, sb: Sandbox, apps: list[AppVersion], *, workers: int = 4,
                 table: str = "orders", key: str = "id",
                 checksum: str = DEFAULT_CHECKSUM, insert_kinds: tuple[str, ...] = ("place_order",),
                 settle_s: float = SETTLE_S, echo: bool = True) -> None:
        self.sb = sb
        self.apps = apps
        self.workers = workers
        self.table = table
        self.key = key
        self.checksum = checksum
        self.insert_kinds = insert_kinds
        self.settle_s = settle_s
        self.echo = echo
        self.traffic: Traffic = traffic(sb, workers, apps=apps)
        self.steps: list[StepScore] = []
        self.before: DataCheck | None = None
        self.after: DataCheck | None = None
        self.after_error: str | None = None
        self.inserted_rows: int | None = None
        self.inserts_ok: int | None = None
        self._conn: psycopg.Connection | None = None
        self._oid: int | None = None
        self._filenode: int | None = None
        self._report: Report | None = None
        self._stalls: list[tuple[float, float]] | None = None
        self._retrying = True  # this step retries on its lock_timeout
        self._retry_count = 0

    # -- lifecycle -------------------------------------------------------------------------

    def __enter__(self) -> Scoreboard:
        # The plan's statements run as a role that owns only this sandbox (zdlab.grader).
        self._conn = grader.connect(self.sb, "migration", prepare_threshold=None)
        try:
            self._oid = self._conn.execute("SELECT quote_ident(%s)::regclass::oid", [self.table]).fetchone()[0]
            self._filenode = self._node()
            self.before = self._data()
            self.traffic.start()
            time.sleep(self.settle_s)  # baseline traffic, so the plot shows normal latency first
            kinds = max(len(a.requests) for a in self.apps)
            if not self.traffic.wait_for_requests(self.workers * kinds * WARMUP_PER_KIND, timeout=WAIT_S * 2):
                raise StepError("the application did not warm up: too few requests served")
        except BaseException:
            self.traffic.stop()
            self._conn.close()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        try:
            if self._conn is not None and self._conn.info.transaction_status != TransactionStatus.IDLE:
                self._conn.rollback()  # never leave a step's transaction (and its locks) open
            if self.traffic.running and exc[0] is None:
                time.sleep(self.settle_s)  # the tail: does traffic recover?
        finally:
            self.traffic.stop()
            try:
                if self.steps:
                    self.steps[-1].window_end = self.traffic.ended
                    self._score(self.steps[-1])
                self._final_data()
            finally:
                if self._conn is not None:
                    self._conn.close()
        if self.echo and exc[0] is None:
            print(self.summary())

    # -- steps -----------------------------------------------------------------------------

    def step(self, label: str, action: StepAction, *, retries: bool = True) -> StepScore:
        """Run one step under the running traffic, print and return its score.

        ``action``: SQL (one or more statements, run one by one; BEGIN/COMMIT allowed),
        ``in_batches(...)``, ``deploy(app)``, or any function of the migration connection.
        A step that fails on its own ``lock_timeout`` is retried with backoff (``retries``).
        A step that fails otherwise is recorded as an error (it does not raise).
        """
        if not self.traffic.running or self._conn is None:
            raise StepError("the scoreboard is not running: use it as `with Scoreboard(...) as board:`")
        t = self.traffic
        if self.steps:  # the previous step's window ends here
            self.steps[-1].window_end = t.now()
            self._score(self.steps[-1])
        shown = action if isinstance(action, str) else getattr(action, "shown", getattr(action, "__name__", "?"))
        score = StepScore(len(self.steps) + 1, label, shown, t.now())
        self.steps.append(score)
        self._retrying = retries
        self._retry_count = 0
        span = run_step(t, self._conn, label, self._rolled_back_on_error(action), shown)
        score.note, score.error = span.note, span.error
        score.end = t.now()
        score.retries = self._retry_count
        self._after_step()
        self._score(score)
        if self.echo:
            print(score.line() + (f"\n      {score.note}" if score.note else "")
                  + (f"\n      ERROR {score.error}" if score.error else ""))
        return score

    def _rolled_back_on_error(self, action: StepAction) -> Callable[[psycopg.Connection], str | None]:
        """The step as a function of the connection (``zdlab.measure.run_step`` runs it); a failed
        block never keeps its locks."""
        def run(conn: psycopg.Connection) -> str | None:
            try:
                return self._run(action)
            finally:
                if conn.info.transaction_status != TransactionStatus.IDLE:
                    conn.rollback()
        return run

    def _run(self, action: StepAction) -> str | None:
        conn = self._conn
        if isinstance(action, Action):
            return action.run(self, conn)
        if isinstance(action, str):
            stmts = statements.split(action)
            if not stmts:
                raise StepError("the step holds no SQL statement")
            _with_retries(self, lambda: self._run_sql(stmts))
            return None
        if callable(action):
            out = action(conn)
            return None if out is None else str(out)
        raise StepError(f"a step is SQL text, in_batches(...), deploy(...) or a function, "
                        f"not {type(action).__name__}")

    def _run_sql(self, stmts: list[str]) -> None:
        conn = self._conn
        try:
            for stmt in stmts:
                # Autocommit sends BEGIN/COMMIT verbatim: Postgres opens and closes the block itself.
                conn.execute(stmt, prepare=False)
            if conn.info.transaction_status != TransactionStatus.IDLE:
                raise StepError("the step left its transaction open (BEGIN without COMMIT)")
        except psycopg.Error:
            if conn.info.transaction_status != TransactionStatus.IDLE:
                conn.rollback()
            raise

    def _after_step(self) -> None:
        """Let every worker serve a few requests on the new state, so their failures are counted here."""
        t = self.traffic
        kinds = max(len(a.requests) for a in self.apps)
        t.wait_for_requests(len(t.requests) + t.workers * kinds * AFTER_STEP_REQUESTS, timeout=WAIT_S)

    def _score(self, score: StepScore) -> None:
        t = self.traffic
        end = score.window_end if score.window_end is not None else t.now()
        window = [r for r in list(t.requests) if score.start <= r.start < end]
        score.requests = len(window)
        score.failures = Counter((r.app, r.error) for r in window if r.error)
        final = score.window_end is not None and not t.running
        stalls = self._stall_list(final)
        score.longest_stall_ms = max(((min(e, end) - max(s, score.start)) * 1000
                                      for s, e in stalls if e > score.start and s < end), default=0.0)
        so_far = t.report()  # the run so far: requests up to this step included
        score.noise_ms, score.held_floor_ms = noise_ms(so_far), held_floor_ms(so_far)
        span = next((s for s in t.spans if s.label == score.label and abs(s.start - score.start) < 0.05), None)
        score.held = held_by(span, list(t.samples)) if span is not None else None
        if self._conn is not None and not self._conn.closed:
            node = self._node()
            score.rewritten = score.rewritten or node != self._filenode
            self._filenode = node
            score.data = self._compare()

    def _stall_list(self, final: bool) -> list[tuple[float, float]]:
        if final and self._stalls is not None:
            return self._stalls
        working = working_in(list(self.traffic.spans))
        stalls, _ = stall_intervals(list(self.traffic.samples), self.traffic.ended, lambda s: s.queued(working))
        if final:
            self._stalls = stalls
        return stalls

    # -- data ------------------------------------------------------------------------------

    def _node(self) -> int | None:
        row = self._conn.execute("SELECT pg_relation_filenode(%s::oid)", [self._oid]).fetchone()
        return None if row is None else row[0]

    def _data(self, upto: int | None = None) -> DataCheck:
        # table and key are names (quoted); checksum is a SQL expression the caller wrote, as SQL.
        key = pgsql.Identifier(self.key)
        where = pgsql.SQL("") if upto is None else pgsql.SQL(" WHERE {} <= {}").format(key, int(upto))
        query = pgsql.SQL("SELECT count(*), coalesce(sum({checksum}), 0), coalesce(max({key}), 0) "
                          "FROM {table}{where}").format(checksum=pgsql.SQL(self.checksum), key=key,
                                                        table=pgsql.Identifier(self.table), where=where)
        rows, checksum, max_key = self._conn.execute(query, prepare=False).fetchone()
        return DataCheck(rows, int(checksum), max_key)

    def _compare(self) -> str:
        """'ok' when the rows that existed before the first step are unchanged, else what differs."""
        try:
            now = self._data(self.before.max_key)
        except psycopg.Error as exc:
            if self._conn.info.transaction_status != TransactionStatus.IDLE:
                self._conn.rollback()
            return f"cannot check ({describe_error(exc)})"
        if now.rows != self.before.rows:
            return f"{now.rows - self.before.rows:+,} rows"
        if now.checksum != self.before.checksum:
            return "checksum differs"
        return "ok"

    def _final_data(self) -> None:
        if self._conn is None or self._conn.closed or self.before is None:
            return
        try:
            self.after = self._data(self.before.max_key)
            self.inserted_rows = self._conn.execute(pgsql.SQL("SELECT count(*) FROM {} WHERE {} > %s").format(
                pgsql.Identifier(self.table), pgsql.Identifier(self.key)), [self.before.max_key]).fetchone()[0]
        except psycopg.Error as exc:
            self.after_error = describe_error(exc)
        self.inserts_ok = sum(1 for r in self.traffic.requests if r.kind in self.insert_kinds and not r.error)

    # -- results ---------------------------------------------------------------------------

    @property
    def failures(self) -> Counter:
        """(app version, error) -> failed requests, over the whole run."""
        return Counter((r.app, r.error) for r in self.traffic.requests if r.error)

    @property
    def failed_requests(self) -> int:
        return sum(self.failures.values())

    @property
    def longest_stall_ms(self) -> float:
        return max((s.longest_stall_ms for s in self.steps), default=0.0)

    @property
    def noise_ms(self) -> float:
        """The run's own noise (zdlab.judge): the last step's figure, taken over the whole run."""
        return self.steps[-1].noise_ms if self.steps else 0.0

    @property
    def data_identical(self) -> bool:
        """Rows that existed before: same count and checksum; rows inserted: as many as the app saw succeed."""
        return (self.after is not None and self.before is not None and self.after.rows == self.before.rows
                and self.after.checksum == self.before.checksum and self.inserted_rows == self.inserts_ok)

    def data_line(self) -> str:
        b = self.before
        if b is None:
            return "data: not checked"
        if self.after is None:
            return f"data: {b.rows:,} rows before; after: cannot check ({self.after_error})"
        same = "IDENTICAL" if (self.after.rows, self.after.checksum) == (b.rows, b.checksum) else "DIFFERENT"
        ins = "all there" if self.inserted_rows == self.inserts_ok else "MISMATCH"
        return (f"data: rows that existed before: {b.rows:,} -> {self.after.rows:,}, checksum "
                f"{b.checksum} -> {self.after.checksum}: {same}; rows the app inserted: "
                f"{self.inserted_rows:,} in the table, {self.inserts_ok:,} inserts succeeded: {ins}")

    def report(self) -> Report:
        """The traffic report of the whole run (zdlab.report.Report)."""
        if self._report is None or self.traffic.running:
            self._report = self.traffic.report()  # the same rule as measure(): zdlab.judge
        return self._report

    def plot(self) -> Figure:
        return self.report().plot()

    def summary(self) -> str:
        lines = ["scoreboard (each step counted from its start until the next step starts):"]
        lines += [s.line() for s in self.steps]
        errors = [f"      step {s.number} ERROR {s.error}" for s in self.steps if s.error]
        t = self.traffic
        by_app = Counter(r.app for r in t.requests)
        lines += errors
        lines.append(f"total: {len(t.requests):,} requests ("
                     + ", ".join(f"{a} {n:,}" for a, n in sorted(by_app.items()))
                     + f"), failed {self.failed_requests}, longest stall {self.longest_stall_ms:,.0f} ms "
                       f"(this run's noise {self.noise_ms:,.0f} ms)")
        for (app, err), n in self.failures.most_common():
            lines.append(f"  failed: {n} x {app}: {err}")
        lines.append(self.data_line())
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.summary()


def _with_retries(board: Scoreboard, fn: Callable[[], Any]) -> Any:
    """Run ``fn``; on LockNotAvailable (the step's own lock_timeout) back off and try again."""
    def count() -> None:
        board._retry_count += 1

    return on_lock_timeout(fn, RETRY_BACKOFF_S if board._retrying else (), count)
