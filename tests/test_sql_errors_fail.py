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


def run_nbval(path: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PLOOMBER_STATS_ENABLED": "false"}
    # Run from the notebook's folder so that only --nbval-lax (not the repo's addopts) applies.
    return subprocess.run([sys.executable, "-m", "pytest", "--nbval-lax", "-p", "no:cacheprovider", "-q",
                           path.name], cwd=path.parent, env=env, capture_output=True, text=True,
                          timeout=TIMEOUT_S)


@pytest.fixture
def box(make_sandbox):
    return make_sandbox("sqlerr")


def test_failing_sql_cell_fails_the_suite(tmp_path, box):
    run = run_nbval(write_notebook(tmp_path / "bad.ipynb", box, short_errors_off=True, bad_cell=True))
    out = run.stdout + run.stderr
    assert run.returncode == 1, out
    assert "FAILED bad.ipynb::Cell 3" in out  # the fourth code cell, counted from 0
    assert "no_such_table" in out and "does not exist" in out
    assert "1 failed, 3 passed" in out


def test_control_same_notebook_without_the_bad_cell_passes(tmp_path, box):
    run = run_nbval(write_notebook(tmp_path / "good.ipynb", box, short_errors_off=True, bad_cell=False))
    assert run.returncode == 0, run.stdout + run.stderr
    assert "3 passed" in run.stdout


def test_without_short_errors_off_a_sql_error_passes_silently(tmp_path, box):
    # Documents why every notebook sets short_errors = False: without it, the broken cell "passes".
    run = run_nbval(write_notebook(tmp_path / "lenient.ipynb", box, short_errors_off=False, bad_cell=True))
    assert run.returncode == 0, run.stdout + run.stderr
    assert "4 passed" in run.stdout and "failed" not in run.stdout
