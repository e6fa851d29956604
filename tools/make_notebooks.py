"""Write the learners' notebooks from the solution notebooks (the single source).

    python tools/make_notebooks.py           # (re)write notebooks/*.ipynb, normalise solutions/*.ipynb
    python tools/make_notebooks.py --check   # change nothing; exit 1 and list what is out of date

``solutions/NN_name.ipynb`` is the only file an author edits. ``notebooks/NN_name.ipynb`` is made
from it:

- in a code cell, the lines from ``### BEGIN SOLUTION`` to ``### END SOLUTION`` become
  ``# YOUR CODE HERE`` and ``<answer> = ...`` for each answer variable the block defines (the
  ``answers`` of the notebook's exercises, ``zdlab.checks.NOTEBOOKS``), same indentation. Nothing
  raises, so Run All shows no traceback, and ``check()`` reads ``...`` as "Not attempted yet". A
  block that defines none of its notebook's answers is an error: the learner would be left with
  nothing to fill in, or a check that reads an undefined name;
- cells tagged ``solution-only`` (checker self-tests on known-wrong answers, instructor notes)
  are dropped;
- outputs, execution counts and per-run metadata are cleared.

Solutions are always normalised too when writing (outputs stripped, same formatting): an author
who ran a solution notebook in Jupyter just runs ``make notebooks`` again, and ``--check`` (run
by the test suite) fails while a committed solution still carries outputs. We strip always rather
than behind a flag because a solution with outputs is never what should be committed.

Output is deterministic: nbformat's JSON (indent 1, sorted keys), a trailing newline, cell ids
kept (missing ids are derived from the cell's position), notebook metadata reduced to the kernel
spec and the language name. Regenerating gives identical bytes, so ``--check`` is a byte compare.
Files in notebooks/ with no solution are extra: ``--check`` lists them, writing removes them.
"""

from __future__ import annotations

import argparse
import ast
import copy
import importlib
import pkgutil
import sys
import textwrap
from collections.abc import Collection
from pathlib import Path

import nbformat

ROOT = Path(__file__).resolve().parent.parent
BEGIN = "### BEGIN SOLUTION"
END = "### END SOLUTION"
PLACEHOLDER = "# YOUR CODE HERE"
SOLUTION_ONLY_TAG = "solution-only"
TRANSIENT_CELL_METADATA = ("execution", "collapsed", "scrolled", "ExecuteTime")
KERNELSPEC = {"display_name": "Python 3 (ipykernel)", "language": "python", "name": "python3"}


class MarkerError(ValueError):
    """A solution block that is not closed, or markers in the wrong order."""


def notebook_answers(name: str) -> set[str]:
    """The answer variables the exercises of notebook ``name`` (``01_risks``) read."""
    import zdlab.checks
    import zdlab.exercises

    for module in pkgutil.iter_modules(zdlab.exercises.__path__):
        importlib.import_module(f"zdlab.exercises.{module.name}")  # each registers its notebook
    book = zdlab.checks.NOTEBOOKS.get(name)
    return {answer for exercise in (book.exercises.values() if book else ()) for answer in exercise.answers}


def _bound_names(block: list[str], where: str) -> list[str]:
    """The names a solution block binds at its top level (assignments, def, class), in order."""
    try:
        tree = ast.parse(textwrap.dedent("\n".join(block)))
    except SyntaxError as exc:
        raise MarkerError(f"{where}, solution block line {exc.lineno}: not valid Python ({exc.msg}).") from None
    names: list[str] = []
    for node in tree.body:
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
            targets = [node.name]
        elif isinstance(node, ast.Assign | ast.AnnAssign | ast.AugAssign):
            found = node.targets if isinstance(node, ast.Assign) else [node.target]
            targets = [n.id for t in found for n in ast.walk(t) if isinstance(n, ast.Name)]
        else:
            continue
        names += [n for n in targets if n not in names]
    return names


def _placeholder(block: list[str], indent: str, answers: Collection[str], where: str) -> list[str]:
    names = [n for n in _bound_names(block, where) if n in answers]
    if not names:
        raise MarkerError(f"{where}: the solution block defines none of this notebook's answer variables "
                          f"({', '.join(sorted(answers)) or 'it has no exercises'}); the learner's copy "
                          f"would have nothing to fill in.")
    return [indent + PLACEHOLDER] + [f"{indent}{name} = ..." for name in names]


def replace_solutions(source: str, where: str = "cell", answers: Collection[str] = ()) -> str:
    """``source`` with every solution block replaced by its placeholder.

    The placeholder sets each of ``answers`` that the block defines to ``...``."""
    out: list[str] = []
    block: list[str] = []
    inside = False
    indent = ""
    for number, line in enumerate(source.split("\n"), start=1):
        marker = line.strip()
        if marker == BEGIN:
            if inside:
                raise MarkerError(f"{where}, line {number}: {BEGIN} inside another solution block "
                                  f"(add the missing {END}).")
            inside = True
            indent = line[: len(line) - len(line.lstrip())]
            block = []
        elif marker == END:
            if not inside:
                raise MarkerError(f"{where}, line {number}: {END} without a {BEGIN} before it.")
            inside = False
            out += _placeholder(block, indent, answers, f"{where}, line {number}")
        elif inside:
            block.append(line)
        else:
            out.append(line)
    if inside:
        raise MarkerError(f"{where}: {BEGIN} is never closed; add a line {END} after the answer.")
    return "\n".join(out)


def _tags(cell: dict) -> list[str]:
    return list(cell.get("metadata", {}).get("tags", []))


def clean(nb: nbformat.NotebookNode) -> nbformat.NotebookNode:
    """A copy without outputs, execution counts or per-run metadata; every cell has an id."""
    nb = copy.deepcopy(nb)
    nb.nbformat, nb.nbformat_minor = 4, max(5, nb.get("nbformat_minor", 5))
    language = nb.metadata.get("language_info", {}).get("name", "python")
    nb.metadata = nbformat.NotebookNode(kernelspec=nbformat.NotebookNode(
        nb.metadata.get("kernelspec") or KERNELSPEC), language_info=nbformat.NotebookNode(name=language))
    seen: set[str] = set()
    for index, cell in enumerate(nb.cells):
        if not cell.get("id") or cell["id"] in seen:
            cell["id"] = f"cell-{index:03d}"  # stable, unlike nbformat's random ids
        seen.add(cell["id"])
        for key in TRANSIENT_CELL_METADATA:
            cell.metadata.pop(key, None)
        if cell.cell_type == "code":
            cell.outputs, cell.execution_count = [], None
    return nb


def exercise_version(nb: nbformat.NotebookNode, name: str = "notebook",
                     answers: Collection[str] | None = None) -> nbformat.NotebookNode:
    """The learner's copy of solution notebook ``nb``; ``name`` (``01_risks.ipynb``) is used in error
    messages and, when ``answers`` is not given, to find its exercises' answer variables."""
    nb = clean(nb)
    if answers is None:
        answers = notebook_answers(Path(name).stem)
    cells = []
    for index, cell in enumerate(nb.cells):
        if SOLUTION_ONLY_TAG in _tags(cell):
            continue
        if cell.cell_type == "code":
            cell.source = replace_solutions(cell.source, f"{name}, cell {index}", answers)
        elif BEGIN in cell.source or END in cell.source:
            raise MarkerError(f"{name}, cell {index}: solution markers only work in code cells.")
        cells.append(cell)
    nb.cells = cells
    return nb


def render(nb: nbformat.NotebookNode) -> str:
    """The exact text written to disk (what nbformat.write writes)."""
    text = nbformat.writes(nb)
    return text if text.endswith("\n") else text + "\n"


def expected_files(solutions: Path, notebooks: Path) -> dict[Path, str]:
    """Every file the generator owns and its exact contents."""
    files: dict[Path, str] = {}
    for src in sorted(solutions.glob("*.ipynb")):
        nb = nbformat.read(src, as_version=4)
        files[src] = render(clean(nb))
        files[notebooks / src.name] = render(exercise_version(nb, src.name))
    return files


def _extra(solutions: Path, notebooks: Path) -> list[Path]:
    names = {p.name for p in solutions.glob("*.ipynb")}
    return sorted(p for p in notebooks.glob("*.ipynb") if p.name not in names)


def problems(solutions: Path = ROOT / "solutions", notebooks: Path = ROOT / "notebooks") -> list[str]:
    """What ``--check`` reports: one line per file that differs, is missing or is extra."""
    found = []
    for path, text in expected_files(solutions, notebooks).items():
        if not path.exists():
            found.append(f"missing: {_show(path)}")
        elif path.read_text(encoding="utf-8") != text:
            what = "has outputs or is not normalised" if path.parent == solutions else "differs from its solution"
            found.append(f"{what}: {_show(path)}")
    found += [f"extra (no solutions/{p.name}): {_show(p)}" for p in _extra(solutions, notebooks)]
    return found


def write(solutions: Path = ROOT / "solutions", notebooks: Path = ROOT / "notebooks") -> list[str]:
    """Write every out-of-date file, remove extras; return one line per change."""
    notebooks.mkdir(parents=True, exist_ok=True)
    changed = []
    for path, text in expected_files(solutions, notebooks).items():
        if not path.exists() or path.read_text(encoding="utf-8") != text:
            path.write_text(text, encoding="utf-8")
            changed.append(f"wrote {_show(path)}")
    for path in _extra(solutions, notebooks):
        path.unlink()
        changed.append(f"removed {_show(path)} (no solutions/{path.name})")
    return changed


def _show(path: Path) -> str:
    try:
        return str(path.resolve().relative_to(ROOT))
    except ValueError:
        return str(path)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--check", action="store_true", help="change nothing; exit 1 if anything is out of date")
    parser.add_argument("--solutions", type=Path, default=ROOT / "solutions")
    parser.add_argument("--notebooks", type=Path, default=ROOT / "notebooks")
    args = parser.parse_args(argv)
    try:
        if args.check:
            found = problems(args.solutions, args.notebooks)
            for line in found:
                print(line)
            if found:
                print("Run `make notebooks` to regenerate.", file=sys.stderr)
            return 1 if found else 0
        for line in write(args.solutions, args.notebooks):
            print(line)
    except MarkerError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
