"""`zdlab lint PATH`: squawk over migration files, each finding told in the kit's words.

squawk (PyPI ``squawk-cli``, pinned in requirements.txt) parses the files and reports its rules;
for each rule the kit knows (ADVICE) it adds the table lock the statement takes, the safe recipe
(both from docs/cheatsheet.md) and the notebook section that measures it. A rule the kit does not
know is printed with squawk's own words only. Where squawk is silent nothing is added: a linter
reads text, so what only a run shows (the lock queue behind a long transaction, prepared
``SELECT *`` failing after an instant ADD COLUMN, old code during a rolling deploy) is
``zdlab measure``'s job, and the report says so.

Two pieces of squawk's advice the kit measured to be wrong are reported but not counted as
findings (OVERRULED): ``prefer-robust-stmts`` asking for ``CREATE INDEX CONCURRENTLY IF NOT
EXISTS``, and the timeout rules on a concurrent index build (notebook 02's squawk checklist).
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

from .errors import BadInput, ZdlabError

PG_VERSION = "18"  # the embedded server's; squawk's advice depends on it (e.g. NOT NULL ... NOT VALID)
NB01, NB02, NB03, NB04 = ("notebooks/01_risks.ipynb", "notebooks/02_preventive_actions.ipynb",
                          "notebooks/03_not_null_column.ipynb", "notebooks/04_capstone.ipynb")


@dataclass(frozen=True)
class Advice:
    lock: str
    recipe: str
    notebook: str | None  # None: no notebook cell measures it (the cheat sheet cites the facts sheet)
    section: str | None


_LOCK_TIMEOUT = Advice(
    "any DDL's lock request waits behind every open transaction on the table, and every query queues behind it",
    "SET lock_timeout = '100ms' (a few seconds at most) before the DDL, and retry with backoff",
    NB01, "Exercise 3 · lock_timeout, retry and backoff")
_ADD_NOT_NULL_COLUMN = Advice(
    "AccessExclusiveLock, for a moment (a constant or now() default needs no rewrite on PostgreSQL 11+)",
    "ADD COLUMN ... NOT NULL DEFAULT <constant>, and keep that database-side DEFAULT while any old code "
    "inserts without the column (a rolling deploy)",
    NB03, "3. The rolling deploy: keep a database-side DEFAULT")
_UNIQUE = Advice(
    "AccessExclusiveLock (with ShareLock) for the whole index build: reads wait too",
    "CREATE UNIQUE INDEX CONCURRENTLY, then ALTER TABLE ... ADD CONSTRAINT ... UNIQUE USING INDEX "
    "(AccessExclusiveLock, a moment)",
    NB02, "Exercise 3: a unique constraint on `users(email)`, without blocking writes")
_DROP = Advice(
    "AccessExclusiveLock, instant, but it breaks old code that still reads it; CASCADE silently drops "
    "foreign keys",
    "stop reading it first, confirm nothing reads it, keep a way back (a verified backup)",
    NB02, "5. Drop only when confirmed")

# squawk rule -> the kit's words. Rule names as squawk 2.x reports them in rule_name.
ADVICE: dict[str, Advice] = {
    "require-concurrent-index-creation": Advice(
        "ShareLock: writes wait for the whole build",
        "CREATE INDEX CONCURRENTLY (ShareUpdateExclusiveLock), outside a transaction; if it fails, drop the "
        "INVALID index (pg_index.indisvalid = false) and build it again",
        NB02, "4. Build indexes concurrently"),
    "ban-concurrent-index-creation-in-transaction": Advice(
        "none: PostgreSQL refuses CREATE INDEX CONCURRENTLY inside a transaction block",
        "run the concurrent build on its own, outside BEGIN ... COMMIT (and outside a migration tool's "
        "transaction)",
        NB02, "It cannot run in a transaction"),
    "disallowed-unique-constraint": _UNIQUE,
    "adding-serial-primary-key-field": _UNIQUE,
    "renaming-column": Advice(
        "AccessExclusiveLock, instant, but old code still uses the old name",
        "expand/contract: add the new column, dual-write, backfill, switch reads, then drop the old one",
        NB02, "3. Step by step, each step reversible (expand/contract)"),
    "ban-drop-column": _DROP,
    "ban-drop-table": _DROP,
    "changing-column-type": Advice(
        "AccessExclusiveLock for the whole rewrite and index rebuilds (unless binary-coercible, e.g. "
        "varchar(n) to text)",
        "a new column + dual-write trigger + batched backfill + switch reads + drop the old one "
        "(expand/contract)",
        NB04, "3. The naive migration: `ALTER COLUMN ... TYPE bigint`"),
    "adding-field-with-default": Advice(
        "AccessExclusiveLock for the whole rewrite (a new relfilenode) when the default is volatile "
        "(clock_timestamp(), gen_random_uuid(), random())",
        "add it with a constant default (or nullable), backfill in batches, then ALTER COLUMN ... SET DEFAULT "
        "<volatile> for new rows only",
        NB03, "1. Adding a NOT NULL column"),
    "adding-not-nullable-field": Advice(
        "AccessExclusiveLock for a full scan of the table",
        "ADD CONSTRAINT k CHECK (c IS NOT NULL) NOT VALID, backfill in batches, VALIDATE CONSTRAINT k, "
        "SET NOT NULL (no scan), DROP CONSTRAINT k; on PostgreSQL 18: ADD CONSTRAINT k NOT NULL c NOT VALID, "
        "then VALIDATE",
        NB03, "2. Making an existing column NOT NULL"),
    "adding-required-field": _ADD_NOT_NULL_COLUMN,
    "constraint-missing-not-valid": Advice(
        "a CHECK validated at once: AccessExclusiveLock for a full scan; a FOREIGN KEY: ShareRowExclusiveLock "
        "on both tables for the scan",
        "ADD CONSTRAINT ... NOT VALID (a moment), then VALIDATE CONSTRAINT (ShareUpdateExclusiveLock); NOT VALID "
        "still checks every row an UPDATE writes, so backfill first",
        NB03, "A caveat on `NOT VALID`: it still checks every row you write"),
    "adding-foreign-key-constraint": Advice(
        "ShareRowExclusiveLock on both tables, for the scan",
        "ADD CONSTRAINT ... FOREIGN KEY ... NOT VALID, then VALIDATE CONSTRAINT (ShareUpdateExclusiveLock on "
        "the referencing table)",
        None, None),
    "ban-truncate-cascade": Advice(
        "AccessExclusiveLock; CASCADE empties every table that references it",
        "delete in batches, or truncate the tables by name after confirming what references them",
        None, None),
    "require-timeout-settings": _LOCK_TIMEOUT,
    "require-lock-timeout": _LOCK_TIMEOUT,
}

OVERRULED = {  # rule -> why the kit does not count it (measured in notebook 02's squawk checklist)
    "prefer-robust-stmts": ("its IF NOT EXISTS skips an INVALID index a failed concurrent build left behind: "
                            "check pg_index.indisvalid instead",
                            NB02, "A failed concurrent build leaves an INVALID index"),
    "concurrent-timeouts": ("a lock_timeout (or statement_timeout) on a concurrent index build makes it fail "
                            "when it waits for a long transaction (a report, pg_dump), leaving an INVALID index",
                            NB02, "Checklist: lint the migrations with squawk"),
}
TIMEOUT_RULES = {"require-timeout-settings", "require-lock-timeout", "require-statement-timeout"}

MEASURE_HINT = ("A linter reads text: the lock queue behind a long transaction, prepared SELECT * failing "
                "after an instant ADD COLUMN, and old code during a rolling deploy only show in a run: "
                "`zdlab measure FILE` (docs/measure.md).")


@dataclass
class Finding:
    file: str
    line: int
    rule: str
    message: str  # squawk's
    help: str | None  # squawk's
    lock: str | None = None
    recipe: str | None = None
    notebook: str | None = None
    section: str | None = None
    overruled: str | None = None  # why the kit does not count it


def squawk_path() -> Path:
    beside = Path(sys.executable).with_name("squawk")  # the venv's, from requirements.txt
    found = beside if beside.exists() else (shutil.which("squawk") and Path(shutil.which("squawk")))
    if not found:
        raise ZdlabError("squawk is not installed (PyPI package squawk-cli, pinned in requirements.txt). "
                         "Run `make lab` (it installs requirements.txt into .venv), or `pip install squawk-cli`.")
    return found


def migration_files(path: str) -> list[Path]:
    target = Path(path)
    if not target.exists():
        raise BadInput(f"{path}: no such file or folder. Give a .sql migration file, or a folder of them.")
    if target.is_dir():
        files = sorted(target.rglob("*.sql"))
        if not files:
            raise BadInput(f"{path} is a folder with no .sql file in it. Give a .sql migration file, or a "
                           f"folder of them.")
        return files
    return [target]


def _concurrent_index_lines(path: Path) -> set[int]:
    """Lines (1-based) on which a CREATE/REINDEX ... CONCURRENTLY statement starts or runs."""
    from . import statements

    text = path.read_text(encoding="utf-8", errors="replace")
    lines: set[int] = set()
    offset = 0
    for stmt in statements.split(text):
        start = text.find(stmt, offset)
        if start < 0:
            continue
        offset = start + len(stmt)
        words = statements.short_sql(stmt, 200).upper()
        if "CONCURRENTLY" in words and words.startswith(("CREATE", "REINDEX")):
            first = text.count("\n", 0, start) + 1
            lines.update(range(first, first + stmt.count("\n") + 1))
    return lines


def run_squawk(files: list[Path], pg_version: str = PG_VERSION, exclude: list[str] | None = None) -> list[dict]:
    cmd = [str(squawk_path()), "--reporter", "json", "--pg-version", pg_version]
    if exclude:
        cmd += ["--exclude", ",".join(exclude)]
    result = subprocess.run([*cmd, *map(str, files)], capture_output=True, text=True, timeout=120)
    try:
        violations = json.loads(result.stdout or "[]")
    except json.JSONDecodeError:
        raise ZdlabError(f"squawk did not report JSON (exit {result.returncode}): "
                         f"{(result.stderr or result.stdout).strip()[:300]}. Run it by hand: "
                         f"`{' '.join(cmd)} FILE`.") from None
    if result.returncode not in (0, 1) or not isinstance(violations, list):
        raise ZdlabError(f"squawk failed (exit {result.returncode}): {result.stderr.strip()[:300]}.")
    return violations


def lint(path: str, pg_version: str = PG_VERSION, exclude: list[str] | None = None) -> list[Finding]:
    files = migration_files(path)
    concurrent = {str(f): _concurrent_index_lines(f) for f in files}
    findings = []
    for v in run_squawk(files, pg_version, exclude):
        rule = v.get("rule_name", "?")
        found = Finding(file=v.get("file", ""), line=int(v.get("line", 0)) + 1, rule=rule,
                        message=v.get("message", ""), help=v.get("help"))
        advice = ADVICE.get(rule)
        if advice:
            found.lock, found.recipe, found.notebook, found.section = (advice.lock, advice.recipe,
                                                                       advice.notebook, advice.section)
        on_concurrent = found.line in concurrent.get(found.file, set())
        why = ("prefer-robust-stmts" if rule == "prefer-robust-stmts"
               else "concurrent-timeouts" if rule in TIMEOUT_RULES else None)
        if why and on_concurrent:
            found.overruled, found.notebook, found.section = OVERRULED[why]
            found.lock = found.recipe = None
        findings.append(found)
    return findings


def counted(findings: list[Finding]) -> list[Finding]:
    return [f for f in findings if not f.overruled]


def render(findings: list[Finding], path: str) -> str:
    out = []
    for f in findings:
        head = f"{f.file}:{f.line}: {f.rule}" + ("  (not counted)" if f.overruled else "")
        out.append(head)
        out.append(f"    squawk: {f.message}" + (f" {f.help}" if f.help else ""))
        if f.overruled:
            out.append(f"    the kit: {f.overruled}")
        else:
            if f.lock:
                out.append(f"    lock:   {f.lock}")
            if f.recipe:
                out.append(f"    safe:   {f.recipe}")
        if f.notebook:
            out.append(f"    see:    {f.notebook}, section \"{f.section}\"")
        elif not f.overruled and f.lock:
            out.append("    see:    docs/cheatsheet.md (no notebook cell measures it yet)")
        elif not f.overruled:
            out.append("    see:    squawk's rule documentation (the kit has no measurement of this rule)")
    n = len(counted(findings))
    out.append(f"{n} finding(s) in {path}." if n else f"squawk found nothing to flag in {path}.")
    out.append(MEASURE_HINT)
    return "\n".join(out)


def to_json(findings: list[Finding], path: str) -> str:
    return json.dumps({"path": path, "findings": len(counted(findings)), "pg_version": PG_VERSION,
                       "violations": [asdict(f) for f in findings],
                       "not_seen_by_a_linter": MEASURE_HINT}, indent=2)


def squawk_rules(sql: str, name: str = "migration.sql", exclude: Sequence[str] = ("prefer-robust-stmts",),
                 pg_version: str = PG_VERSION) -> list[str]:
    """The squawk rules one migration's SQL text trips, sorted (squawk reads files: it is written
    to a temporary ``name``). ``prefer-robust-stmts`` is left out by default (OVERRULED above)."""
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp, name)
        path.write_text(sql.strip() + ";\n", encoding="utf-8")
        return sorted({v["rule_name"] for v in run_squawk([path], pg_version, list(exclude))})
