"""Which exercises a learner has passed: recorded by every ``check()`` that says correct.

- Local record: a JSON file per learner, ``<state dir>/progress/<learner>.json`` (``local.json``
  without ZDLAB_LEARNER). ``zdlab progress`` and ``zdlab.progress()`` (the last cell of each
  notebook) show it as a table; ``zdlab progress --reset`` clears it.
- The room: on a shared server (DATABASE_URL set) a pass is also written to the table
  ``zdlab_progress`` in the learner's own database (``zdlab_<learner>``), so an instructor with
  the server's URL sees every learner at once, without their notebooks: ``zdlab progress --room``.
  With an embedded server per learner (TLJH's default) there is no shared server; the room view
  reads the learners' files instead: ``zdlab progress --room --files '/home/*/.zdlab-home/.zdlab/progress/*.json'``.

Recording never breaks a check: any failure to write is swallowed (the verdict is what matters).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import glob
import importlib
import json
import os
import pkgutil
from dataclasses import dataclass
from pathlib import Path

from psycopg import sql

from . import config, db
from .errors import BadInput, ZdlabError

TABLE = "zdlab_progress"  # in the learner's database, schema public (not a zd_ sandbox: resets keep it)


def learner_key() -> str:
    return config.learner() or "local"


def path() -> Path:
    return config.progress_dir() / f"{learner_key()}.json"


def catalog() -> dict[str, list[str]]:
    """Every notebook's exercises, in order: {"00_setup": ["q1"], "01_risks": ["q1", ...], ...}."""
    import zdlab.exercises

    from .registry import NOTEBOOKS

    for module in pkgutil.iter_modules(zdlab.exercises.__path__):
        importlib.import_module(f"zdlab.exercises.{module.name}")
    return {name: list(nb.exercises) for name, nb in sorted(NOTEBOOKS.items())}


def load(file: Path | None = None) -> dict[str, str]:
    """{"01_risks q2": "2026-11-30T10:02:00+00:00", ...}: the exercises passed, and when first."""
    try:
        data = json.loads((file or path()).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    passed = data.get("passed") if isinstance(data, dict) else None
    return {str(k): str(v) for k, v in passed.items()} if isinstance(passed, dict) else {}


def record(notebook: str, exercise: str) -> None:
    """Note a passed exercise (first pass time kept). Never raises: a check must not fail on it."""
    key = f"{notebook} {exercise}"
    now = dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
    with contextlib.suppress(Exception):
        _record_file(key, now)
    if config.external_url():
        with contextlib.suppress(Exception):
            _record_server(key, now)


def _record_file(key: str, when: str) -> None:
    passed = load()
    if key in passed:
        return
    passed[key] = when
    target = path()
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_suffix(f".{os.getpid()}.tmp")  # written whole, then renamed: never half a file
    tmp.write_text(json.dumps({"learner": learner_key(), "passed": passed}, indent=1), encoding="utf-8")
    tmp.replace(target)


def _record_server(key: str, when: str) -> None:
    with db.connect(application_name=f"{config.APP_PREFIX}/progress") as conn:
        conn.execute(sql.SQL("CREATE TABLE IF NOT EXISTS public.{} (exercise text PRIMARY KEY, "
                             "passed_at timestamptz NOT NULL)").format(sql.Identifier(TABLE)))
        conn.execute(sql.SQL("INSERT INTO public.{} VALUES (%s, %s) ON CONFLICT DO NOTHING").format(
            sql.Identifier(TABLE)), [key, when])


def reset() -> str:
    """Forget this learner's passes (the file, and the shared server's rows). What was done."""
    target = path()
    existed = target.exists()
    target.unlink(missing_ok=True)
    said = f"cleared {target}" if existed else f"nothing recorded yet ({target} does not exist)"
    if config.external_url():
        with db.connect(application_name=f"{config.APP_PREFIX}/progress") as conn:
            if conn.execute("SELECT to_regclass(%s)", [f"public.{TABLE}"]).fetchone()[0]:
                conn.execute(sql.SQL("DELETE FROM public.{}").format(sql.Identifier(TABLE)))
                said += f", and this learner's rows on the shared server ({TABLE})"
    return said


def table(passed: dict[str, str] | None = None) -> str:
    """This learner's exercises as a table, passed or not."""
    passed = load() if passed is None else passed
    lines = [f"{'notebook':<24}{'exercise':<10}passed"]
    total = 0
    for notebook, exercises in catalog().items():
        for name in exercises:
            total += 1
            when = passed.get(f"{notebook} {name}")
            lines.append(f"{notebook:<24}{name:<10}{'✓ ' + when[:16].replace('T', ' ') if when else '·'}")
    done = sum(1 for k in passed if k.split(" ", 1)[0] in catalog())
    who = config.learner()
    lines.append(f"{done} of {total} exercises passed{' by ' + who if who else ''} (recorded in {path()}).")
    return "\n".join(lines)


@dataclass
class Learner:
    name: str
    passed: dict[str, str]


def room_from_server() -> list[Learner]:
    """Every learner database on the shared server (``zdlab_*``), with its passes."""
    if not config.external_url():
        raise ZdlabError("`zdlab progress --room` reads the shared server's records, and DATABASE_URL is not set "
                         "(each learner has an embedded server of their own). Set DATABASE_URL to the room's "
                         "server, or read the learners' files: `zdlab progress --room --files 'GLOB'` "
                         "(docs/facilitator.md).")
    base = config.external_url()
    with db.connect_url(base, application_name=f"{config.APP_PREFIX}/progress") as conn:
        names = [r[0] for r in conn.execute(
            "SELECT datname FROM pg_database WHERE datname LIKE 'zdlab\\_%' ORDER BY datname")]
    room = []
    for name in names:
        try:
            with db.connect_url(config.with_database(base, name),
                                application_name=f"{config.APP_PREFIX}/progress") as conn:
                if not conn.execute("SELECT to_regclass(%s)", [f"public.{TABLE}"]).fetchone()[0]:
                    passed = {}
                else:
                    passed = {r[0]: r[1].isoformat(timespec="seconds") for r in conn.execute(
                        sql.SQL("SELECT exercise, passed_at FROM public.{}").format(sql.Identifier(TABLE)))}
        except ZdlabError:
            continue  # a database we may not read (another tool's zdlab_*): not a learner's
        room.append(Learner(name.removeprefix("zdlab_"), passed))
    return room


def room_from_files(pattern: str) -> list[Learner]:
    files = sorted(glob.glob(os.path.expanduser(pattern), recursive=True))
    if not files:
        raise BadInput(f"no progress file matches {pattern!r}. Each learner's is <state dir>/progress/<name>.json "
                       f"(by default <kit>/.zdlab/progress/local.json); quote the pattern so the shell does "
                       f"not expand it.")
    room = []
    for file in files:
        try:
            data = json.loads(Path(file).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
        name = data.get("learner") if isinstance(data, dict) else None
        who = f"{name} ({file})" if name in (None, "local") else name
        room.append(Learner(str(who), load(Path(file))))
    return room


def room_table(room: list[Learner]) -> str:
    exercises = catalog()
    width = max([len(x.name) for x in room] + [7])
    short = {nb: nb.split("_", 1)[0] for nb in exercises}
    head = f"{'learner':<{width}}  " + "  ".join(f"{short[nb]:>5}" for nb in exercises) + "  total  last pass"
    lines = [head]
    total = sum(len(v) for v in exercises.values())
    for learner in room:
        cells = []
        for nb, names in exercises.items():
            got = sum(1 for n in names if f"{nb} {n}" in learner.passed)
            cells.append(f"{got}/{len(names)}".rjust(5))
        done = sum(1 for nb, names in exercises.items() for n in names if f"{nb} {n}" in learner.passed)
        last = max(learner.passed.values(), default="")[:16].replace("T", " ") or "-"
        lines.append(f"{learner.name:<{width}}  " + "  ".join(cells) + f"  {done:>2}/{total:<2}  {last}")
    per = [f"{nb} {n}: {sum(1 for x in room if f'{nb} {n}' in x.passed)}" for nb, names in exercises.items()
           for n in names]
    lines.append(f"{len(room)} learner(s). Passed, per exercise: " + ", ".join(per))
    return "\n".join(lines)


def show() -> None:
    """The notebooks' last cell: this learner's progress."""
    print(table())
