"""Run a migration against live traffic and say whether the application would notice.

    report = zdlab.measure("CREATE INDEX ON orders (created_at)", rows=1_000_000)
    report          # safe / blocking / failed, with the numbers
    report.plot()   # the timeline

Verdicts: ``failed`` when a statement errored, ``blocking`` when app requests waited on a
lock for longer than ``threshold_ms`` in one stretch, otherwise ``safe``.
"""

from __future__ import annotations

import contextlib
import operator
import sys
import time
from pathlib import Path

import psycopg
from psycopg.pq import TransactionStatus

from . import statements
from .errors import BadInput, ZdlabError
from .report import Report
from .sandbox import Sandbox
from .seed import seed
from .traffic import KINDS, describe_error, traffic

SETTLE_S = 1.0  # baseline traffic before, and tail after, the migration: shows the contrast
WARMUP_PER_KIND = 6  # psycopg prepares after 5 runs; the prepared-statement trap needs them warm
WARMUP_TIMEOUT_S = 10.0


def measure(sql: str | Path, rows: int = 100_000, *, threshold_ms: float = 200, workers: int = 4,
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
        report = measure_in(sb, sql, threshold_ms=threshold_ms, workers=workers,
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


def measure_in(sb: Sandbox, sql: str, *, threshold_ms: float = 200, workers: int = 4,
               select_star: bool = False, rows: int | None = None, settle_s: float = SETTLE_S) -> Report:
    """Measure ``sql`` on an already seeded sandbox (the tables it changes stay changed)."""
    stmts = statements.split(statements.migration_text(sql))
    failed = False
    not_run = 0
    with sb.connect("migration") as mig, traffic(sb, workers, select_star=select_star) as t:
        time.sleep(settle_s)  # baseline traffic, so the plot shows normal latency first
        t.wait_for_requests(workers * len(KINDS) * WARMUP_PER_KIND, timeout=WARMUP_TIMEOUT_S)
        for i, stmt in enumerate(stmts):
            # Autocommit sends BEGIN/COMMIT verbatim: Postgres itself opens and closes the block.
            span = t.run(mig, stmt)
            if span.error:
                failed = True
                not_run = len(stmts) - i - 1
                break
        if mig.info.transaction_status in (TransactionStatus.INTRANS, TransactionStatus.INERROR):
            # A failed block (or one the file never closed) must not keep its locks while we wait.
            why = "after the error" if failed else "the migration left its transaction open"
            t.run(mig, "ROLLBACK", label=f"ROLLBACK ({why})")
        time.sleep(settle_s)  # the tail: does traffic recover?
    report = t.report(threshold_ms=threshold_ms, rows=rows)
    report.statements_not_run = not_run
    if failed:
        report.verdict = "failed"
    elif report.longest_stall_ms is not None and report.longest_stall_ms > threshold_ms:
        report.verdict = "blocking"
    else:
        report.verdict = "safe"
    return report


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
