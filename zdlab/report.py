"""What a migration did to live traffic: numbers, a text/HTML summary and a timeline plot.

Blocking is judged from lock waits that Postgres reported (sampled ~every 10 ms), not from
client latency: on a shared 2-core machine one slow request can come from the scheduler,
a checkpoint or autovacuum. Latency is shown as context.
"""

from __future__ import annotations

import html
import itertools
import re
import statistics
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from .records import Span

if TYPE_CHECKING:
    from matplotlib.figure import Figure

    from .judge import Judgement
    from .records import Request, Sample
    from .traffic import Traffic

VERDICT_COLORS = {"safe": "#1a7f37", "blocking": "#cf222e", "breaking": "#cf222e", "failed": "#9a6700",
                  "not measured": "#57606a"}


@dataclass
class Timeline:
    """The raw records behind a report, kept for the plot (not part of ``to_dict``)."""

    requests: list[Request] = field(default_factory=list)
    spans: list[Span] = field(default_factory=list)
    stalls: list[tuple[float, float]] = field(default_factory=list)  # (start, end) seconds
    caused: list[tuple[float, float]] = field(default_factory=list)  # queued behind a non-app session
    samples: list[Sample] = field(default_factory=list)
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
    migration_stall_ms: float | None = None  # the longest stretch queued behind a non-app session
    held: list[dict[str, Any]] = field(default_factory=list)  # per statement: its held locks' waiters
    failures_after_start: dict[str, int] = field(default_factory=dict)  # app errors once it began
    touched_tables: list[str] = field(default_factory=list)  # what the workload reads and writes
    unmeasured_tables: list[str] = field(default_factory=list)  # locked or named, never touched
    blocking_chain: list[dict[str, Any]] = field(default_factory=list)
    statements: list[dict[str, Any]] = field(default_factory=list)
    statements_not_run: int = 0
    tables: dict[str, str] = field(default_factory=dict)  # table -> kept / rewritten / dropped
    verdict: str | None = None
    judgement: Judgement | None = field(default=None, repr=False, compare=False)
    timeline: Timeline = field(default_factory=Timeline, repr=False, compare=False)

    @property
    def noise_ms(self) -> float | None:
        return None if self.judgement is None else self.judgement.noise_ms

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
            "longest_stall_ms": _r(self.longest_stall_ms), "migration_stall_ms": _r(self.migration_stall_ms),
            "noise_ms": _r(self.noise_ms), "held": [dict(h) for h in self.held],
            "reasons": list(self.judgement.reasons) if self.judgement else [],
            "failures_after_start": dict(self.failures_after_start),
            "touched_tables": list(self.touched_tables), "unmeasured_tables": list(self.unmeasured_tables),
            "blocking_chain": [dict(b) for b in self.blocking_chain],
            "tables": dict(self.tables), "rewritten_tables": self.rewritten_tables,
            "dropped_tables": self.dropped_tables, "verdict": self.verdict,
        }

    # -- rendering ---------------------------------------------------------------------------

    def _headline(self) -> str:
        stall = "not sampled" if self.longest_stall_ms is None else f"{self.longest_stall_ms:,.0f} ms"
        threshold = f" (this run's noise {self.judgement.limit_ms:,.0f} ms)" if self.judgement is not None else ""
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
        for reason in self.judgement.reasons if self.judgement else []:
            lines.append(("  because", reason))
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
        tables = ", ".join(f"{t} {state}" for t, state in self.tables.items()
                           if t in self.touched_tables or state != "kept" or t in self.unmeasured_tables)
        if tables:
            lines.append(("tables", tables))
        if self.touched_tables:
            lines.append(("workload", f"reads and writes {', '.join(self.touched_tables)}"))
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

    def plot(self, steps: Sequence[tuple[float, str]] | None = None) -> Figure:
        """The timeline (see ``plot``). ``steps``: ``(start second, short code)`` of each step of a
        stepwise rollout: drawn as marked lines, requests coloured by application version."""
        return plot(self) if steps is None else plot_steps(self, steps)

    def blocked_modes(self) -> set[str]:
        """The lock modes app requests waited for, and the modes their blocker held, on any table."""
        return {m for b in self.blocking_chain for m in (b.get("wanted_mode"), b.get("blocker_mode")) if m}

    def measured(self) -> str:
        """One line: the verdict and the figures of this run it rests on."""
        j = self.judgement
        if j is None:
            return f"{self.verdict or 'not judged'}"
        modes = sorted({b["blocker_mode"] for b in self.blocking_chain if b.get("blocker_mode")})
        held = max(self.held, key=lambda h: h["coverage"], default=None)
        parts = [f"{j.verdict.upper()}", f"longest wait on the migration {j.stall_ms:,.0f} ms against this "
                 f"run's noise {j.limit_ms:,.0f} ms"]
        if held and held["samples"]:
            parts.append(f"waiters during {held['coverage']:.0%} of `{held['label'][:40]}`'s work")
        if modes:
            parts.append(f"blocker held {'+'.join(modes)}")
        if self.failures_after_start:
            parts.append(f"{sum(self.failures_after_start.values()):,} app requests failed")
        return "; ".join(parts)

    def waits_on(self, span: Span) -> list[dict[str, Any]]:
        """Blocking-chain edges whose blocker is this statement (the migration, running its text)."""
        sql = " ".join(span.sql.split())
        return [e for e in self.blocking_chain
                if e["blocker"] == "migration" and sql.startswith(e["blocker_query"].rstrip("…"))]

    def during(self, span: Span | str) -> dict[str, Any]:
        """What one statement did to the app (``span`` or its label): stall, held locks, blocked?

        ``stall_ms``: the longest stretch of app lock waits overlapping the statement (plus the
        samples that see the wait end); ``queued_ms``: the part queued behind a non-working
        session; ``blocked`` applies the run's rule (``zdlab.judge``) to that statement."""
        from .judge import blocks

        if isinstance(span, str):
            found = [s for s in self.timeline.spans if s.label == span]
            if not found:
                raise KeyError(f"no statement labelled {span!r} in this report")
            span = found[0]
        end = (span.end if span.end is not None else self.duration_s) + 2 * (self.sample_interval_ms or 10) / 1000

        def longest(intervals: list[tuple[float, float]]) -> float:
            return max(((b - a) * 1000 for a, b in intervals if a < end and b > span.start), default=0.0)

        queued = longest(self.timeline.caused)
        held = held_by(span, self.timeline.samples)
        limit = self.judgement.limit_ms if self.judgement else 0.0
        floor = self.judgement.held_floor_ms if self.judgement else 0.0
        modes = sorted({e["blocker_mode"] for e in self.waits_on(span) if e.get("blocker_mode")})
        return {"label": span.label, "stall_ms": longest(self.timeline.stalls), "queued_ms": queued,
                "limit_ms": limit, "held": held, "modes": modes,
                "blocked": blocks(queued, [held] if held else [], limit, floor)}

    def expect(self, *verdicts: str, mode: str | None = None, claim: str | None = None) -> Report:
        """Confirm what the run showed, printing one line; raise ``ClaimFailed`` when it did not.

        ``"blocking"`` and ``"breaking"`` hold when their evidence is there (a run can show both);
        any other verdict must be the report's own. ``mode``: a lock mode that must appear in the
        blocking chain (``"ShareLock"``)."""
        from .claims import confirm

        j = self.judgement
        evidence = {"blocking": bool(j and j.blocked), "breaking": bool(j and j.broke)}
        holds = all(evidence.get(v, self.verdict == v) for v in verdicts)
        if "safe" in verdicts or "not measured" in verdicts:
            holds = holds and not (j and (j.blocked or j.broke))
        holds = holds and (mode is None or any(mode in m for m in self.blocked_modes()))
        what = claim or (" and ".join(verdicts) + (f", on {mode}" if mode else ""))
        confirm(what, holds, self.measured())
        return self

    def requests_by_app(self, start: float = 0.0, end: float = float("inf")) -> dict[str, tuple[int, int]]:
        """App version -> (requests, failed) among the requests that started in ``[start, end)`` (seconds)."""
        out: dict[str, tuple[int, int]] = {}
        for r in self.timeline.requests:
            if start <= r.start < end:
                n, failed = out.get(r.app, (0, 0))
                out[r.app] = (n + 1, failed + bool(r.error))
        return out


def _r(x: float | None, digits: int = 1) -> float | None:
    return None if x is None else round(x, digits)


def _percentile(sorted_values: list[float], q: float) -> float | None:
    """Nearest-rank percentile: an observed value, never an interpolation."""
    if not sorted_values:
        return None
    rank = max(1, min(len(sorted_values), round(q / 100 * len(sorted_values) + 0.5)))
    return sorted_values[rank - 1]


def stall_intervals(samples: list[Sample], end: float | None = None,
                    waits: Callable[[Sample], dict] | None = None) -> tuple[list[tuple[float, float]], float]:
    """Runs of samples with an app backend waiting on a lock, and the total lock-wait time (ms).

    A sample stands for the time until the next one (measured, not the nominal interval),
    so a stall lasts from its first waiting sample to the first sample that saw no waiter.
    ``waits`` picks which waits of a sample count (default: all of them).
    """
    if not samples:
        return [], 0.0
    gaps = [b.t - a.t for a, b in zip(samples, samples[1:], strict=False)]
    typical = statistics.median(gaps) if gaps else 0.01
    stalls: list[tuple[float, float]] = []
    wait_s = 0.0
    run_start: float | None = None
    for i, s in enumerate(samples):
        waiting = s.waiting if waits is None else waits(s)
        nxt = samples[i + 1].t if i + 1 < len(samples) else s.t + typical
        if end is not None:
            nxt = min(nxt, max(end, s.t))
        wait_s += len(waiting) * (nxt - s.t)
        if waiting and run_start is None:
            run_start = s.t
        if run_start is not None and (not waiting or i + 1 == len(samples)):
            stalls.append((run_start, s.t if not waiting else nxt))
            run_start = None
    return stalls, wait_s * 1000


def build_report(t: Traffic, *, rows: int | None = None) -> Report:
    """Summarise a traffic run (finished or still going)."""
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
    caused, _ = stall_intervals(samples, t.ended, lambda s: s.queued(working_in(spans)))
    gaps = [b.t - a.t for a, b in zip(samples, samples[1:], strict=False)]
    began = min((s.start for s in spans), default=None)
    after: dict[str, int] = {}
    for r in requests:
        if r.error and began is not None and r.start + r.latency_ms / 1000 >= began:
            after[r.error] = after.get(r.error, 0) + 1
    tables = t.table_states()
    touched = list(t.touched_tables) if t.touched_tables is not None else []
    named = {name for s in spans for name in tables if re.search(rf"\b{re.escape(name)}\b", s.sql, re.I)}
    unmeasured = sorted((named | t.locked_tables) & set(tables) - set(touched)) if t.touched_tables is not None \
        else []
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
        migration_stall_ms=max(((e - s) * 1000 for s, e in caused), default=0.0) if t.sample else None,
        held=[h for h in (held_by(s, samples) for s in spans) if h is not None],
        failures_after_start=after, touched_tables=touched, unmeasured_tables=unmeasured,
        blocking_chain=chain,
        statements=[{"label": s.label, "sql": s.sql, "start_s": _r(s.start, 3), "duration_ms": _r(s.duration_ms),
                     "rows": s.rows,
                     "error": s.error} for s in spans],
        tables=tables,
        timeline=Timeline(requests, spans, stalls, caused, samples, duration),
    )


def working_in(spans: list[Span]) -> Callable[[int, float], bool]:
    """``working(pid, t)``: ``pid`` runs one of these statements at ``t`` (and holds what it took)."""
    runs = [(s.pid, s.start, s.end if s.end is not None else float("inf")) for s in spans if s.pid is not None]
    return lambda pid, t: any(p == pid and a <= t <= b for p, a, b in runs)


def held_by(span: Span, samples: list[Sample]) -> dict[str, Any] | None:
    """How long app requests waited on locks this statement's session held while it worked.

    Samples in which the session itself waited for a lock (queued behind someone) are not its
    work: the app waiting behind it then is the lock queue, judged by the stall instead.

    A lock is held until its transaction ends, so a step of many transactions (a batched
    backfill) is judged by its worst transaction, and ``share`` says how much of the step's
    time in a transaction that one took: a batch of many is bounded by the batch size, one
    transaction doing most of the work grows with the table. One statement, or a BEGIN ...
    COMMIT block, is one transaction (``share`` 1)."""
    if span.pid is None:
        return None
    end = span.end if span.end is not None else float("inf")
    inside = [s for s in samples if span.start <= s.t <= end]
    working = [s for s in inside if span.pid not in s.lock_waiting]
    transactions: dict[object, list[Sample]] = {}
    for s in working:  # keyed by the transaction's start; a session between transactions holds nothing
        key = s.xacts.get(span.pid, _UNSEEN)
        if key is not None:
            transactions.setdefault(key, []).append(s)
    gaps = [b.t - a.t for a, b in zip(samples, samples[1:], strict=False)]
    step_ms = statistics.median(gaps) * 1000 if gaps else 10.0

    def waited(group: list[Sample]) -> int:
        return sum(1 for s in group if any(span.pid in blockers for blockers in s.waiting.values()))

    worst = max(transactions.values(), key=lambda g: (waited(g), len(g)), default=[])
    held = waited(worst)
    in_tx = sum(len(g) for g in transactions.values())
    return {"label": span.label, "held_ms": round(len(worst) * step_ms, 1),
            "wait_ms": round(held * step_ms, 1), "samples": held,
            "coverage": round(held / len(worst), 3) if worst else 0.0,
            "transactions": len(transactions), "share": round(len(worst) / in_tx, 3) if in_tx else 1.0}


_UNSEEN = object()  # the sampler did not see the session: its samples count as one transaction


def _inline_in_notebook() -> None:
    """A bare Figure renders in a notebook only once the inline backend's formatter is on."""
    ipython = sys.modules.get("IPython")
    shell = ipython.get_ipython() if ipython is not None else None
    if shell is not None and getattr(shell, "kernel", None) is not None:
        shell.run_line_magic("matplotlib", "inline")


def plot(report: Report) -> Figure:
    """Request latency over time; migration statements shaded and numbered (their text in the legend);
    requests that waited on a lock drawn as red bars across the time they waited, above a red band."""
    _inline_in_notebook()
    # A bare Figure (no pyplot) needs no display and is not shown twice in a notebook.
    from matplotlib.figure import Figure
    from matplotlib.lines import Line2D
    from matplotlib.transforms import blended_transform_factory

    tl = report.timeline
    fig = Figure(figsize=(10, 4), layout="constrained")
    ax = fig.add_subplot()
    waited = _waited_on_lock(tl.requests, tl.stalls, (report.sample_interval_ms or 10) / 1000)
    kinds = sorted({r.kind for r in tl.requests})
    palette = ["#1f77b4", "#2ca02c", "#9467bd", "#8c564b", "#7f7f7f"]  # none orange/red: those mean trouble
    for i, kind in enumerate(kinds):
        ok = [r for r in tl.requests if r.kind == kind and not r.error and id(r) not in waited]
        ax.scatter([r.start for r in ok], [r.latency_ms for r in ok], s=7, alpha=0.55,
                   color=palette[i % len(palette)], label=kind.replace("_", " "), linewidths=0)
    slow = [r for r in tl.requests if id(r) in waited]
    if slow:
        # A request blocked for 500 ms is one point among thousands; as a bar from its start to its end
        # it shows how long, and when, the application was held up.
        ax.hlines([r.latency_ms for r in slow], [r.start for r in slow], [r.start + r.latency_ms / 1000 for r in slow],
                  color="#cf222e", linewidth=2.5, alpha=0.8, label=f"waited on a lock ({len(slow)})")
    failed = [r for r in tl.requests if r.error]
    if failed:
        ax.scatter([r.start for r in failed], [r.latency_ms for r in failed], marker="x", s=18,
                   color="#cf222e", label=f"failed ({len(failed)})", linewidths=1)
    ax.set_yscale("log")
    if tl.requests:
        ax.set_ylim(*_latency_range([r.latency_ms for r in tl.requests]))
    xmax = max(tl.duration_s, 0.1)
    both = blended_transform_factory(ax.transData, ax.transAxes)  # x in seconds, y in axes fraction
    rows: list[list[tuple[float, float]]] = [[] for _ in range(2)]  # number extents per text row
    for i, s in enumerate(tl.spans, start=1):
        end = s.end if s.end is not None else tl.duration_s
        color = "#cf222e" if s.error else "#f0a030"
        ax.axvspan(s.start, end, color=color, alpha=0.25, linewidth=0,
                   label=("migration statement" if i == 1 else None))
        ax.axvline(s.start, color=color, linewidth=0.8, alpha=0.8)  # an instant statement stays visible
        # A number at the line, the statement in the legend: labels of statements close together
        # cannot overlap, and need no room above the data.
        right = s.start > 0.9 * xmax
        ax.text(s.start, 0.985 - 0.07 * _label_row(rows, s.start / xmax, len(str(i)) + 1, right),
                f"{i} " if right else f" {i}", transform=both, fontsize=9, fontweight="bold", va="top",
                ha="right" if right else "left", color="#cf222e" if s.error else "#5a3a00", clip_on=True)
        label = s.label if len(s.label) <= 40 else s.label[:39] + "…"
        ax.add_line(Line2D([], [], linestyle="none", marker=f"${i}$", markersize=4 + len(str(i)),
                           color="#cf222e" if s.error else "#5a3a00",
                           label=("✗ " if s.error else "") + label))
    for i, (start, end) in enumerate(tl.stalls):
        ax.axvspan(start, end, ymin=0, ymax=0.05, color="#cf222e", alpha=0.9, linewidth=0,
                   label=("app waiting on a lock" if i == 0 else None))
    ax.set_xlim(0, xmax)
    ax.set_xlabel("seconds since traffic started")
    ax.set_ylabel("request latency (ms, log scale)")
    ax.set_title(report._headline(), fontsize=11, color=report._color(), loc="left")
    ax.grid(True, which="major", axis="y", alpha=0.3)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8, markerscale=1.5, frameon=False)
    return fig


def plot_steps(report: Report, steps: Sequence[tuple[float, str]]) -> Figure:
    """Request latency by application version, an orange line and a short code where each step
    starts (a rolling rename: up, down, up again), lock waits as a red band, failures as crosses."""
    _inline_in_notebook()
    from matplotlib.figure import Figure
    from matplotlib.transforms import blended_transform_factory

    tl = report.timeline
    fig = Figure(figsize=(11, 4.2), layout="constrained")
    ax = fig.add_subplot()
    palette = ["#1f77b4", "#2ca02c", "#9467bd", "#8c564b"]  # none orange/red: those mean trouble
    for app, color in zip(sorted({r.app for r in tl.requests}), itertools.cycle(palette)):
        ok = [r for r in tl.requests if r.app == app and not r.error]
        ax.scatter([r.start for r in ok], [r.latency_ms for r in ok], s=6, alpha=0.5, color=color,
                   linewidths=0, label=f"{app} requests ({len(ok):,})")
    failed = [r for r in tl.requests if r.error]
    if failed:
        ax.scatter([r.start for r in failed], [r.latency_ms for r in failed], marker="x", s=18, color="#cf222e",
                   label=f"failed ({len(failed)})")
    ax.set_yscale("log")
    top = max((r.latency_ms for r in tl.requests), default=10)
    ax.set_ylim(0.05, top * 30)  # room above the points for the step codes
    both = blended_transform_factory(ax.transData, ax.transAxes)  # x in seconds, y in axes fraction
    for i, (start, code) in enumerate(steps):
        ax.axvline(start, color="#f0a030", linewidth=0.9)
        # Two text rows, alternating: codes of steps close together do not overlap.
        ax.text(start, 0.97 - 0.07 * (i % 2), f" {code}", transform=both, fontsize=9, va="top", color="#5a3a00")
    for i, (a, b) in enumerate(tl.stalls):
        ax.axvspan(a, b, ymin=0, ymax=0.04, color="#cf222e", alpha=0.9, linewidth=0,
                   label="app waiting on a lock" if i == 0 else None)
    ax.set_xlim(0, tl.duration_s)
    ax.set_xlabel("seconds since traffic started  (orange lines: each step starts)")
    ax.set_ylabel("request latency (ms, log scale)")
    ax.set_title(f"{len(steps)} steps under traffic: {report.failed_requests} of {report.requests:,} requests "
                 f"failed, longest lock stall {report.longest_stall_ms or 0:,.0f} ms", loc="left", fontsize=11,
                 color="#1a7f37" if not report.failed_requests else "#cf222e")
    ax.grid(True, axis="y", alpha=0.3)
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8, markerscale=2, frameon=False)
    return fig


def _waited_on_lock(requests: list[Request], stalls: list[tuple[float, float]], step_s: float) -> set[int]:
    """The requests (by id) in flight for at least one sampler interval of a stall: those the sampler
    saw waiting, as near as a request without its backend's pid can tell."""
    out = set()
    for r in requests:
        end = r.start + r.latency_ms / 1000
        if any(min(end, b) - max(r.start, a) >= step_s for a, b in stalls):
            out.add(id(r))
    return out


def _latency_range(latencies: list[float]) -> tuple[float, float]:
    """Log-scale limits that fit the data: half the fastest request below (room for the red band) and
    a little above the slowest (room for the statement numbers), not decades of empty axis."""
    lo, hi = min(latencies) * 0.5, max(latencies)
    return lo, hi * max(hi / lo, 10) ** 0.12


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
