"""The records a traffic run keeps and a report reads: requests, migration statements (spans),
lock-wait samples and blocking-chain edges. Their own module, so that `traffic` (which writes
them) and `report` (which reads them) both import it and neither imports the other for them."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field


@dataclass
class Request:
    start: float  # seconds since traffic start
    latency_ms: float
    kind: str
    error: str | None = None
    app: str = "app"  # which application version served it (rolling deploys)
    worker: int = -1  # which worker (pod) sent it

    @property
    def end(self) -> float:
        """Seconds since traffic start when it returned (a request in flight when a DDL began ends after it)."""
        return self.start + self.latency_ms / 1000


@dataclass
class Span:
    """One migration statement (or any labelled step) on the traffic timeline."""

    label: str
    sql: str
    start: float
    end: float | None = None
    error: str | None = None
    pid: int | None = None  # the migration session that ran it, when there was one
    rows: int | None = None  # rows it changed (an UPDATE holds each one's lock until it commits)
    note: str | None = None  # what a step function returned, as text (a backfill's batch count)

    @property
    def duration_ms(self) -> float | None:
        return None if self.end is None else (self.end - self.start) * 1000


@dataclass
class Sample:
    t: float  # seconds since traffic start, taken when the poll was sent
    waiting: dict[int, tuple[int, ...]] = field(default_factory=dict)  # app pid -> blocker pids
    apps: frozenset[int] = frozenset()  # app backends seen: a wait on one of them is app-on-app
    lock_waiting: frozenset[int] = frozenset()  # other sessions (migrations) themselves waiting for a lock
    # other sessions' current transaction (its xact_start, epoch s; None: none open): a lock is
    # held until its transaction ends, so a batched backfill's locks are judged per batch
    xacts: dict[int, float | None] = field(default_factory=dict)

    def queued(self, working: Callable[[int, float], bool]) -> dict[int, tuple[int, ...]]:
        """The waits on a session that is not the application and is not working on a migration
        statement while holding its lock: it queues for a lock itself (the lock queue), or it is a
        transaction left open. ``working(pid, t)``: that pid runs a migration statement at ``t``.
        Waits on a working statement are judged per statement (``zdlab.report.held_by``)."""
        out = {}
        for waiter, blockers in self.waiting.items():
            theirs = tuple(b for b in blockers if b not in self.apps)
            if not blockers or any(b in self.lock_waiting or not working(b, self.t) for b in theirs):
                out[waiter] = theirs  # no blocker named: it went between two polls; count it
        return out


@dataclass(frozen=True)
class Block:
    """One edge of the blocking chain: an app request kind waits for a session."""

    waiter: str
    blocker: str  # role (application_name without the sandbox prefix) or application_name
    blocker_query: str
    wanted_mode: str | None = None
    blocker_mode: str | None = None
    relation: str | None = None

    def __str__(self) -> str:
        mode = f" [{self.wanted_mode or '?'} vs {self.blocker_mode or '?'} on {self.relation}]" \
            if self.wanted_mode else ""
        return f"{self.waiter} -> {self.blocker}: {self.blocker_query}{mode}"
