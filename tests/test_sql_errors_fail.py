"""The notebook test harness must fail on a failing SQL cell.

nbval fails a cell only when the kernel reports an error. JupySQL, by default, prints a SQL error
and reports success, so a broken `%sql` cell would pass the suite. `%config SqlMagic.short_errors =
False` makes it raise. These tests run nbval, as `make test` does, on tiny notebooks and prove both.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest
from nbformat.v4 import new_code_cell, new_notebook

TIMEOUT_S = 240  # kernel start + a few cells; far above the few seconds it takes


def write_notebook(path: Path, box, *, short_errors_off: bool, bad_cell: bool) -> Path:
    setup = ["%load_ext sql"]
    if short_errors_off:
        setup.append("%config SqlMagic.short_errors = False")
    setup += ["%config SqlMagic.displaycon = False", "%config SqlMagic.autopandas = False",
              "engine = sb.engine()", "%sql engine"]
    cells = [
        f"from zdlab.sandbox import Sandbox\nsb = Sandbox({box.name!r}, {box.url!r})",
        "\n".join(setup),
        "%sql SELECT 1 AS ok",
    ]
    if bad_cell:
        cells.append("%sql SELECT * FROM no_such_table")
    nb = new_notebook(cells=[new_code_cell(src) for src in cells])
    nb.metadata.kernelspec = {"display_name": "Python 3 (ipykernel)", "language": "python", "name": "python3"}
    nbformat.write(nb, path)
    return path


def run_nbval(folder: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PLOOMBER_STATS_ENABLED": "false"}
    # Run from the notebooks' folder so that only --nbval-lax (not the repo's addopts) applies.
    # One nbval run over all three notebooks: each still gets a kernel of its own.
    return subprocess.run([sys.executable, "-m", "pytest", "--nbval-lax", "-p", "no:cacheprovider", "-rA",
                           "-q", "."], cwd=folder, env=env, capture_output=True, text=True, timeout=TIMEOUT_S)


@pytest.fixture(scope="module")
def nbval_run(tmp_path_factory, db_url):
    """bad: short_errors off + a failing cell; good: the control; lenient: short_errors left on."""
    from zdlab.sandbox import Sandbox

    box = Sandbox(f"test_sqlerr_{os.getpid()}", db_url).reset()
    folder = tmp_path_factory.mktemp("nbval")
    write_notebook(folder / "bad.ipynb", box, short_errors_off=True, bad_cell=True)
    write_notebook(folder / "good.ipynb", box, short_errors_off=True, bad_cell=False)
    write_notebook(folder / "lenient.ipynb", box, short_errors_off=False, bad_cell=True)
    try:
        run = run_nbval(folder)
    finally:
        box.drop()
    return run, run.stdout + run.stderr


def outcomes(out: str, notebook: str) -> list[str]:
    """'PASSED'/'FAILED' per cell of one notebook, from pytest's -rA summary."""
    return [line.split()[0] for line in out.splitlines()
            if line.startswith(("PASSED", "FAILED")) and f" {notebook}::" in f" {line.split(maxsplit=1)[1]}"]


def test_failing_sql_cell_fails_the_suite(nbval_run):
    run, out = nbval_run
    assert run.returncode == 1, out
    assert "FAILED bad.ipynb::Cell 3" in out  # the fourth code cell, counted from 0
    assert "no_such_table" in out and "does not exist" in out
    assert outcomes(out, "bad.ipynb") == ["PASSED"] * 3 + ["FAILED"]


def test_control_same_notebook_without_the_bad_cell_passes(nbval_run):
    run, out = nbval_run
    assert outcomes(out, "good.ipynb") == ["PASSED"] * 3, out


def test_without_short_errors_off_a_sql_error_passes_silently(nbval_run):
    # Documents why every notebook sets short_errors = False: without it, the broken cell "passes".
    run, out = nbval_run
    assert outcomes(out, "lenient.ipynb") == ["PASSED"] * 4, out
