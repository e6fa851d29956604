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

import json
import sys
import threading
from pathlib import Path

import psutil
import pytest

from zdlab import config, server

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


class ArgvWatch:
    """Every process's command line, read every few milliseconds while the notebooks run: the
    database password must be on none (pg_dump, pg_restore, pgbench, psql get it otherwise)."""

    def __init__(self, secret: str) -> None:
        self.secret, self.seen, self.scans = secret, [], 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(0.005):
            for proc in psutil.process_iter(["cmdline"]):
                line = " ".join(proc.info.get("cmdline") or [])
                if self.secret in line:
                    self.seen.append(config.redact(line).replace(self.secret, "<PASSWORD>"))
            self.scans += 1


@pytest.fixture(scope="module")
def argv_watch(db_url):
    secret = config.url_password(server.url())
    if not secret:
        pytest.skip("the server's URL carries no password to look for")
    watch = ArgvWatch(secret)
    watch._thread.start()
    yield watch
    watch._stop.set()
    watch._thread.join()


@pytest.mark.parametrize(("path", "run"), RUNS, ids=[f"{p.stem}-run{r}" for p, r in RUNS])
def test_notebook_passes(path: Path, run: int, learner_database, argv_watch, tmp_path):
    result = time_notebooks.time_notebook(path, timeout=600, save=tmp_path)
    assert result.error is None, f"{path.name}, run {run} of 2 (reverse order), failed: {result.error}"
    # What a saved notebook keeps: no output carries the password.
    assert argv_watch.secret not in (tmp_path / path.name).read_text(), f"{path.name}'s outputs hold the password"


def test_no_password_on_any_command_line_while_the_notebooks_ran(argv_watch):
    assert argv_watch.scans > 100, "the watch did not run"
    assert not argv_watch.seen, f"the password was on a command line: {argv_watch.seen[:3]}"


def test_a_failing_pg_dump_cell_keeps_no_password_in_its_saved_output(learner_database, argv_watch, tmp_path):
    """Notebook 01's backup cell as the learner has it, made to fail (it dumps a table that does not
    exist): the saved notebook keeps the traceback, and the traceback names the command and its URL,
    never the password."""
    import nbformat

    source = nbformat.read(REPO / "solutions" / "01_risks.ipynb", as_version=4)
    dump = next(c for c in source.cells if c.cell_type == "code" and '"pg_dump"' in c.source)
    assert ".customers\"" in dump.source, "the backup cell changed: point this test at its table again"
    setup = ("import subprocess, tempfile, time\nfrom pathlib import Path\nimport zdlab\nfrom zdlab import server\n"
             "sb = zdlab.sandbox('pgdump_leak')\nconn = sb.connect()")
    failing = dump.source.replace(".customers\"", ".no_such_table\"")
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(setup), nbformat.v4.new_code_cell(failing)])
    path = tmp_path / "pg_dump_fails.ipynb"
    nbformat.write(nb, path)
    result = time_notebooks.time_notebook(path, timeout=300, save=tmp_path / "saved")
    saved = (tmp_path / "saved" / path.name).read_text()
    outputs = json.dumps([c.get("outputs", []) for c in nbformat.reads(saved, as_version=4).cells])
    if "SKIPPED, the backup and restore drill" in outputs:
        pytest.skip("no pg_dump of this server's version is installed")
    assert result.error and "CalledProcessError" in result.error, result.error  # it did fail, as intended
    assert "--dbname" in outputs and "no_such_table" in outputs, "the traceback should name the command it ran"
    assert argv_watch.secret not in saved, "the failed pg_dump cell's saved output holds the password"
