"""Time each solution notebook: wall time per notebook and its slowest cells.

    .venv/bin/python tools/time_notebooks.py                 # every notebook in solutions/
    .venv/bin/python tools/time_notebooks.py 00_setup 04     # those whose name starts so
    .venv/bin/python tools/time_notebooks.py --json out.json # also write the figures

Runs each notebook top to bottom with nbclient (kernel ``python3``, telemetry off,
ZDLAB_STRICT_CHECKS=1 as in the test suite) against the server the kit uses (DATABASE_URL or
the embedded one), in a database of its own (ZDLAB_LEARNER=timing, so ``zdlab_timing``,
dropped at the end): a test run or a learner working in ``workshop`` at the same moment is
not disturbed, and does not disturb it (except for sharing the CPUs). It prints the machine's
load average before and after, because the figures mean little on a busy machine. This is
execution time only: learners read, think and type, and take many times longer
(docs/facilitator.md gives those estimates separately).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import nbformat
from nbclient import NotebookClient

REPO = Path(__file__).resolve().parent.parent
SOLUTIONS = REPO / "solutions"


@dataclass
class CellTime:
    index: int
    seconds: float
    first_line: str


@dataclass
class NotebookTime:
    name: str
    seconds: float
    cells: list[CellTime] = field(default_factory=list)
    error: str | None = None


def _cell_seconds(cell: nbformat.NotebookNode) -> float | None:
    """Execution time from the timestamps nbclient records (record_timing=True)."""
    timing = cell.get("metadata", {}).get("execution", {})
    start, end = timing.get("iopub.execute_input"), timing.get("shell.execute_reply")
    if not (start and end):
        return None
    from datetime import datetime

    def parse(stamp: str) -> datetime:
        return datetime.fromisoformat(stamp.replace("Z", "+00:00"))

    return (parse(end) - parse(start)).total_seconds()


def time_notebook(path: Path, timeout: int = 600, save: Path | None = None) -> NotebookTime:
    """Execute one notebook in a fresh ``python3`` kernel; never raises on a failing cell."""
    nb = nbformat.read(path, as_version=4)
    client = NotebookClient(nb, kernel_name="python3", timeout=timeout, record_timing=True,
                            resources={"metadata": {"path": str(path.parent)}})
    start = time.perf_counter()
    error = None
    try:
        client.execute()
    except Exception as exc:  # report it with the timings instead of losing them
        error = _failed_cell(nb) or \
            f"{type(exc).__name__}: {str(exc).strip().splitlines()[-1] if str(exc).strip() else ''}"
    total = time.perf_counter() - start
    if save is not None:  # the executed copy, outputs included: what a facilitator will see
        save.mkdir(parents=True, exist_ok=True)
        nbformat.write(nb, save / path.name)
    cells = []
    for i, cell in enumerate(nb.cells):
        if cell.cell_type != "code":
            continue
        seconds = _cell_seconds(cell)
        if seconds is not None:
            first = next((ln for ln in cell.source.splitlines() if ln.strip()), "")
            cells.append(CellTime(i, seconds, first[:70]))
    return NotebookTime(path.stem, total, cells, error)


def _failed_cell(nb: nbformat.NotebookNode) -> str | None:
    """'cell 12 (`%sql ALTER TABLE ...`): UndefinedTable: ...' for the cell that raised, if any."""
    for i, cell in enumerate(nb.cells):
        for out in cell.get("outputs", []):
            if out.get("output_type") == "error":
                first = next((ln for ln in cell.source.splitlines() if ln.strip()), "")
                return f"cell {i} (`{first[:70]}`): {out.get('ename')}: {out.get('evalue', '').strip()[:500]}"
    return None


def drop_learner_database() -> None:
    """Drop the private database the run used."""
    from zdlab import config, db

    db.drop_learner_database(config.learner())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("names", nargs="*", help="notebook name prefixes (default: all)")
    parser.add_argument("--top", type=int, default=3, help="slowest cells to show per notebook")
    parser.add_argument("--json", type=Path, help="also write the figures to this file")
    parser.add_argument("--learner", default="timing",
                        help="run in this learner's database (default: timing); '' for the shared one")
    parser.add_argument("--keep", action="store_true", help="keep the learner's database at the end")
    parser.add_argument("--save", type=Path, help="write the executed notebooks (with outputs) to this folder")
    args = parser.parse_args(argv)

    # The kernel inherits this environment: no telemetry, and strict checks as in the tests.
    os.environ["PLOOMBER_STATS_ENABLED"] = "false"
    os.environ.setdefault("ZDLAB_STRICT_CHECKS", "1")
    if args.learner:
        os.environ["ZDLAB_LEARNER"] = args.learner
    else:
        os.environ.pop("ZDLAB_LEARNER", None)

    paths = sorted(SOLUTIONS.glob("*.ipynb"))
    if args.names:
        paths = [p for p in paths if any(p.stem.startswith(n) for n in args.names)]
    if not paths:
        print("no notebook matches", args.names, file=sys.stderr)
        return 2

    load_before = os.getloadavg()
    print(f"{time.strftime('%Y-%m-%d %H:%M %Z')} on {platform.node()}: {os.cpu_count()} CPUs, "
          f"Python {platform.python_version()}, load average {load_before[0]:.2f} {load_before[1]:.2f} "
          f"{load_before[2]:.2f}")
    results = []
    for path in paths:
        result = time_notebook(path, save=args.save)
        results.append(result)
        status = "ok" if result.error is None else f"FAILED ({result.error})"
        print(f"\n{result.name:<24} {result.seconds:6.1f} s  {status}")
        for cell in sorted(result.cells, key=lambda c: -c.seconds)[:args.top]:
            print(f"    cell {cell.index:>3} {cell.seconds:6.1f} s  {cell.first_line}")
    load_after = os.getloadavg()
    total = sum(r.seconds for r in results)
    print(f"\ntotal {total:.1f} s; load average after {load_after[0]:.2f} {load_after[1]:.2f} {load_after[2]:.2f}")
    if args.learner and not args.keep:
        drop_learner_database()
    if args.json:
        args.json.write_text(json.dumps({
            "when": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "host": platform.node(), "cpus": os.cpu_count(),
            "load_before": load_before, "load_after": load_after,
            "notebooks": [asdict(r) for r in results]}, indent=2))
    return 0 if all(r.error is None for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
