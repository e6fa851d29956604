"""What a migration did to live traffic: numbers, a text/HTML summary and a timeline plot.

Blocking is judged from lock waits that Postgres reported (sampled ~every 10 ms), not from
client latency: on a shared 2-core machine one slow request can come from the scheduler,
a checkpoint or autovacuum. Latency is shown as context.
"""

from __future__ import annotations

import html
import statistics
import sys
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from matplotlib.figure import Figure

    from .traffic import Request, Sample, Span, Traffic

VERDICT_COLORS = {"safe": "#1a7f37", "blocking": "#cf222e", "failed": "#9a6700"}


@dataclass
class Timeline:
    """The raw records behind a report, kept for the plot (not part of ``to_dict``)."""

    requests: list[Request] = field(default_factory=list)
    spans: list[Span] = field(default_factory=list)
    stalls: list[tuple[float, float]] = field(default_factory=list)  # (start, end) seconds
    duration_s: float = 0.0


@dataclass
class Report:
    server_version: str | None = None
    rows: int | None = None
    workers: int = 0
    duration_s: float = 0.0
    requests: int = 0
    failed_requests: int = 0
    failures_by_error: dict[str, int] = field(default_factory=dict)
    requests_by_kind: dict[str, int] = field(default_factory=dict)
    p50_latency_ms: float | None = None
    p99_latency_ms: float | None = None
    max_latency_ms: float | None = None
    sampled: bool = False
    samples: int = 0
    sample_interval_ms: float | None = None  # median of the measured gaps
    lock_wait_ms: float | None = None  # None when the sampler was off
    longest_stall_ms: float | None = None
    blocking_chain: list[dict[str, Any]] = field(default_factory=list)
    statements: list[dict[str, Any]] = field(default_factory=list)
    statements_not_run: int = 0
    tables: dict[str, str] = field(default_factory=dict)  # table -> kept / rewritten / dropped
    threshold_ms: float | None = None
    verdict: str | None = None
    timeline: Timeline = field(default_factory=Timeline, repr=False, compare=False)

    @property
    def rewritten_tables(self) -> list[str]:
        return [t for t, state in self.tables.items() if state == "rewritten"]

    @property
    def dropped_tables(self) -> list[str]:
        return [t for t, state in self.tables.items() if state == "dropped"]

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready summary (no raw timeline)."""
        return {
            "server_version": self.server_version, "rows": self.rows, "workers": self.workers,
            "duration_s": _r(self.duration_s), "statements": [dict(s) for s in self.statements],
            "statements_not_run": self.statements_not_run,
            "requests": self.requests, "failed_requests": self.failed_requests,
            "failures_by_error": dict(self.failures_by_error), "requests_by_kind": dict(self.requests_by_kind),
            "p50_latency_ms": _r(self.p50_latency_ms), "p99_latency_ms": _r(self.p99_latency_ms),
            "max_latency_ms": _r(self.max_latency_ms), "sampled": self.sampled, "samples": self.samples,
            "sample_interval_ms": _r(self.sample_interval_ms), "lock_wait_ms": _r(self.lock_wait_ms),
            "longest_stall_ms": _r(self.longest_stall_ms), "blocking_chain": [dict(b) for b in self.blocking_chain],
            "tables": dict(self.tables), "rewritten_tables": self.rewritten_tables,
            "dropped_tables": self.dropped_tables, "threshold_ms": self.threshold_ms, "verdict": self.verdict,
        }

    # -- rendering ---------------------------------------------------------------------------

    def _headline(self) -> str:
        stall = "not sampled" if self.longest_stall_ms is None else f"{self.longest_stall_ms:,.0f} ms"
        threshold = f" (threshold {self.threshold_ms:,.0f} ms)" if self.threshold_ms is not None else ""
        verdict = f"{self.verdict.upper()}: " if self.verdict else ""
        # Lock-safe is not app-safe (e.g. prepared SELECT * after ADD COLUMN): say so up front.
        failed = f", but {self.failed_requests:,} app requests failed" if self.failed_requests else ""
        return f"{verdict}longest stall {stall}{threshold}{failed}"

    def _color(self) -> str:
        if self.verdict == "safe" and self.failed_requests:
            return VERDICT_COLORS["failed"]
        return VERDICT_COLORS.get(self.verdict or "", "black")

    def _lines(self) -> list[tuple[str, str]]:
        """(label, value) pairs shared by the text and HTML forms."""
        lines = [("verdict", self._headline())]
        if self.lock_wait_ms is not None:
            lines.append(("lock wait", f"{self.lock_wait_ms:,.0f} ms of app requests waiting on a lock "
                                       f"({self.samples} samples, every {self.sample_interval_ms or 0:.0f} ms)"))
        fail = f", {self.failed_requests} failed" if self.failed_requests else ", none failed"
        lines.append(("requests", f"{self.requests:,} in {self.duration_s:.1f} s by {self.workers} workers{fail}"))
        for err, n in sorted(self.failures_by_error.items(), key=lambda kv: -kv[1]):
            lines.append(("  failed", f"{n} x {err}"))
        if self.max_latency_ms is not None:
            lines.append(("latency", f"p50 {self.p50_latency_ms:,.1f} ms, p99 {self.p99_latency_ms:,.1f} ms, "
                                     f"max {self.max_latency_ms:,.0f} ms"))
        for s in self.statements:
            dur = "-" if s["duration_ms"] is None else f"{s['duration_ms']:,.0f} ms"
            err = f"  ERROR {s['error']}" if s["error"] else ""
            lines.append(("statement", f"{dur:>9}  {s['label']}{err}"))
        if self.statements_not_run:
            lines.append(("not run", f"{self.statements_not_run} statement(s) after the failure"))
        tables = ", ".join(f"{t} {state}" for t, state in self.tables.items())
        if tables:
            lines.append(("tables", tables))
        for b in self.blocking_chain[:6]:
            lines.append(("blocked", f"{b['edge']} ({b['samples']} samples)"))
        if self.server_version or self.rows:
            rows = f", {self.rows:,} rows" if self.rows else ""
            lines.append(("server", f"PostgreSQL {self.server_version or '?'}{rows}"))
        return lines

    def __str__(self) -> str:
        return "\n".join(f"{label:<10} {value}" for label, value in self._lines())

    def _repr_html_(self) -> str:
        color = self._color()
        cells = []
        for i, (label, value) in enumerate(self._lines()):
            style = f"text-align:left;color:{color};font-weight:bold" if i == 0 else "text-align:left"
            cells.append(f'<tr><th style="text-align:left;padding-right:1em">{html.escape(label.strip())}</th>'
                         f'<td style="{style}">{html.escape(value.strip())}</td></tr>')
        return '<table class="zdlab-report">' + "".join(cells) + "</table>"

    def plot(self) -> Figure:
        return plot(self)


def _r(x: float | None, digits: int = 1) -> float | None:
    return None if x is None else round(x, digits)


def _percentile(sorted_values: list[float], q: float) -> float | None:
    """Nearest-rank percentile: an observed value, never an interpolation."""
    if not sorted_values:
        return None
    rank = max(1, min(len(sorted_values), round(q / 100 * len(sorted_values) + 0.5)))
    return sorted_values[rank - 1]


def stall_intervals(samples: list[Sample], end: float | None = None) -> tuple[list[tuple[float, float]], float]:
    """Runs of samples with an app backend waiting on a lock, and the total lock-wait time (ms).

    A sample stands for the time until the next one (measured, not the nominal interval),
    so a stall lasts from its first waiting sample to the first sample that saw no waiter.
    """
    if not samples:
        return [], 0.0
    gaps = [b.t - a.t for a, b in zip(samples, samples[1:], strict=False)]
    typical = statistics.median(gaps) if gaps else 0.01
    stalls: list[tuple[float, float]] = []
    wait_s = 0.0
    run_start: float | None = None
    for i, s in enumerate(samples):
        nxt = samples[i + 1].t if i + 1 < len(samples) else s.t + typical
        if end is not None:
            nxt = min(nxt, max(end, s.t))
        wait_s += len(s.waiting) * (nxt - s.t)
        if s.waiting and run_start is None:
            run_start = s.t
        if run_start is not None and (not s.waiting or i + 1 == len(samples)):
            stalls.append((run_start, s.t if not s.waiting else nxt))
            run_start = None
    return stalls, wait_s * 1000


def build_report(t: Traffic, *, threshold_ms: float | None = None, verdict: str | None = None,
                 rows: int | None = None) -> Report:
    """Summarise a traffic run (finished or still going)."""
    from .traffic import Span

    requests = list(t.requests)
    samples = list(t.samples)
    spans = [s if s.end is not None else Span(s.label, s.sql, s.start, t.now(), s.error) for s in t.spans]
    duration = t.ended if t.ended is not None else t.now()
    latencies = sorted(r.latency_ms for r in requests)
    failures: dict[str, int] = {}
    by_kind: dict[str, int] = {}
    for r in requests:
        by_kind[r.kind] = by_kind.get(r.kind, 0) + 1
        if r.error:
            failures[r.error] = failures.get(r.error, 0) + 1
    stalls, wait_ms = stall_intervals(samples, t.ended)
    gaps = [b.t - a.t for a, b in zip(samples, samples[1:], strict=False)]
    chain = [{"waiter": b.waiter, "blocker": b.blocker, "blocker_query": b.blocker_query,
              "wanted_mode": b.wanted_mode, "blocker_mode": b.blocker_mode, "relation": b.relation,
              "edge": str(b), "samples": n} for b, n in t.chain.most_common()]
    return Report(
        server_version=t.server_version, rows=rows, workers=t.workers, duration_s=duration,
        requests=len(requests), failed_requests=sum(failures.values()), failures_by_error=failures,
        requests_by_kind=by_kind, p50_latency_ms=_percentile(latencies, 50),
        p99_latency_ms=_percentile(latencies, 99), max_latency_ms=latencies[-1] if latencies else None,
        sampled=t.sample, samples=len(samples),
        sample_interval_ms=statistics.median(gaps) * 1000 if gaps else None,
        lock_wait_ms=wait_ms if t.sample else None,
        longest_stall_ms=max(((e - s) * 1000 for s, e in stalls), default=0.0) if t.sample else None,
        blocking_chain=chain,
        statements=[{"label": s.label, "sql": s.sql, "start_s": _r(s.start, 3), "duration_ms": _r(s.duration_ms),
                     "error": s.error} for s in spans],
        tables=t.table_states(), threshold_ms=threshold_ms, verdict=verdict,
        timeline=Timeline(requests, spans, stalls, duration),
    )


def _inline_in_notebook() -> None:
    """A bare Figure renders in a notebook only once the inline backend's formatter is on."""
    ipython = sys.modules.get("IPython")
    shell = ipython.get_ipython() if ipython is not None else None
    if shell is not None and getattr(shell, "kernel", None) is not None:
        shell.run_line_magic("matplotlib", "inline")


def plot(report: Report) -> Figure:
    """Request latency over time, migration statements shaded, lock waits as a red band."""
    _inline_in_notebook()
    # A bare Figure (no pyplot) needs no display and is not shown twice in a notebook.
    from matplotlib.figure import Figure
    from matplotlib.transforms import blended_transform_factory

    tl = report.timeline
    fig = Figure(figsize=(10, 4), layout="constrained")
    ax = fig.add_subplot()
    kinds = sorted({r.kind for r in tl.requests})
    palette = ["#1f77b4", "#2ca02c", "#9467bd", "#8c564b", "#7f7f7f"]  # none orange/red: those mean trouble
    for i, kind in enumerate(kinds):
        ok = [r for r in tl.requests if r.kind == kind and not r.error]
        ax.scatter([r.start for r in ok], [r.latency_ms for r in ok], s=7, alpha=0.55,
                   color=palette[i % len(palette)], label=kind.replace("_", " "), linewidths=0)
    failed = [r for r in tl.requests if r.error]
    if failed:
        ax.scatter([r.start for r in failed], [r.latency_ms for r in failed], marker="x", s=18,
                   color="#cf222e", label=f"failed ({len(failed)})", linewidths=1)
    ax.set_yscale("log")
    if tl.requests:
        # Leave the top quarter free (log scale) for the statement labels, so they hide no point.
        lo = min(r.latency_ms for r in tl.requests) * 0.5  # room for the lock band
        hi = max(r.latency_ms for r in tl.requests) * 1.5
        ax.set_ylim(lo, lo * (hi / lo) ** (1 / 0.72))
    xmax = max(tl.duration_s, 0.1)
    both = blended_transform_factory(ax.transData, ax.transAxes)  # x in seconds, y in axes fraction
    rows: list[list[tuple[float, float]]] = [[] for _ in range(4)]  # label extents per text row
    for i, s in enumerate(tl.spans):
        end = s.end if s.end is not None else tl.duration_s
        color = "#cf222e" if s.error else "#f0a030"
        ax.axvspan(s.start, end, color=color, alpha=0.25, linewidth=0,
                   label=("migration statement" if i == 0 else None))
        ax.axvline(s.start, color=color, linewidth=0.8, alpha=0.8)  # an instant statement stays visible
        label = s.label if len(s.label) <= 40 else s.label[:39] + "…"
        text = ("✗ " if s.error else "") + label
        right = s.start > 0.6 * xmax  # late statements: label to the left of the line, not off the plot
        ax.text(s.start, 0.97 - 0.06 * _label_row(rows, s.start / xmax, len(text) + 1, right),
                f"{text} " if right else f" {text}", transform=both,
                fontsize=8, va="top", ha="right" if right else "left",
                color="#5a3a00" if not s.error else "#cf222e", clip_on=True)
    for i, (start, end) in enumerate(tl.stalls):
        ax.axvspan(start, end, ymin=0, ymax=0.04, color="#cf222e", alpha=0.9, linewidth=0,
                   label=("app waiting on a lock" if i == 0 else None))
    ax.set_xlim(0, xmax)
    ax.set_xlabel("seconds since traffic started")
    ax.set_ylabel("request latency (ms, log scale)")
    ax.set_title(report._headline(), fontsize=11, color=report._color(), loc="left")
    ax.grid(True, which="major", axis="y", alpha=0.3)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8, markerscale=2, frameon=False)
    return fig


def _label_row(rows: list[list[tuple[float, float]]], x: float, chars: int, right: bool) -> int:
    """The first text row where this label (approximate width, axes fraction) overlaps none."""
    width = chars * 0.0095  # an 8 pt character on the ~7.5 in wide axes of a (10, 4) figure
    extent = (x - width, x) if right else (x, x + width)
    for i, used in enumerate(rows):
        if all(extent[1] <= a or extent[0] >= b for a, b in used):
            used.append(extent)
            return i
    i = min(range(len(rows)), key=lambda k: len(rows[k]))  # all taken: the least crowded row
    rows[i].append(extent)
    return i
