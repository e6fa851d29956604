"""Screenshot for the README: notebook 01's first latency plot, as JupyterLab shows it.

    .venv/bin/python tools/screenshot.py                        # writes docs/img/01_latency.png
    .venv/bin/python tools/screenshot.py --out /tmp/shot.png

Starts `make lab` on a scratch copy of the worked answers (tools/browser_lab.py), runs all of
01_risks.ipynb in headless Chromium (a minute or two), and saves the cell that plots the
one-statement backfill under traffic (`big.plot()`): its code, printed lines and the plot.
It works in a database of its own (ZDLAB_LEARNER=screenshot, dropped at the end by browser_lab), on the server
the kit uses (DATABASE_URL, or the embedded one, started if needed). Needs /usr/bin/chromium and
the playwright package.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import browser_lab

from zdlab import config, server

NOTEBOOK = "01_risks.ipynb"
PLOT_CELL = "big.plot()"  # the first latency plot of the notebook (Risk 2, one-statement backfill)
LEARNER = "screenshot"
RUN_TIMEOUT_S = 900  # about 90 s on an idle machine


def _database_url() -> str:
    if not config.external_url():
        server.start()
    return server.url()


def take(out: Path) -> None:
    """Run notebook 01 in the browser and save its first latency plot's cell to ``out``."""
    url = _database_url()
    with tempfile.TemporaryDirectory(prefix="zdlab-screenshot-") as tmp, \
            browser_lab.running_lab(Path(tmp), url, learner=LEARNER) as lab, \
            browser_lab.chromium_page(width=1500, height=1800) as page:
        browser_lab.open_notebook(page, lab, NOTEBOOK)
        # Give the notebook the page's whole width: close the file browser (the left sidebar).
        page.locator(".jp-SideBar.jp-mod-left .lm-TabBar-tab.lm-mod-current").click()
        outcome = browser_lab.run_all_cells(page, browser_lab.code_cell_count(lab.notebooks / NOTEBOOK),
                                            RUN_TIMEOUT_S)
        errors = browser_lab.error_outputs(page)
        if outcome != "done" or errors:
            raise RuntimeError(f"{NOTEBOOK} did not run cleanly ({outcome}):\n" + "\n---\n".join(errors))
        cell = browser_lab.code_cell(page, PLOT_CELL)
        cell.locator(".jp-RenderedImage img").wait_for(timeout=10_000)
        cell.scroll_into_view_if_needed()
        page.mouse.move(0, 0)  # no hover toolbar over the cell
        out.parent.mkdir(parents=True, exist_ok=True)
        cell.screenshot(path=str(out), animations="disabled")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=browser_lab.REPO / "docs" / "img" / "01_latency.png")
    args = parser.parse_args(argv)
    problem = browser_lab.missing_browser()
    if problem:
        print(f"screenshot: {problem}", file=sys.stderr)
        return 2
    take(args.out)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
