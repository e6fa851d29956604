"""Simulated application traffic on the demo schema, plus a lock-wait sampler.

    with traffic(sb, workers=4) as t:
        t.run(conn, "CREATE INDEX ON orders (created_at)")
    t.report()   # what the migration did to the application
    t.plot()     # the same, as a timeline

Each worker is an application server with one pooled connection: autocommit, psycopg
defaults (statements are prepared on the server after 5 runs), short requests, no lock
held between requests. A sampler polls pg_stat_activity every ~10 ms to see which app
backends wait on a lock and who blocks them: client latency is noisy on a shared
machine, lock waits reported by Postgres are not.
"""

from __future__ import annotations

import contextlib
import random
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING

import psycopg

from . import config
from .errors import ZdlabError
from .records import Block, Request, Sample, Span
from .sandbox import Sandbox
from .seed import DEMO_TABLES
from .statements import short_sql

if TYPE_CHECKING:
    from matplotlib.figure import Figure

    from .report import Report

KINDS = ("read_user", "update_user", "insert_order", "read_orders")
THINK_S = 0.001  # per request: keeps 4 workers from spinning both cores away from the migration
JOIN_TIMEOUT_S = 2.0  # then stuck workers get their query cancelled

_SQL = {
    "read_user": "SELECT id, email, name, created_at FROM users WHERE id = %s",
    "read_user*": "SELECT * FROM users WHERE id = %s",
    "update_user": "UPDATE users SET name = %s WHERE id = %s",
    "insert_order": "INSERT INTO orders (id, user_id, amount_cents) VALUES (%s, %s, %s)",
    "read_orders": ("SELECT id, user_id, amount_cents, status, created_at FROM orders "
                    "WHERE user_id = %s ORDER BY created_at DESC LIMIT 5"),
    "read_orders*": "SELECT * FROM orders WHERE user_id = %s ORDER BY created_at DESC LIMIT 5",
}

# Who is in the sandbox and waiting; pg_blocking_pids() only for lock waiters (it is not free).
_SAMPLE_SQL = """
SELECT pid, application_name, wait_event_type, wait_event,
       CASE WHEN wait_event_type = 'Lock' THEN pg_blocking_pids(pid) END, state, query, now(),
       extract(epoch FROM xact_start)
FROM pg_stat_activity
WHERE left(application_name, length(%(prefix)s)) = %(prefix)s AND pid <> pg_backend_pid()
  AND datname = current_database()  -- learners on one server use the same sandbox names
"""

# Run only when the set of waiters changes: names the blocker and the lock modes involved.
_CHAIN_SQL = """
SELECT w.pid, w.mode, coalesce(w.relation::regclass::text, w.locktype),
       b.pid, b.application_name, b.state, b.query,
       (SELECT string_agg(DISTINCT l.mode, '+') FROM pg_locks l
         WHERE l.pid = b.pid AND l.locktype = w.locktype
           AND l.relation IS NOT DISTINCT FROM w.relation
           AND l.transactionid IS NOT DISTINCT FROM w.transactionid)
FROM pg_locks w
CROSS JOIN LATERAL unnest(pg_blocking_pids(w.pid)) AS bp(pid)
JOIN pg_stat_activity b ON b.pid = bp.pid
WHERE w.pid = ANY(%s) AND NOT w.granted
"""


# Tables of the sandbox a migration session holds a lock on (granted), sampled while it runs.
_MIGRATION_LOCKS_SQL = """
SELECT DISTINCT c.relname FROM pg_locks l JOIN pg_class c ON c.oid = l.relation
WHERE l.pid = ANY(%s) AND l.granted AND c.relkind IN ('r', 'p')
  AND c.relnamespace = to_regnamespace(quote_ident(%s))
"""


@dataclass
class RequestContext:
    """What a custom request function gets besides its connection."""

    rng: random.Random
    user_id: int  # a random existing user
    worker: int
    _next_order: Callable[[], int]

    def next_order_id(self) -> int:
        """An order id no other worker will use (disjoint ranges, no shared counter)."""
        return self._next_order()


RequestFn = Callable[[psycopg.Connection, RequestContext], object]


@dataclass
class AppVersion:
    """One version of the application: its request kinds, each a function of (conn, ctx).

    Workers cycle through the kinds in order. Used to run old and new code side by side,
    like the pods of two versions during a rolling deploy (``Traffic.deploy``).
    """

    name: str
    requests: dict[str, RequestFn]


def describe_error(exc: BaseException) -> str:
    """``Class (SQLSTATE): first line``: one key per kind of failure, for counting."""
    lines = str(exc).strip().splitlines()
    first = lines[0] if lines else ""
    state = getattr(exc, "sqlstate", None)
    return f"{type(exc).__name__} ({state}): {first}" if state else f"{type(exc).__name__}: {first}"


class Traffic:
    """Background application workload on a sandbox; use ``traffic()`` to make one."""

    def __init__(self, sb: Sandbox, workers: int = 4, *, select_star: bool = False,
                 sample: bool = True, sample_interval: float = 0.01,
                 apps: list[AppVersion] | None = None) -> None:
        if workers < 1:
            raise ValueError("workers must be at least 1")
        if apps is not None and (not apps or any(not a.requests for a in apps)):
            raise ValueError("apps must be a non-empty list of versions, each with request kinds")
        self.sb = sb
        # None: the built-in workload. Otherwise worker i runs apps[i % len(apps)] until deploy().
        self._assigned: list[AppVersion | None] = [
            None if apps is None else apps[i % len(apps)] for i in range(workers)]
        self._redeploy = [False] * workers
        self.workers = workers
        self.select_star = select_star
        self.sample = sample
        self.sample_interval = sample_interval
        self.requests: list[Request] = []
        self.spans: list[Span] = []
        self.samples: list[Sample] = []
        self.chain: Counter[Block] = Counter()  # edge -> samples in which it was seen
        self.server_version: str | None = None
        self.t0 = 0.0
        self.ended: float | None = None
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._conns: list[psycopg.Connection | None] = []
        self._kind_by_pid: dict[int, str] = {}  # what each app backend is doing, for the chain
        self._filenodes_before: dict[str, tuple[int, int | None]] = {}  # table -> (oid, filenode)
        self._tables_after: dict[str, str] | None = None
        self._edges: dict[tuple[int, int], Block] = {}  # (waiter pid, blocker pid) -> resolved edge
        self._max_user = 1
        self._max_order = 0
        # What the judge needs to say what was measured: the tables the workload touches (None:
        # custom app versions, whose SQL we do not read) and the ones the migration locked.
        self.touched_tables: tuple[str, ...] | None = DEMO_TABLES if apps is None else None
        self.locked_tables: set[str] = set()

    # -- lifecycle ---------------------------------------------------------------------------

    def __enter__(self) -> Traffic:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self) -> Traffic:
        with self.sb.connect("traffic") as conn:
            self.server_version = conn.execute("SHOW server_version").fetchone()[0]
            try:
                self._max_user = conn.execute("SELECT coalesce(max(id), 1) FROM users").fetchone()[0]
                self._max_order = conn.execute("SELECT coalesce(max(id), 0) FROM orders").fetchone()[0]
            except psycopg.errors.UndefinedTable:
                raise ZdlabError(f"Sandbox {self.sb.schema} has no demo tables (users, orders): run "
                                 f"zdlab.seed(sb) before starting traffic.") from None
            self._filenodes_before = self._filenodes(conn)
        self._stop.clear()
        self.t0 = time.monotonic()
        self._conns = [None] * self.workers
        self._threads = [threading.Thread(target=self._worker, args=(i,), daemon=True,
                                          name=f"zdlab-app-{i}") for i in range(self.workers)]
        if self.sample:
            self._threads.append(threading.Thread(target=self._sampler, daemon=True, name="zdlab-sampler"))
        for th in self._threads:
            th.start()
        return self

    def stop(self) -> None:
        """Stop workers and sampler; bounded even when a worker is stuck behind a lock."""
        if self.ended is not None or not self._threads:
            return
        self._stop.set()
        deadline = time.monotonic() + JOIN_TIMEOUT_S
        for th in self._threads:
            th.join(max(0.0, deadline - time.monotonic()))
        for conn in self._conns:  # still waiting on a lock someone else holds: cancel the wait
            if conn is not None and not conn.closed:
                with contextlib.suppress(Exception):
                    conn.cancel_safe(timeout=2)
        for th in self._threads:
            th.join(JOIN_TIMEOUT_S)
        self.ended = time.monotonic() - self.t0
        with contextlib.suppress(psycopg.Error, ZdlabError), self.sb.connect("traffic") as conn:
            self._tables_after = self._table_states(conn)

    @property
    def running(self) -> bool:
        return bool(self._threads) and self.ended is None

    def deploy(self, app: AppVersion, pods: int | None = None, *, wait_s: float = 0.0) -> None:
        """Roll ``app`` out to the first ``pods`` workers (all by default).

        A redeployed worker is a new process: it opens a new connection (so it has no
        prepared statements yet) before its next request. ``wait_s``: wait up to this long
        until every redeployed worker has switched (``ZdlabError`` if one has not).
        """
        count = self.workers if pods is None else max(0, min(pods, self.workers))
        for i in range(count):
            self._assigned[i] = app
            self._redeploy[i] = True
        if wait_s and not self.wait_deployed(wait_s):
            raise ZdlabError(f"The pods did not switch to {app.name} within {wait_s:.0f} s. Run the cell again; "
                             f"if it fails again, the machine is overloaded (`zdlab doctor`).")

    def deployed(self) -> bool:
        """True once every redeployed worker has dropped its old connection (no old code runs)."""
        return not any(self._redeploy)

    def wait_deployed(self, timeout: float = 10.0) -> bool:
        """Wait (bounded) until every redeployed worker has dropped its old connection; False on timeout."""
        deadline = time.monotonic() + timeout
        while not self.deployed() and time.monotonic() < deadline:
            time.sleep(0.005)
        return self.deployed()

    def let_run(self, requests: int = 400, timeout: float = 10.0) -> None:
        """Let the application serve this many more requests (a baseline, or time to recover).

        Raises ``ZdlabError`` when it does not within ``timeout``: the app has stopped."""
        if not self.wait_for_requests(len(self.requests) + requests, timeout=timeout):
            raise ZdlabError(f"The simulated application served fewer than {requests} requests in {timeout:.0f} s: "
                             f"its traffic is not running. Run the cell again; `zdlab doctor` checks the database.")

    def warm_up(self, per_worker: int, timeout: float = 20.0) -> None:
        """Wait until every worker has served ``per_worker`` requests (psycopg prepares a statement
        after 5 runs); ``ZdlabError`` when one has not within ``timeout``."""
        if not self.wait_for_each_worker(per_worker, timeout=timeout):
            raise ZdlabError(f"Not every simulated pod served {per_worker} requests in {timeout:.0f} s: the app is "
                             f"not running. Run the cell again; `zdlab doctor` checks the database.")

    def versions(self) -> list[str]:
        """Which version each worker runs now."""
        return ["app" if a is None else a.name for a in self._assigned]

    def wait_for_requests(self, n: int, timeout: float = 10.0) -> bool:
        """Wait (bounded) until ``n`` requests have completed; False on timeout."""
        deadline = time.monotonic() + timeout
        while len(self.requests) < n:
            if time.monotonic() > deadline or not self.running:
                return False
            time.sleep(0.01)
        return True

    def served(self, app: str | None = None) -> int:
        """Requests completed so far, all of them or those of application version ``app``."""
        return sum(1 for r in list(self.requests) if app in (None, r.app))

    def wait_for_each_worker(self, n: int, timeout: float = 10.0) -> bool:
        """Wait (bounded) until every worker has served ``n`` requests (each has prepared its
        statements, after psycopg's 5 runs); False on timeout."""
        deadline = time.monotonic() + timeout
        while True:
            served = Counter(r.worker for r in list(self.requests))
            if all(served[i] >= n for i in range(self.workers)):
                return True
            if time.monotonic() > deadline or not self.running:
                return False
            time.sleep(0.01)

    def now(self) -> float:
        """Seconds since traffic started, on the timeline every record uses."""
        return time.monotonic() - self.t0

    # -- the migration side ------------------------------------------------------------------

    def run(self, conn: psycopg.Connection, sql: str, *, label: str | None = None,
            raise_errors: bool = False) -> Span:
        """Execute one migration statement on ``conn``, timed on the traffic timeline.

        A database error is recorded on the span and, unless ``raise_errors``, not raised.
        """
        span = Span(label or short_sql(sql), sql, self.now(), pid=conn.info.backend_pid)
        self.spans.append(span)
        try:
            cur = conn.execute(sql, prepare=False)
            span.rows = cur.rowcount if cur.rowcount >= 0 and cur.statusmessage and \
                cur.statusmessage.split()[0] in ("UPDATE", "DELETE", "INSERT", "MERGE") else None
        except psycopg.Error as exc:
            span.error = describe_error(exc)
            if raise_errors:
                raise
        finally:
            span.end = self.now()
        return span

    @contextlib.contextmanager
    def statement(self, label: str, sql: str = "", conn: psycopg.Connection | None = None) -> Iterator[Span]:
        """Time any block as a labelled span; an exception is recorded and re-raised.

        ``conn``: the connection the block runs its SQL on, so the judge can tell the locks
        it held from the ones it waited for."""
        span = Span(label, sql or label, self.now(), pid=None if conn is None else conn.info.backend_pid)
        self.spans.append(span)
        try:
            yield span
        except BaseException as exc:
            span.error = describe_error(exc)
            raise
        finally:
            span.end = self.now()

    # -- results -----------------------------------------------------------------------------

    def table_states(self) -> dict[str, str]:
        """Each demo table: 'kept', 'rewritten' (new relfilenode) or 'dropped'."""
        if self._tables_after is not None:
            return dict(self._tables_after)
        with self.sb.connect("traffic") as conn:
            return self._table_states(conn)

    def report(self, *, rows: int | None = None, allowed_ms: float = 0.0) -> Report:
        """What the run did to the application, judged by the kit's one rule (``zdlab.judge``).

        ``allowed_ms``: a wait the migration chose to accept (its lock_timeout), on top of the noise."""
        from .judge import judge
        from .report import build_report

        report = build_report(self, rows=rows)
        judge(report, allowed_ms=allowed_ms)
        return report

    def plot(self, **kwargs: object) -> Figure:
        return self.report(**kwargs).plot()  # type: ignore[arg-type]

    # -- internals ---------------------------------------------------------------------------

    def _filenodes(self, conn: psycopg.Connection) -> dict[str, tuple[int, int | None]]:
        """Every table of the sandbox (the demo tables first): oid and file, to spot rewrites."""
        rows = conn.execute("SELECT relname, oid, pg_relation_filenode(oid) FROM pg_class WHERE relkind = 'r' "
                            "AND relnamespace = to_regnamespace(quote_ident(%s)) ORDER BY relname",
                            [self.sb.schema]).fetchall()
        found = {name: (oid, node) for name, oid, node in rows}
        return {**{t: found[t] for t in DEMO_TABLES if t in found}, **found}

    def _table_states(self, conn: psycopg.Connection) -> dict[str, str]:
        # By oid, not by name: a table swapped in under the old name is a new table.
        states = {}
        for table, (oid, before) in self._filenodes_before.items():
            after = conn.execute("SELECT pg_relation_filenode(oid) FROM pg_class WHERE oid = %s",
                                 [oid]).fetchone()
            if after is None:
                states[table] = "dropped"
            else:
                states[table] = "kept" if after[0] == before else "rewritten"
        return states

    def _worker(self, index: int) -> None:
        rng = random.Random()
        star = "*" if self.select_star else ""
        order_ids = iter(range(self._max_order + 1 + index, 2**62, self.workers))  # disjoint per worker
        conn: psycopg.Connection | None = None
        i = index  # workers start on different kinds
        try:
            while not self._stop.is_set():
                if self._redeploy[index] and conn is not None:
                    self._redeploy[index] = False
                    with contextlib.suppress(Exception):
                        conn.close()
                if conn is None or conn.closed:
                    conn = self._reconnect(index)
                    if conn is None:
                        return
                app = self._assigned[index]
                kinds = KINDS if app is None else tuple(app.requests)
                kind = kinds[i % len(kinds)]
                i += 1
                user = rng.randint(1, self._max_user)
                self._kind_by_pid[conn.info.backend_pid] = kind if app is None else f"{app.name}.{kind}"
                start = time.monotonic()
                error = None
                try:
                    if app is not None:
                        app.requests[kind](conn, RequestContext(rng, user, index, lambda: next(order_ids)))
                    elif kind == "read_user":
                        conn.execute(_SQL["read_user" + star], [user]).fetchall()
                    elif kind == "update_user":
                        conn.execute(_SQL["update_user"], [f"User {user} v{rng.randint(1, 999)}", user])
                    elif kind == "insert_order":
                        conn.execute(_SQL["insert_order"], [next(order_ids), user, rng.randint(100, 99_999)])
                    else:
                        conn.execute(_SQL["read_orders" + star], [user]).fetchall()
                except psycopg.Error as exc:
                    if self._stop.is_set() and isinstance(exc, psycopg.errors.QueryCanceled):
                        break  # our own cancel at stop(), not something the app saw
                    error = describe_error(exc)
                    # Keep the connection, like a pool does, unless it is really gone.
                    if conn.broken:
                        with contextlib.suppress(Exception):
                            conn.close()
                    elif conn.info.transaction_status != psycopg.pq.TransactionStatus.IDLE:
                        with contextlib.suppress(Exception):
                            conn.rollback()  # a custom request that failed inside a transaction
                end = time.monotonic()
                self.requests.append(Request(start - self.t0, (end - start) * 1000, kind, error,
                                             "app" if app is None else app.name, index))
                self._stop.wait(THINK_S)
        finally:
            if conn is not None:
                with contextlib.suppress(Exception):
                    conn.close()

    def _reconnect(self, index: int) -> psycopg.Connection | None:
        delay = 0.05
        while not self._stop.is_set():
            try:
                conn = self.sb.connect("app")
                self._conns[index] = conn
                return conn
            except (ZdlabError, psycopg.Error):
                self._stop.wait(delay)
                delay = min(delay * 2, 1.0)
        return None

    def _sampler(self) -> None:
        prefix = f"{config.APP_PREFIX}/{self.sb.schema}/"
        app = self.sb.app_name("app")
        try:
            conn = self.sb.connect("sampler")
        except ZdlabError:
            return
        previous: dict[int, tuple[int, ...]] = {}
        try:
            while not self._stop.is_set():
                t = self.now()
                try:
                    rows = conn.execute(_SAMPLE_SQL, {"prefix": prefix}).fetchall()
                except psycopg.Error:
                    if conn.broken:
                        return
                    continue
                waiting = {pid: tuple(blockers or ()) for pid, name, wtype, _w, blockers, *_ in rows
                           if name == app and wtype == "Lock"}
                apps = frozenset(pid for pid, name, *_ in rows if name == app)
                others = frozenset(pid for pid, name, wtype, *_ in rows if name != app and wtype == "Lock")
                xacts = {pid: row[-1] for pid, name, *row in rows if name != app}
                self.samples.append(Sample(t, waiting, apps, others, xacts))
                self._note_migration_locks(conn)
                if waiting and waiting != previous:
                    self._resolve_chain(conn, prefix, list(waiting))
                for block in self._last_blocks(waiting):
                    self.chain[block] += 1
                previous = waiting
                self._stop.wait(max(0.0, self.sample_interval - (self.now() - t)))
        finally:
            conn.close()

    def _note_migration_locks(self, conn: psycopg.Connection) -> None:
        """Tables the running migration statement holds a lock on (what it could block)."""
        running = [s.pid for s in self.spans[-3:] if s.end is None and s.pid is not None]
        if not running:
            return
        with contextlib.suppress(psycopg.Error):
            for (table,) in conn.execute(_MIGRATION_LOCKS_SQL, [running, self.sb.schema]).fetchall():
                self.locked_tables.add(table)

    def _resolve_chain(self, conn: psycopg.Connection, prefix: str, pids: list[int]) -> None:
        try:
            rows = conn.execute(_CHAIN_SQL, [pids]).fetchall()
        except psycopg.Error:
            return
        for wpid, wmode, rel, bpid, bname, bstate, bquery, bmode in rows:
            role = bname.removeprefix(prefix) if bname.startswith(prefix) else (bname or "?")
            query = short_sql(bquery or "", 50)
            if bstate and bstate.startswith("idle in transaction"):
                query = f"(idle in transaction; last: {query})"
            self._edges[(wpid, bpid)] = Block(self._kind_by_pid.get(wpid, "app"), role, query,
                                              wmode, bmode, rel)

    def _last_blocks(self, waiting: dict[int, tuple[int, ...]]) -> list[Block]:
        return [self._edges[(w, b)] for w, bs in waiting.items() for b in bs if (w, b) in self._edges]


def traffic(sb: Sandbox, workers: int = 4, *, select_star: bool = False, sample: bool = True,
            sample_interval: float = 0.01, apps: list[AppVersion] | None = None) -> Traffic:
    """Application traffic on ``sb``'s demo tables while the ``with`` block runs.

    ``apps``: run these application versions instead of the built-in workload, worker i
    on ``apps[i % len(apps)]`` (see ``AppVersion`` and ``Traffic.deploy``).
    """
    return Traffic(sb, workers, select_star=select_star, sample=sample, sample_interval=sample_interval,
                   apps=apps)


def wait_until(condition: Callable[[], bool], timeout: float = 10.0, poll_s: float = 0.01) -> bool:
    """Poll ``condition`` until it holds (True) or ``timeout`` seconds pass (False)."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(poll_s)
    return True


@contextlib.contextmanager
def request_in_flight(sb: Sandbox, sql: str, seconds: float) -> Iterator[Callable[[psycopg.Connection], None]]:
    """A step for ``measure_in``: an application transaction (role ``slow-request``) that has just run
    ``sql`` and ends ``seconds`` later, a slow request in flight when the migration starts."""
    with sb.connect("slow-request", autocommit=False) as slow:
        timer = threading.Timer(seconds, slow.rollback)

        def slow_request_in_flight(conn: psycopg.Connection) -> None:
            slow.execute(sql)
            timer.start()

        try:
            yield slow_request_in_flight
        finally:
            if timer.ident is not None:  # started: let it end the transaction before the connection closes
                timer.join()
