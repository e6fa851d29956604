"""The kit's one verdict rule: did the application notice the migration, judged against the same run.

No fixed number of milliseconds decides. Every figure a verdict compares comes from the run it
judges, so a fast laptop and a crowded CI machine reach the same verdict for the same migration:

- **noise**: what this machine does on its own during this run: the slowest application request
  that waited on no lock, or ``NOISE_FACTOR`` times the 99th percentile of those requests, and
  never less than ``NOISE_FLOOR_SAMPLES`` sampler intervals (a shorter wait is one or two
  samples, which the sampler cannot tell from a request caught at the wrong instant). A crowded
  machine has a larger noise, a quiet one a smaller one: it scales with the machine, as the wait
  for a request in flight does.
- **stall**: the longest stretch in which app requests queued behind a session that is not the
  application and was not working on a migration statement: a DDL waiting in the lock queue (for
  the requests in flight, or for a long transaction), or a transaction left open. From
  ``pg_stat_activity`` and ``pg_blocking_pids()`` sampled every ~10 ms. App-on-app row-lock waits
  are the application's own business and do not count against the migration.
- **held**: for each migration statement, the time app requests waited on a lock that statement's
  session *held while working* (the session itself was not waiting for a lock), per transaction:
  a lock is held until its transaction ends, so a batched backfill is judged batch by batch, and
  a batch counts only when it took most of the step's time (then it grows with the table). A statement whose
  waiters cover at least ``HELD_COVERAGE`` of its own working time, for longer than the slowest
  request of the run took on its own (and ``HELD_MIN_SAMPLES`` samples; one sample when it
  rewrote a table the app uses, from ``relfilenode``), blocks for as long as it runs, so it
  blocks longer on a larger table, whatever the stall happened to be at this size. An instant
  DDL that a crowded CPU keeps holding its lock for a few ms stays within that floor.

Verdicts, first match wins:

``failed``        a migration statement errored;
``breaking``      app requests failed after the migration started (it broke the application,
                  whatever the locks say);
``blocking``      the stall is longer than the noise plus what the caller allows (a ``lock_timeout``
                  the migration sets is a bound it chose), or a statement held a lock the app waited
                  on for most of its run;
``not measured``  a statement locked or named a table the workload never touched: the run cannot
                  tell what the application would have felt there;
``safe``          none of the above.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .report import Report

NOISE_FACTOR = 3.0  # a lock wait counts once it is clearly longer than this run's own slow requests
NOISE_FLOOR_SAMPLES = 5  # ~50 ms at the sampler's 10 ms: shorter waits are one or two samples
HELD_COVERAGE = 0.5  # "blocks for as long as it runs": waiters during at least half its working time
HELD_MIN_SAMPLES = 3  # and seen in at least this many samples, not one unlucky instant

VERDICTS = ("safe", "blocking", "breaking", "failed", "not measured")


@dataclass
class Judgement:
    """The verdict and the measurements it rests on, each from the same run."""

    verdict: str
    stall_ms: float  # longest stretch of app requests waiting on a non-app session
    noise_ms: float  # this run's own noise (see the module docstring)
    allowed_ms: float = 0.0  # a bound the migration chose (its lock_timeout), added to the noise
    held: list[dict] = field(default_factory=list)  # per statement: label, held_ms, wait_ms, coverage
    reasons: list[str] = field(default_factory=list)
    held_floor_ms: float = 0.0  # a held lock counts once the app waited on it longer than this
    blocked: bool = False  # the blocking evidence, whatever verdict came first
    broke: bool = False  # app requests failed once the migration started

    @property
    def limit_ms(self) -> float:
        return self.noise_ms + self.allowed_ms


def _free_latencies(report: Report) -> list[float]:
    """Latencies (ms, sorted) of the app requests that succeeded and overlapped no lock wait."""
    stalls = report.timeline.stalls
    return sorted(r.latency_ms for r in report.timeline.requests
                  if not r.error and not any(s < r.start + r.latency_ms / 1000 and e > r.start for s, e in stalls))


def noise_ms(report: Report) -> float:
    """This run's noise: the slowest request that waited on no lock, or ``NOISE_FACTOR`` x their p99."""
    free = _free_latencies(report)
    p99 = free[min(len(free) - 1, int(0.99 * len(free)))] if free else 0.0
    floor = NOISE_FLOOR_SAMPLES * (report.sample_interval_ms or 10.0)
    return max(NOISE_FACTOR * p99, free[-1] if free else 0.0, floor)


def held_floor_ms(report: Report) -> float:
    """A held lock counts once the app waited on it longer than any request of the run took on its
    own, and for at least ``HELD_MIN_SAMPLES`` samples: an instant DDL that a crowded CPU keeps
    holding its lock for a few ms is machine noise, a build that holds it for its whole run is not."""
    free = _free_latencies(report)
    return max(free[-1] if free else 0.0, HELD_MIN_SAMPLES * (report.sample_interval_ms or 10.0))


def holders(held: list[dict], floor_ms: float, rewrote: bool = False) -> list[dict]:
    """The statements that held a lock the app waited on for most of their work, for longer than
    ``floor_ms`` (``held_floor_ms``).

    ``rewrote``: a table the app uses got a new file, so a statement held AccessExclusiveLock
    while copying every row: one sample of app requests waiting on it is evidence enough.

    A step of several transactions (a batched backfill) is judged by its worst transaction, and
    only when that one took most of the step's time in a transaction (``share``): then it grows
    with the table like one statement. One batch of many is bounded by the batch size, whatever
    the table's: a request waits for one batch at most, which is what batching is for."""
    return [h for h in held if h["coverage"] >= HELD_COVERAGE and h["samples"] >= 1
            and h.get("share", 1.0) >= HELD_COVERAGE and (rewrote or h["wait_ms"] > floor_ms)]


def blocks(stall_ms: float, held: list[dict], limit_ms: float, floor_ms: float, rewrote: bool = False) -> bool:
    """The blocking half of the rule, for a whole run or for one step's window."""
    return stall_ms > limit_ms or bool(holders(held, floor_ms, rewrote))


def judge(report: Report, *, allowed_ms: float = 0.0) -> Judgement:
    """Apply the verdict rule to ``report``; the report keeps the judgement (``report.judgement``)."""
    noise = noise_ms(report)
    stall = report.migration_stall_ms or 0.0
    j = Judgement("safe", stall, noise, allowed_ms, held=[dict(h) for h in report.held],
                  held_floor_ms=held_floor_ms(report))
    errors = [s for s in report.statements if s["error"]]
    broke = report.failures_after_start
    rewrote = any(t in report.touched_tables or not report.touched_tables for t in report.rewritten_tables)
    j.blocked = blocks(stall, report.held, j.limit_ms, j.held_floor_ms, rewrote)
    j.broke = bool(broke)
    if errors:
        j.verdict = "failed"
        j.reasons.append(f"statement `{errors[0]['label']}` failed: {errors[0]['error']}")
    elif broke:
        j.verdict = "breaking"
        err, n = max(broke.items(), key=lambda kv: kv[1])
        j.reasons.append(f"{sum(broke.values()):,} app requests failed after the migration started, "
                         f"{n:,} with {err}")
    elif j.blocked:
        j.verdict = "blocking"
        if stall > j.limit_ms:
            j.reasons.append(f"app requests queued {stall:,.0f} ms in one stretch behind the migration, more than "
                             f"this run's noise ({noise:,.0f} ms{_allowed(allowed_ms)})")
        for h in holders(report.held, j.held_floor_ms, rewrote):
            grows = (f"; if its work grows with the table (a build, a rewrite, an UPDATE of every row), about "
                     f"{h['held_ms'] * 10 / 1000:,.1f} s at {report.rows * 10:,} rows (notebook 01 measures how)"
                     if report.rows else "")
            whose = (f"of one of its {h['transactions']} transactions' {h['held_ms']:,.0f} ms"
                     if h.get("transactions", 1) > 1 else f"of its {h['held_ms']:,.0f} ms")
            j.reasons.append(f"`{h['label']}` held a lock app requests waited on for {h['coverage']:.0%} {whose} "
                             f"of work: it blocks as long as it runs, longer on a larger table{grows}")
    elif report.unmeasured_tables:
        j.verdict = "not measured"
        j.reasons.append(f"the migration locked or named {', '.join(report.unmeasured_tables)}, which the "
                         f"workload never touched (it touched {', '.join(report.touched_tables) or 'nothing'})")
    else:
        j.reasons.append(f"longest wait on the migration {stall:,.0f} ms, within this run's noise "
                         f"({noise:,.0f} ms{_allowed(allowed_ms)}); no statement blocked for its whole run")
    report.judgement = j
    report.verdict = j.verdict
    return j


def _allowed(allowed_ms: float) -> str:
    return f" + {allowed_ms:,.0f} ms allowed" if allowed_ms else ""
