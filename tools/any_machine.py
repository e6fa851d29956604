"""Every verdict holds on any machine: the worked notebooks and the checkers, crowded and resized.

    .venv/bin/python tools/any_machine.py                   # crowded, small and large (make test-extremes)
    .venv/bin/python tools/any_machine.py --modes crowded   # one of them

`make test` is the quiet run. This adds the runs the course's claims must survive:

- **crowded**: CPU hogs on every core (started here, bounded in time, stopped at the end), while
  the solution notebooks 01 to 04 run with strict checks (each worked answer passes; the
  solution-only cells check known-wrong answers fail) and the checker tests (right and wrong
  answers, tests/test_exercises_nb0*.py) run;
- **small** and **large**: the notebooks with every seeded table at half and at twice its size
  (ZDLAB_DEMO_SCALE), so no verdict depends on the size the demos happen to use.

The verdicts rest on the run itself (zdlab.judge), never on a fixed number of milliseconds:
that is what this run checks. It ends with one line, ``N passed, N failed``.
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
NOTEBOOKS = ("01", "02", "03", "04")
CHECKER_TESTS = sorted(str(p) for p in (REPO / "tests").glob("test_exercises_nb0*.py"))
HOG_LIMIT_S = 45 * 60  # a hog outlives no run: it stops by itself after this long
MODES = {  # name -> (environment, CPU hogs)
    "crowded": ({}, True),
    "small": ({"ZDLAB_DEMO_SCALE": "0.5"}, False),
    "large": ({"ZDLAB_DEMO_SCALE": "2"}, False),
}


def _hog(deadline: float) -> None:
    x = 0
    while time.monotonic() < deadline:
        x = (x * 31 + 7) % 1_000_003  # pure CPU, no memory, no I/O


class Hogs:
    """One busy process per core for the duration of a ``with`` block (and never longer than the limit)."""

    def __init__(self, count: int | None = None) -> None:
        self.count = count or os.cpu_count() or 2
        self.procs: list[multiprocessing.Process] = []

    def __enter__(self) -> Hogs:
        deadline = time.monotonic() + HOG_LIMIT_S
        self.procs = [multiprocessing.Process(target=_hog, args=(deadline,), daemon=True) for _ in range(self.count)]
        for p in self.procs:
            p.start()
        return self

    def __exit__(self, *exc: object) -> None:
        for p in self.procs:
            p.terminate()
        for p in self.procs:
            p.join(5)


def run(cmd: list[str], env: dict[str, str], label: str) -> bool:
    print(f"\n=== {label}: {' '.join(cmd[1:])}", flush=True)
    started = time.monotonic()
    ok = subprocess.run(cmd, cwd=REPO, env={**os.environ, **env}).returncode == 0
    print(f"=== {label}: {'passed' if ok else 'FAILED'} in {time.monotonic() - started:.0f} s", flush=True)
    return ok


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--modes", default=",".join(MODES), help=f"comma-separated, of {', '.join(MODES)}")
    parser.add_argument("--notebooks", nargs="*", default=list(NOTEBOOKS), help="notebook prefixes (default: 01-04)")
    args = parser.parse_args(argv)
    modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    unknown = [m for m in modes if m not in MODES]
    if unknown:
        print(f"unknown mode(s) {unknown}; choose from {list(MODES)}", file=sys.stderr)
        return 2
    py = sys.executable
    results: list[bool] = []
    for mode in modes:
        env, hogs = MODES[mode]
        env = {**env, "ZDLAB_STRICT_CHECKS": "1", "PLOOMBER_STATS_ENABLED": "false"}
        notebooks = [py, str(REPO / "tools" / "time_notebooks.py"), *args.notebooks, "--learner", f"anymachine_{mode}"]
        checkers = [py, "-m", "pytest", "-q", "-p", "no:cacheprovider", *CHECKER_TESTS]
        if hogs:
            with Hogs() as h:
                print(f"{h.count} CPU hogs running (as many as cores)", flush=True)
                results.append(run(notebooks, env, f"{mode}: notebooks {' '.join(args.notebooks)}"))
                results.append(run(checkers, env, f"{mode}: checkers, right and wrong answers"))
        else:
            results.append(run(notebooks, env, f"{mode}: notebooks {' '.join(args.notebooks)}"))
    passed = sum(results)
    print(f"\nany-machine runs ({', '.join(modes)}): {passed} passed, {len(results) - passed} failed")
    return 0 if all(results) else 1


if __name__ == "__main__":
    sys.exit(main())
