"""What a blocking migration would cost at your size: a small, honest calculator.

    growth = cost.time_rewrite(sb, [20_000, 60_000, 120_000])   # seconds per row, measured here
    c = cost.downtime_cost(stall_s=0.42, measured_rows=200_000, growth=growth,
                           rows=50_000_000, requests_per_s=300, client_timeout_s=5)
    print(c)        # every figure with the arithmetic that produced it

The model, and its limits (the printout says them too):

- **outage**: the stall measured here, plus the measured per-row cost for every row more (a
  straight line through the timed rewrites). A lower bound: a table larger than memory is
  slower per row, and the lock queue can add a long transaction's wait on top.
- **requests blocked**: every request to the table during the outage waits (rate x outage).
- **requests failed**: those still waiting when the client gives up: rate x (outage - timeout).
- **error budget**: a 99.9% monthly availability target allows 0.1% of a 30-day month of full
  outage, 43.2 minutes (2,592 s); the share is outage / budget.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass

from psycopg import sql as pgsql

from .sandbox import Sandbox

MONTH_S = 30 * 24 * 3600
REWRITE_SQL = "ALTER TABLE {} ALTER COLUMN amount_cents TYPE bigint"  # notebook 01's rewrite


@dataclass(frozen=True)
class Growth:
    """Seconds of a migration against rows, and the least-squares line through them."""

    rows: tuple[int, ...]
    seconds: tuple[float, ...]

    @property
    def slope_s_per_row(self) -> float:
        n = len(self.rows)
        mean_r, mean_s = sum(self.rows) / n, sum(self.seconds) / n
        var = sum((r - mean_r) ** 2 for r in self.rows)
        return sum((r - mean_r) * (s - mean_s) for r, s in zip(self.rows, self.seconds, strict=True)) / var

    @property
    def intercept_s(self) -> float:
        n = len(self.rows)
        return sum(self.seconds) / n - self.slope_s_per_row * sum(self.rows) / n

    def seconds_at(self, rows: int) -> float:
        return self.intercept_s + self.slope_s_per_row * rows

    def line(self) -> str:
        timed = ", ".join(f"{r:,} rows {s * 1000:,.0f} ms" for r, s in zip(self.rows, self.seconds, strict=True))
        return f"{timed}: {self.slope_s_per_row * 1e6:,.3f} s per million rows"


def fit_growth(points: Sequence[tuple[int, float]]) -> Growth:
    """A ``Growth`` from (rows, seconds) pairs: at least two distinct sizes."""
    if len({r for r, _ in points}) < 2:
        raise ValueError("time the migration at two sizes at least")
    ordered = sorted(points)
    return Growth(tuple(r for r, _ in ordered), tuple(s for _, s in ordered))


def time_rewrite(sb: Sandbox, sizes: Sequence[int], sql: str = REWRITE_SQL) -> Growth:
    """Time the same rewrite (``sql`` with ``{}`` for the table) on a fresh copy of ``orders``-like
    rows at each size, as notebook 01 does, and fit the line. The copies are dropped afterwards."""
    points = []
    with sb.connect("timing") as conn:
        for n in sizes:
            table = pgsql.Identifier(f"growth_{n}")
            conn.execute(pgsql.SQL("DROP TABLE IF EXISTS {t}; CREATE TABLE {t} AS SELECT g AS id, "
                                   "(100 + g * 31 % 99900)::int AS amount_cents FROM generate_series(1, {n}) g")
                         .format(t=table, n=pgsql.Literal(n)))
            start = time.perf_counter()
            conn.execute(pgsql.SQL(sql).format(table))
            points.append((n, time.perf_counter() - start))
            conn.execute(pgsql.SQL("DROP TABLE {}").format(table))
    return fit_growth(points)


@dataclass(frozen=True)
class DowntimeCost:
    """The figures, from the measured stall and growth and your table size and traffic."""

    stall_s: float  # measured here, at measured_rows
    measured_rows: int
    slope_s_per_row: float  # measured here
    rows: int  # yours
    requests_per_s: float  # yours, to this table
    client_timeout_s: float | None = None  # when your clients give up; None: they wait
    slo: float = 0.999

    @property
    def outage_s(self) -> float:
        return max(0.0, self.stall_s + self.slope_s_per_row * (self.rows - self.measured_rows))

    @property
    def requests_blocked(self) -> float:
        return self.requests_per_s * self.outage_s

    @property
    def requests_failed(self) -> float:
        if self.client_timeout_s is None:
            return 0.0
        return self.requests_per_s * max(0.0, self.outage_s - self.client_timeout_s)

    @property
    def budget_s(self) -> float:
        return (1 - self.slo) * MONTH_S

    @property
    def budget_share(self) -> float:
        return self.outage_s / self.budget_s

    def lines(self) -> list[str]:
        extra = self.rows - self.measured_rows
        failed = ("no client timeout given: none fail, all wait" if self.client_timeout_s is None else
                  f"{self.requests_per_s:,.0f}/s x max(0, {self.outage_s:,.1f} s - {self.client_timeout_s:,.1f} s "
                  f"timeout) = {self.requests_failed:,.0f}")
        return [
            f"full outage of the table: {self.stall_s:,.3f} s measured at {self.measured_rows:,} rows + "
            f"{self.slope_s_per_row * 1e6:,.3f} s per million rows x {extra:,} more rows = {self.outage_s:,.1f} s",
            f"requests blocked: {self.requests_per_s:,.0f}/s x {self.outage_s:,.1f} s = {self.requests_blocked:,.0f}",
            f"requests failed: {failed}",
            f"error budget ({self.slo:.1%} a month = {self.budget_s / 60:,.1f} min): {self.outage_s:,.1f} s / "
            f"{self.budget_s:,.0f} s = {self.budget_share:.1%} of it in one migration",
            "a lower bound: a table bigger than memory is slower per row, and a long transaction ahead of "
            "the migration in the lock queue adds its own wait",
        ]

    def __str__(self) -> str:
        return "\n".join(self.lines())


def downtime_cost(*, stall_s: float, measured_rows: int, growth: Growth, rows: int, requests_per_s: float,
                  client_timeout_s: float | None = None, slo: float = 0.999) -> DowntimeCost:
    """``DowntimeCost`` from a measured stall and ``Growth`` and your numbers (see the module doc)."""
    if rows < 0 or requests_per_s < 0 or not 0 < slo < 1:
        raise ValueError("rows and requests_per_s must be >= 0, slo between 0 and 1 (0.999 for 99.9%)")
    return DowntimeCost(stall_s, measured_rows, growth.slope_s_per_row, rows, requests_per_s, client_timeout_s, slo)
