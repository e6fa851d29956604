"""End to end in a real browser: `make lab`, headless Chromium, 00_setup.ipynb run all, its output.

Needs Debian's Chromium (/usr/bin/chromium) and the Python package playwright. Without them the
test is skipped, except in CI (CI set), where they are installed and their absence is a failure.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import NoReturn

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tools"))
import browser_lab  # noqa: E402

NOTEBOOK = "00_setup.ipynb"
RUN_TIMEOUT_S = 180  # the notebook itself runs in ~10 s; a loaded CI machine is far slower


@pytest.fixture
def browser_ready() -> None:
    problem = browser_lab.missing_browser()
    if problem is None:
        return
    if os.environ.get("CI", "").strip().lower() not in ("", "0", "false"):
        pytest.fail(f"CI installs Chromium and playwright for the browser test, but {problem}")
    pytest.skip(f"browser test: {problem}")


def test_setup_notebook_runs_in_the_browser(browser_ready, db_url, tmp_path):
    with browser_lab.running_lab(tmp_path, db_url) as lab, browser_lab.chromium_page() as page:
        shot = tmp_path / "failure.png"

        def fail(why: str) -> NoReturn:
            page.screenshot(path=str(shot), full_page=True)
            pytest.fail(f"{why}\nscreenshot: {shot}\nlab log: {lab.log}")

        try:
            browser_lab.open_notebook(page, lab, NOTEBOOK)
            outcome = browser_lab.run_all_cells(page, browser_lab.code_cell_count(lab.notebooks / NOTEBOOK),
                                                RUN_TIMEOUT_S)
        except TimeoutError as exc:
            fail(f"the notebook did not finish: {exc}")
        errors = browser_lab.error_outputs(page)
        if outcome != "done" or errors:
            fail(f"Run All Cells ended with {outcome!r}:\n" + "\n---\n".join(errors))

        # What the notebook shows when all went well: the checklist passed, the seed's rows are
        # there, and the exercise's check says correct.
        expected = {
            "doctor.ready()": ["[ok] database reachable", "[ok] %sql magic loads"],
            "SELECT 'users' AS table_name": ["users\t100000", "orders\t100000"],
            "ex.q1.check()": ["✓ Correct"],
        }
        missing = []
        for cell, texts in expected.items():
            shown = browser_lab.cell_output(page, cell)
            missing += [f"{text!r} in the output of {cell!r}: {shown!r}" for text in texts if text not in shown]
        if missing:
            fail("expected output not on the page:\n" + "\n".join(missing))
