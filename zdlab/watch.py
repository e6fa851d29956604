"""Watch a long statement from a second session, through a ``pg_stat_progress_*`` view.

    build = watch_progress(sb, "CREATE INDEX ...", PROGRESS_SQL)   # PROGRESS_SQL takes the pid
    print(build)                   # the phases seen, when, and how far each one got
    build.phases["building index: scanning table"].counters["blocks_total"]

The statement runs on the sandbox's ``migration`` connection; a thread polls the view every
``poll_s`` on a ``progress`` connection until the statement returns. The progress query's first
column is the phase; its other columns are counters (the largest value seen in each phase is
kept), and ``x_done``/``x_total`` pairs print as ``x done/total``.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field

from .sandbox import Sandbox

POLL_S = 0.005  # a build of a second or two is seen a few hundred times


@dataclass
class Phase:
    """One phase of the statement as the view reported it: when (seconds since it started), how far."""

    name: str
    first_s: float
    last_s: float
    counters: dict[str, int] = field(default_factory=dict)  # the largest value seen, per column

    def __str__(self) -> str:
        shown, names = [], list(self.counters)
        for name in names:
            if name.endswith("_done") and name.removesuffix("_done") + "_total" in self.counters:
                what = name.removesuffix("_done")
                shown.append(f"{what} {self.counters[name]:>9,}/{self.counters[what + '_total']:<9,}")
            elif not name.endswith("_total") or name.removesuffix("_total") + "_done" not in self.counters:
                shown.append(f"{name} {self.counters[name]:,}")
        return f"{self.first_s:5.2f}-{self.last_s:5.2f} s  {self.name:<40} {' '.join(shown)}"


@dataclass
class Watched:
    """What the progress view said while the statement ran."""

    sql: str
    seconds: float
    samples: int
    phases: dict[str, Phase]

    def __str__(self) -> str:
        head = f"{self.sql}: {self.seconds:.2f} s, {self.samples} progress samples"
        return "\n".join([head, *(f"  {p}" for p in self.phases.values())])


def watch_progress(sb: Sandbox, sql: str, progress_sql: str, *, poll_s: float = POLL_S) -> Watched:
    """Run ``sql`` while a second session polls ``progress_sql`` (one parameter: the pid running it)."""
    phases: dict[str, Phase] = {}
    samples = 0
    finished = threading.Event()
    with sb.connect("migration") as build, sb.connect("progress") as watcher:
        pid = build.info.backend_pid

        def poll() -> None:
            nonlocal samples
            while not finished.is_set():
                cur = watcher.execute(progress_sql, [pid])
                row = cur.fetchone()
                if row:
                    samples += 1
                    at = time.perf_counter() - start
                    phase = phases.setdefault(row[0], Phase(row[0], at, at))
                    phase.last_s = at
                    for col, value in zip(cur.description[1:], row[1:], strict=True):
                        phase.counters[col.name] = max(phase.counters.get(col.name, 0), value or 0)
                finished.wait(poll_s)

        poller = threading.Thread(target=poll, name="zdlab-progress")
        start = time.perf_counter()
        poller.start()
        try:
            build.execute(sql)
        finally:
            finished.set()
            poller.join()
        seconds = time.perf_counter() - start
    return Watched(sql, seconds, samples, phases)
