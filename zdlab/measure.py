"""Run a migration against live traffic and say whether the application would notice.

    report = zdlab.measure("CREATE INDEX ON orders (created_at)", rows=1_000_000)
    report          # safe / blocking / failed, with the numbers
    report.plot()   # the timeline

Verdicts (``zdlab.judge``, the kit's one rule, judged against the same run): ``failed`` when a
statement errored, ``breaking`` when app requests failed once it started, ``blocking`` when app
requests waited on it longer than this run's noise or on a lock a statement held for most of
its run, ``not measured`` when it touched a table the workload does not, otherwise ``safe``.
"""

from __future__ import annotations

import contextlib
import inspect
import operator
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import psycopg
from psycopg.pq import TransactionStatus

from . import statements
from .errors import BadInput, ZdlabError
from .records import Span
from .report import Report
from .sandbox import Sandbox
from .seed import seed
from .traffic import KINDS, AppVersion, Traffic, describe_error, traffic

SETTLE_S = 1.0  # baseline traffic before, and tail after, the migration: shows the contrast
WARMUP_PER_KIND = 6  # psycopg prepares after 5 runs; the prepared-statement trap needs them warm
WARMUP_TIMEOUT_S = 10.0


def measure(sql: str | Path, rows: int = 100_000, *, allowed_ms: float = 0.0, workers: int = 4,
            setup_sql: str | Path | None = None, select_star: bool = False, sandbox_name: str = "measure",
            keep: bool = False, progress: bool | None = None) -> Report:
    """Measure ``sql`` (SQL text, or a ``Path`` to a .sql file) in a fresh sandbox seeded with ``rows``
    users and orders.

    ``setup_sql`` runs before traffic starts (a team's own tables). The sandbox is dropped
    afterwards, even on error, unless ``keep=True``. Statement errors never raise: they
    make the verdict ``failed``. Input that is no SQL at all raises ``BadInput`` before anything
    is seeded.
    """
    sql = statements.migration_text(sql)
    if setup_sql is not None:
        setup_sql = statements.migration_text(setup_sql, "setup_sql")
    try:
        count = operator.index(rows)  # a whole number (numpy's too); 2.5 or "1000" is not
    except TypeError:
        count = 0
    if count < 1:
        raise BadInput(f"rows should be a whole number of users to seed, at least 1 (for example "
                       f"rows=100_000), not {rows!r}.")
    rows = count
    sb = Sandbox(sandbox_name)
    ok = False
    try:
        sb.reset()
        seed(sb, rows, progress=_in_notebook() if progress is None else progress)
        if setup_sql:
            run_setup(sb, setup_sql)
        report = measure_in(sb, sql, allowed_ms=allowed_ms, workers=workers,
                            select_star=select_star, rows=rows)
        ok = True
        return report
    finally:
        if not keep:
            if ok:
                sb.drop()
            else:  # do not hide the original error behind a failed clean-up
                with contextlib.suppress(Exception):
                    sb.drop()


Step = str | Callable[[psycopg.Connection], object]


def plan_steps(steps: str | Path | Sequence[Step] | Callable[[psycopg.Connection], object],
               what: str = "the migration") -> list[tuple[str, Step]]:
    """``(label, step)`` pairs: every SQL statement on its own, functions as they are.

    A string holds one or more statements (a migration file); a list may mix SQL strings and
    functions that take the migration's connection (a batched backfill, a retry loop).
    """
    if isinstance(steps, Path):
        steps = statements.migration_text(steps)
    items = [steps] if isinstance(steps, str) or callable(steps) else steps
    if not isinstance(items, Sequence) or isinstance(items, bytes):
        raise BadInput(f"{what} should be SQL text or a list of SQL strings and functions, not "
                       f"{type(steps).__name__}.")
    out: list[tuple[str, Step]] = []
    for i, item in enumerate(items, 1):
        if isinstance(item, str):
            out += [(statements.short_sql(sql), sql) for sql in statements.split(item)]
        elif callable(item):
            out.append((f"{getattr(item, '__name__', 'function')}(conn)", item))
        else:
            raise BadInput(f"step {i} is a {type(item).__name__}; each step of {what} must be a SQL "
                           f"string or a function taking a connection.")
    if not out:
        raise BadInput(f"{what} holds no SQL statement and no function: nothing to run.")
    return out


def measure_in(sb: Sandbox, steps: str | Path | Sequence[Step] | Callable[[psycopg.Connection], object], *,
               workers: int = 4, select_star: bool = False, rows: int | None = None,
               settle_s: float = SETTLE_S, allowed_ms: float = 0.0,
               statement_timeout: str | None = None, lock_timeout: str | None = None,
               connect: Callable[[Sandbox, str], psycopg.Connection] | None = None,
               apps: list[AppVersion] | None = None) -> Report:
    """The kit's one runner: run ``steps`` on an already seeded sandbox under traffic, and judge.

    ``steps``: SQL text (one or more statements), or a list of SQL strings and functions taking
    the migration's autocommit connection. Steps run in order on that one connection; after the
    first that fails the others are not run, and a transaction left open is rolled back. The
    report carries the verdict of ``zdlab.judge`` (``allowed_ms``: a bound the migration chose,
    such as its lock_timeout). The tables the steps change stay changed. ``connect(sb, role)``
    opens the migration's connection (a checker passes ``zdlab.grader.connect``: a learner's
    steps run as a role that owns only the sandbox). ``apps``: application versions instead of the
    built-in workload (``zdlab.traffic``); a function with a ``traffic`` keyword parameter also
    receives the running ``Traffic``, so a step can roll out a version mid-run (``traffic.deploy``).
    ``lock_timeout``: set on the migration's connection before the first step.
    """
    plan = plan_steps(steps)
    failed = False
    not_run = 0
    opened = (connect or Sandbox.connect)(sb, "migration")
    kinds = max(len(a.requests) for a in apps) if apps else len(KINDS)
    with opened as mig, traffic(sb, workers, select_star=select_star, apps=apps) as t:
        if statement_timeout:  # a runaway step (a learner's) must not hang the run
            mig.execute("SELECT set_config('statement_timeout', %s, false)", [statement_timeout])
        if lock_timeout:
            mig.execute("SELECT set_config('lock_timeout', %s, false)", [lock_timeout])
        time.sleep(settle_s)  # baseline traffic, so the plot shows normal latency first
        t.wait_for_requests(workers * kinds * WARMUP_PER_KIND, timeout=WARMUP_TIMEOUT_S)
        for i, (label, step) in enumerate(plan):
            if run_step(t, mig, label, step).error is not None:
                failed = True
                not_run = len(plan) - i - 1
                break
        if not mig.closed and mig.info.transaction_status in (TransactionStatus.INTRANS, TransactionStatus.INERROR):
            # A failed block (or one the file never closed) must not keep its locks while we wait.
            why = "after the error" if failed else "the migration left its transaction open"
            t.run(mig, "ROLLBACK", label=f"ROLLBACK ({why})")
        time.sleep(settle_s)  # the tail: does traffic recover?
    report = t.report(rows=rows, allowed_ms=allowed_ms)
    report.statements_not_run = not_run
    return report


def run_step(t: Traffic, conn: psycopg.Connection, label: str, step: Step, shown: str = "") -> Span:
    """Run one step under ``t``'s traffic on the migration connection, recorded as a span of its timeline.

    ``step``: one SQL statement, or a function of the connection (what it returns, as text, is
    the span's ``note``; ``shown``: what the span shows as its SQL); a function with a ``traffic``
    parameter also receives ``t``. An error is recorded on the
    span, never raised: the verdict reads it. The one way a step runs, for ``measure_in`` and for
    ``zdlab.scoreboard``.
    """
    # Autocommit sends BEGIN/COMMIT verbatim: Postgres itself opens and closes the block.
    if isinstance(step, str):
        return t.run(conn, step, label=label)
    with t.statement(label, shown, conn=conn) as span:
        try:
            out = step(conn, traffic=t) if _takes_traffic(step) else step(conn)
            span.note = None if out is None else str(out)
        except Exception as exc:  # a verdict, never a traceback
            # The kit's own errors are a paragraph for a person; others: class and first line.
            span.error = str(exc) if isinstance(exc, ZdlabError) else describe_error(exc)
    return span


def _takes_traffic(step: Callable[..., object]) -> bool:
    """Whether a step function declares a ``traffic`` parameter (it then receives the running traffic)."""
    try:
        return "traffic" in inspect.signature(step).parameters
    except (TypeError, ValueError):  # a builtin without a signature: the connection only
        return False


def run_setup(sb: Sandbox, setup_sql: str) -> None:
    """Run a team's setup SQL statement by statement; a failure names the statement."""
    with sb.connect("setup") as conn:
        for i, stmt in enumerate(statements.split(setup_sql), 1):
            try:
                conn.execute(stmt, prepare=False)
            except psycopg.Error as exc:
                shown = statements.short_sql(stmt, 120)
                raise ZdlabError(f"setup_sql statement {i} failed: {shown!r}. PostgreSQL said: "
                                 f"{describe_error(exc)}. Fix the setup SQL and measure again.") from None


def _in_notebook() -> bool:
    """A progress bar helps in a notebook and only clutters logs and test output elsewhere."""
    ipython = sys.modules.get("IPython")
    if ipython is None:
        return False
    shell = ipython.get_ipython()
    return shell is not None and getattr(shell, "kernel", None) is not None
