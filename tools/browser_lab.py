"""Start `make lab` on a scratch copy of the notebooks and drive it with headless Chromium.

Shared by tests/test_browser.py and tools/screenshot.py. The lab is started the way a learner
starts it (`make lab`), with:

- ZDLAB_HOME set to a scratch folder holding a copy of ``solutions/`` as its ``notebooks/``: the
  browser runs the worked answers, and whatever JupyterLab saves (outputs, checkpoints,
  workspaces, settings) lands there, never in the repository;
- DATABASE_URL set to the server already running (the embedded one, or the user's own), so
  `make lab` starts no second server for that scratch home, as on the Docker/JupyterHub path;
- ZDLAB_LEARNER (default ``browser``): the notebooks work in a database of their own;
- JUPYTER_TOKEN: a token we know. `make lab` cannot be given a port, so JupyterLab keeps its
  default (8888, or the next free one): the real port is read from the server's runtime file.

Chromium is Debian's (/usr/bin/chromium), driven by the `playwright` package: Playwright's own
browser download does not work without internet access.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import shutil
import signal
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from zdlab import db

if TYPE_CHECKING:  # playwright is optional: the test skips (or fails in CI) without it
    from playwright.sync_api import Locator, Page

REPO = Path(__file__).resolve().parent.parent
CHROMIUM = Path("/usr/bin/chromium")
# Without the networking switches Chromium keeps calling Google services, which on a closed
# network means a stream of refused connections; --no-sandbox because CI runs as root.
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]

# JupyterLab user settings for a scripted session: every cell in the DOM (the default windowing
# would leave cells out of view unrendered, and their prompts unreadable), and no news or update
# toasts over the notebook.
LAB_SETTINGS = {
    "@jupyterlab/notebook-extension/tracker.jupyterlab-settings": {"windowingMode": "none"},
    "@jupyterlab/apputils-extension/notification.jupyterlab-settings": {
        "fetchNews": "false", "checkForUpdates": False, "doNotDisturbMode": True},
}

ERROR_MIME = "application/vnd.jupyter.stderr"  # JupyterLab renders errors and stderr with it


def missing_browser() -> str | None:
    """Why the browser tools cannot run here, or None when Chromium and playwright are installed."""
    if not CHROMIUM.exists():
        return f"{CHROMIUM} is missing (Debian: apt-get install chromium)"
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        return "the Python package playwright is missing (pip install playwright)"
    return None


def wait_for(condition: Callable[[], Any], timeout_s: float, what: str, interval_s: float = 0.2) -> Any:
    """Poll ``condition`` until it returns something truthy, which is returned; TimeoutError after
    ``timeout_s`` seconds, naming ``what`` was awaited."""
    deadline = time.monotonic() + timeout_s
    while True:
        result = condition()
        if result:
            return result
        if time.monotonic() >= deadline:
            raise TimeoutError(f"waited {timeout_s:.0f} s for {what}")
        time.sleep(interval_s)


@dataclass
class Lab:
    """A running `make lab`: where it listens, its token, its notebook folder and its log."""

    base_url: str
    token: str
    notebooks: Path
    log: Path

    def tree_url(self, notebook: str) -> str:
        return f"{self.base_url}/lab/tree/{notebook}?token={self.token}"

    def api(self, path: str, method: str = "GET") -> tuple[int, bytes]:
        request = urllib.request.Request(f"{self.base_url}{path}", method=method,
                                         headers={"Authorization": f"token {self.token}"})
        try:
            with urllib.request.urlopen(request, timeout=10) as resp:
                return resp.status, resp.read()
        except urllib.error.HTTPError as exc:
            return exc.code, b""


def _scratch_kit(workdir: Path) -> tuple[Path, dict[str, str]]:
    """The scratch ZDLAB_HOME (solutions as notebooks) and the Jupyter folders, all in workdir."""
    home = workdir / "kit"
    shutil.copytree(REPO / "solutions", home / "notebooks", ignore=shutil.ignore_patterns(".ipynb_checkpoints"))
    # check()'s solution() and some hints read the worked answers from ZDLAB_HOME/solutions.
    shutil.copytree(REPO / "solutions", home / "solutions", ignore=shutil.ignore_patterns(".ipynb_checkpoints"))
    settings = workdir / "lab-settings"
    for name, values in LAB_SETTINGS.items():
        path = settings / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(values), encoding="utf-8")
    dirs = {
        "HOME": workdir / "home",  # ~/.jupyter, ~/.ipython, matplotlib's cache
        "JUPYTER_RUNTIME_DIR": workdir / "runtime",
        "JUPYTERLAB_SETTINGS_DIR": settings,
        "JUPYTERLAB_WORKSPACES_DIR": workdir / "workspaces",
    }
    for path in dirs.values():
        path.mkdir(parents=True, exist_ok=True)
    return home, {key: str(path) for key, path in dirs.items()}


def _server_info(runtime: Path) -> dict | None:
    """The running server's jpserver-<pid>.json (port, root_dir...), once it is written."""
    for path in runtime.glob("jpserver-*.json"):
        try:
            return json.loads(path.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError):  # still being written
            return None
    return None


@contextmanager
def running_lab(workdir: Path, database_url: str, *, learner: str = "browser",
                timeout_s: float = 180.0) -> Iterator[Lab]:
    """Run `make lab` on a scratch copy of solutions/ in ``workdir``; stop it, kernels included,
    on exit. ``database_url`` is the server the notebooks use (already running)."""
    home, dirs = _scratch_kit(workdir)
    token = secrets.token_hex(16)
    env = {**os.environ, **dirs, "ZDLAB_HOME": str(home), "DATABASE_URL": database_url,
           "ZDLAB_LEARNER": learner, "ZDLAB_STRICT_CHECKS": "1", "JUPYTER_TOKEN": token}
    for name in ("MAKEFLAGS", "MAKELEVEL", "MFLAGS", "JUPYTER_CONFIG_DIR", "JUPYTER_PORT"):
        env.pop(name, None)  # a parent make's jobserver, or a user's Jupyter setup, must not leak in
    log = workdir / "lab.log"
    with open(log, "w") as out:
        proc = subprocess.Popen(["make", "lab"], cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True)
    lab = None
    try:
        def started() -> dict | None:
            if proc.poll() is not None:
                raise RuntimeError(f"`make lab` exited with {proc.returncode}:\n{log.read_text()}")
            return _server_info(Path(dirs["JUPYTER_RUNTIME_DIR"]))

        try:
            info = wait_for(started, timeout_s, "`make lab` to start JupyterLab")
        except TimeoutError as exc:
            raise TimeoutError(f"{exc}; its log:\n{log.read_text()}") from None
        lab = Lab(f"http://127.0.0.1:{info['port']}", token, Path(info["root_dir"]), log)
        if lab.notebooks.resolve() != (home / "notebooks").resolve():
            raise RuntimeError(f"JupyterLab serves {lab.notebooks}, not the scratch copy {home / 'notebooks'}")
        wait_for(lambda: lab.api("/api/status")[0] == 200, 30, "JupyterLab to answer")
        yield lab
    finally:
        if lab is not None:
            _shutdown_kernels(lab)
        _stop(proc)
        db.drop_learner_database(learner, database_url)  # the lab's own database goes with it


def _shutdown_kernels(lab: Lab) -> None:
    # Kernels run in sessions of their own: ending the lab's process group would not end them.
    try:
        status, body = lab.api("/api/kernels")
        for kernel in json.loads(body) if status == 200 else []:
            lab.api(f"/api/kernels/{kernel['id']}", method="DELETE")
    except (OSError, ValueError):
        pass  # the server is already gone; it ended its kernels itself


def _stop(proc: subprocess.Popen) -> None:
    try:
        os.killpg(proc.pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)


# -- the browser ------------------------------------------------------------------------------


@contextmanager
def chromium_page(width: int = 1400, height: int = 1000) -> Iterator[Page]:
    """A page in headless Debian Chromium, closed (with the browser) on exit."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS)
        try:
            yield browser.new_page(viewport={"width": width, "height": height})
        finally:
            browser.close()


# The notebook panel in view; its toolbar's kernel indicator says "idle" when nothing runs.
PANEL = ".jp-NotebookPanel:not(.lm-mod-hidden)"
KERNEL_IDLE = f"{PANEL} .jp-Notebook-ExecutionIndicator[data-status='idle']"

# Done: every code cell shows an execution count ("[12]:", not "[ ]:" or "[*]:") and the kernel
# is idle; or stopped early: an error output is on the page (Run All stops at the failed cell), or
# a dialog waits for an answer.
_RUN_FINISHED = """([panel, expected, errorMime]) => {
    const root = document.querySelector(panel);
    if (!root) return false;
    const errors = [...root.querySelectorAll(`.jp-OutputArea-output[data-mime-type="${errorMime}"]`)]
        .filter(e => /Traceback|Error/.test(e.textContent));
    if (errors.length) return "error";
    if (document.querySelector(".jp-Dialog")) return "dialog";  // nobody is there to answer it
    const prompts = [...root.querySelectorAll(".jp-CodeCell .jp-InputArea-prompt")]
        .map(p => p.textContent.trim());
    const idle = root.querySelector(".jp-Notebook-ExecutionIndicator[data-status='idle']");
    return prompts.length === expected && prompts.every(p => /^\\[\\d+\\]:$/.test(p)) && idle ? "done" : false;
}"""


@contextmanager
def _timeouts_as_builtin(what: str) -> Iterator[None]:
    # Playwright's TimeoutError is not the built-in one; callers need not import playwright.
    from playwright.sync_api import TimeoutError as PlaywrightTimeout

    try:
        yield
    except PlaywrightTimeout as exc:
        raise TimeoutError(f"{what}: {exc.message.splitlines()[0]}") from None


def _kernel_connected(lab: Lab, notebook: str) -> bool:
    """The server's view: the notebook's kernel is idle and the page's websocket is connected to it."""
    status, body = lab.api("/api/sessions")
    if status != 200:
        return False
    for session in json.loads(body):
        kernel = session.get("kernel") or {}
        if (session.get("path") == notebook and kernel.get("execution_state") == "idle"
                and kernel.get("connections", 0) >= 1):
            return True
    return False


def open_notebook(page: Page, lab: Lab, notebook: str, timeout_s: float = 120.0) -> None:
    """Open ``notebook`` in JupyterLab and wait until its kernel is started, connected and idle."""
    with _timeouts_as_builtin(f"opening {notebook}"):
        page.goto(lab.tree_url(notebook), timeout=timeout_s * 1000)
        page.locator(f"{PANEL} .jp-Notebook .jp-Cell").first.wait_for(timeout=timeout_s * 1000)
    # The page's indicator can say idle before the kernel is connected, and Run All at that moment
    # opened a "Select Kernel" dialog in a run: ask the server too.
    wait_for(lambda: _kernel_connected(lab, notebook), timeout_s, f"the kernel of {notebook}")
    with _timeouts_as_builtin(f"the kernel of {notebook}"):
        page.locator(KERNEL_IDLE).wait_for(state="attached", timeout=timeout_s * 1000)


def run_all_cells(page: Page, code_cells: int, timeout_s: float) -> str:
    """Run → Run All Cells, then wait until all ``code_cells`` have run ("done") or an error
    output ("error") or a dialog ("dialog") appeared; TimeoutError after ``timeout_s`` seconds."""
    with _timeouts_as_builtin("Run All Cells"):
        page.locator(".lm-MenuBar-itemLabel", has_text=re.compile(r"^Run$")).click()
        page.locator(".lm-Menu-item:not(.lm-mod-disabled) .lm-Menu-itemLabel",
                     has_text=re.compile(r"^Run All Cells$")).click()
        handle = page.wait_for_function(_RUN_FINISHED, arg=[PANEL, code_cells, ERROR_MIME],
                                        timeout=timeout_s * 1000, polling=500)
    return handle.json_value()


def code_cell(page: Page, source: str) -> Locator:
    """The one code cell of the notebook in view whose code contains ``source``."""
    return page.locator(f"{PANEL} .jp-CodeCell").filter(
        has=page.locator(".jp-InputArea-editor", has_text=source))


def cell_output(page: Page, source: str) -> str:
    """The text of the outputs of the code cell whose code contains ``source``."""
    return code_cell(page, source).locator(".jp-OutputArea").inner_text(timeout=10_000)


def error_outputs(page: Page) -> list[str]:
    """The text of every error output (a traceback) in the notebook in view."""
    outputs = page.locator(f'{PANEL} .jp-OutputArea-output[data-mime-type="{ERROR_MIME}"]')
    return [text for text in outputs.all_inner_texts() if "Traceback" in text or "Error" in text]


def code_cell_count(notebook: Path) -> int:
    """How many code cells the notebook file has: that many prompts must show a count."""
    cells = json.loads(notebook.read_text(encoding="utf-8"))["cells"]
    return sum(cell["cell_type"] == "code" for cell in cells)
