"""Every worked-answer notebook passes twice in a row, and the notebooks pass in reverse order.

A learner reruns a notebook, opens 04 before 00, or comes back after a break: each notebook
resets its own sandbox at the top and must not rely on another one having run. So the solution
notebooks run here newest first (04 before 03 ... before 00), each twice in a row, in a fresh
database of their own (ZDLAB_LEARNER=order): 04 runs before 00_setup has ever run there.

This is also the suite's run of the worked answers (solutions/ is not collected by nbval):
ZDLAB_STRICT_CHECKS=1 (conftest.py) makes every `check()` of a wrong answer raise, so a
solution that stopped being right fails here. The learners' copies in notebooks/ run under
nbval, in the usual order.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tools"))

import time_notebooks  # noqa: E402

LEARNER = "order"
NOTEBOOKS = sorted((REPO / "solutions").glob("*.ipynb"), reverse=True)
RUNS = [(path, run) for path in NOTEBOOKS for run in (1, 2)]


@pytest.fixture(scope="module")
def learner_database(db_url):
    """A database nobody else uses, so the first notebook finds nothing another one made."""
    mp = pytest.MonkeyPatch()
    mp.setenv("ZDLAB_LEARNER", LEARNER)  # nbclient's kernels inherit this process's environment
    time_notebooks.drop_learner_database()
    try:
        yield
    finally:
        time_notebooks.drop_learner_database()
        mp.undo()


@pytest.mark.parametrize(("path", "run"), RUNS, ids=[f"{p.stem}-run{r}" for p, r in RUNS])
def test_notebook_passes(path: Path, run: int, learner_database):
    result = time_notebooks.time_notebook(path, timeout=600)
    assert result.error is None, f"{path.name}, run {run} of 2 (reverse order), failed: {result.error}"
