"""Installing without a package index (a wheelhouse), the Binder configuration, and the example CI
workflow for a team's repository (issue 17).

The offline test is the issue's "done when": a fresh clone of the kit installs from a wheelhouse
with pip's index pointed at a port where nothing listens, then runs notebook 00 (through
`zdlab preflight`, which executes it). The wheelhouse is this machine's only (`tools/wheelhouse.py
--this-machine`), kept in .zdlab/test-wheelhouse between runs; `make wheelhouse` (every platform)
is the instructor's command, not the test's.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import tomllib
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tools"))
from pip_install import pins  # noqa: E402

WORKFLOW = REPO / "docs" / "examples" / "zdlab-migrations.yml"
TEST_WHEELHOUSE = REPO / ".zdlab" / "test-wheelhouse"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def closed_index() -> str:
    """An index URL where nothing answers: any pip request to it fails at once."""
    return f"http://127.0.0.1:{free_port()}/simple"


@pytest.fixture
def clone_dir():
    """A folder outside pytest's tmp tree: as root the embedded server runs as another user, who
    must traverse every parent folder, and every pytest session resets /tmp/pytest-of-root to 0700."""
    made = Path(tempfile.mkdtemp(prefix="zdlab-clone-", dir="/tmp"))
    made.chmod(0o755)
    yield made
    shutil.rmtree(made, ignore_errors=True)


def fresh_clone(tmp: Path) -> Path:
    """The committed kit, as a learner clones it (no .venv, no wheelhouse, no state)."""
    clone = tmp / "kit"
    subprocess.run(["git", "clone", "--quiet", str(REPO), str(clone)], check=True, timeout=120)
    return clone


def this_platform_pins(path: Path) -> set[str]:
    """`name==version` of a requirements file, for this machine (markers evaluated), names normalised."""
    from packaging.requirements import Requirement

    found = set()
    for line in pins(path):
        req = Requirement(line)
        if req.marker is None or req.marker.evaluate():
            found.add(f"{re.sub(r'[-_.]+', '-', req.name).lower()}=={str(req.specifier)[2:]}")
    return found


# -- the example CI workflow ------------------------------------------------------------------------

def check_jsonschema() -> str:
    tool = Path(sys.executable).with_name("check-jsonschema")
    if not tool.exists():
        pytest.fail("check-jsonschema is missing: it is pinned in requirements-dev.txt; run `make setup-dev`")
    return str(tool)


def test_the_ci_workflow_is_valid_against_githubs_workflow_schema(tmp_path):
    ok = subprocess.run([check_jsonschema(), "--builtin-schema", "vendor.github-workflows", str(WORKFLOW)],
                        capture_output=True, text=True, timeout=120)
    assert ok.returncode == 0, ok.stdout + ok.stderr
    text = WORKFLOW.read_text()
    lint_at, measure_at = text.index("zdlab lint"), text.index("zdlab measure")
    assert lint_at < measure_at, "lint first, then measure"
    assert "--diff-filter=A" in text  # measure the migrations the pull request adds
    # The schema bites: a misspelt key fails.
    broken = tmp_path / "broken.yml"
    broken.write_text(text.replace("runs-on:", "runs_on:"))
    bad = subprocess.run([check_jsonschema(), "--builtin-schema", "vendor.github-workflows", str(broken)],
                         capture_output=True, text=True, timeout=120)
    assert bad.returncode != 0, bad.stdout


# -- Binder ------------------------------------------------------------------------------------------

def test_binder_environment_has_exactly_the_labs_pins(tmp_path):
    """What pip would install from binder/requirements.txt (as repo2docker runs it, from the repo's
    root) is exactly requirements.txt's pins: nothing more, nothing unpinned, nothing else."""
    wheelhouse = os.environ.get("ZDLAB_WHEELHOUSE") or (str(TEST_WHEELHOUSE) if TEST_WHEELHOUSE.is_dir() else "")
    source = ["--no-index", "--find-links", wheelhouse] if wheelhouse else []
    report = tmp_path / "report.json"
    result = subprocess.run([sys.executable, "-m", "pip", "install", "--dry-run", "--ignore-installed", "--quiet",
                             "--disable-pip-version-check", "--report", str(report), *source,
                             "-r", "binder/requirements.txt"], cwd=REPO, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stderr[-2000:]
    resolved = {f"{re.sub(r'[-_.]+', '-', item['metadata']['name']).lower()}=={item['metadata']['version']}"
                for item in json.loads(report.read_text())["install"]}
    assert resolved == this_platform_pins(REPO / "requirements.txt"), {
        "not pinned in requirements.txt": resolved - this_platform_pins(REPO / "requirements.txt"),
        "pinned, not installed": this_platform_pins(REPO / "requirements.txt") - resolved}
    # repo2docker's Python matches what the kit needs, and the start script ends as repo2docker requires
    runtime = (REPO / "binder" / "runtime.txt").read_text().strip()
    needs = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["requires-python"]
    assert re.fullmatch(r"python-3\.(1[1-9])", runtime) and needs == ">=3.11", (runtime, needs)
    start = (REPO / "binder" / "start").read_text().strip().splitlines()
    assert start[0] == "#!/bin/bash" and start[-1] == 'exec "$@"'
    assert os.access(REPO / "binder" / "start", os.X_OK) and os.access(REPO / "binder" / "postBuild", os.X_OK)


def _kit_env(clone: Path, **extra: str) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ZDLAB_", "JUPYTER_", "PYTEST"))}
    env.pop("DATABASE_URL", None)
    return {**env, "ZDLAB_PORT": str(free_port()), "ZDLAB_LAB_PORT": str(free_port()),
            "ZDLAB_PROGRESS_DIR": str(clone / ".progress"), **extra}


def test_binder_start_brings_up_the_server_and_notebook_00_runs(tmp_path, clone_dir):
    clone = fresh_clone(clone_dir)
    env = _kit_env(clone, ZDLAB_HOME=str(clone), PYTHONPATH=str(clone),
                   PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}")
    try:
        # start runs before Jupyter and then execs the session's command: here, a run of notebook 00
        result = subprocess.run(
            ["binder/start", "python", "-m", "jupyter", "nbconvert", "--to", "notebook", "--execute",
             "--output-dir", str(tmp_path / "out"), "notebooks/00_setup.ipynb"],
            cwd=clone, env=env, capture_output=True, text=True, timeout=600)
        assert result.returncode == 0, (result.stdout + result.stderr)[-3000:]
        assert "embedded PostgreSQL is running" in result.stdout  # started by the start script
        ran = json.loads((tmp_path / "out" / "00_setup.ipynb").read_text())
        errors = [o for c in ran["cells"] for o in c.get("outputs", []) if o.get("output_type") == "error"
                  and o.get("ename") != "NotImplementedError"]  # the exercise placeholder may raise
        assert not errors, errors[:1]
    finally:
        subprocess.run([sys.executable, "-m", "zdlab", "db", "stop"], cwd=clone, env=env, timeout=120)


# -- the offline install -----------------------------------------------------------------------------

def wheelhouse_for_this_machine() -> Path:
    if os.environ.get("ZDLAB_WHEELHOUSE"):
        return Path(os.environ["ZDLAB_WHEELHOUSE"])
    if (REPO / "wheelhouse").is_dir():
        return REPO / "wheelhouse"
    # Filled again only when requirements.txt changed (pip then fetches only the new files).
    stamp, pinned = TEST_WHEELHOUSE / ".requirements.txt", (REPO / "requirements.txt").read_text()
    if not stamp.exists() or stamp.read_text() != pinned:
        result = subprocess.run([sys.executable, str(REPO / "tools" / "wheelhouse.py"), "--this-machine",
                                 "--requirements", str(REPO / "requirements.txt"), "--dest", str(TEST_WHEELHOUSE)],
                                capture_output=True, text=True, timeout=1800)
        assert result.returncode == 0, (result.stdout + result.stderr)[-3000:]
        stamp.write_text(pinned)
    return TEST_WHEELHOUSE


def test_a_fresh_clone_installs_from_a_wheelhouse_with_no_index_and_runs_notebook_00(tmp_path, clone_dir):
    wheelhouse = wheelhouse_for_this_machine()
    clone = fresh_clone(clone_dir)
    env = _kit_env(clone, PIP_INDEX_URL=closed_index(), PIP_CACHE_DIR=str(tmp_path / "empty-pip-cache"),
                   ZDLAB_WHEELHOUSE=str(wheelhouse))
    try:
        made = subprocess.run(["make", "setup", f"PYTHON={shutil.which('python3.11') or 'python3'}"],
                              cwd=clone, env=env, capture_output=True, text=True, timeout=1800)
        assert made.returncode == 0, (made.stdout + made.stderr)[-3000:]
        assert f"from the wheelhouse {wheelhouse} (no network used)" in made.stdout
        installed = subprocess.run([str(clone / ".venv" / "bin" / "python"), "-m", "pip", "list", "--format=json"],
                                   capture_output=True, text=True, env=env, timeout=120)
        names = {p["name"].lower() for p in json.loads(installed.stdout)}
        assert "jupyterlab" in names and "pytest" not in names and "playwright" not in names  # the lab only
        flight = subprocess.run([str(clone / ".venv" / "bin" / "zdlab"), "preflight", "--rows", "1000"],
                                cwd=clone, env=env, capture_output=True, text=True, timeout=900)
        last = flight.stdout.strip().splitlines()[-1]
        assert flight.returncode == 0 and last.startswith("zdlab preflight: OK"), flight.stdout + flight.stderr
        assert "00_setup ran in" in last
    finally:
        if (clone / ".venv" / "bin" / "python").exists():
            subprocess.run([str(clone / ".venv" / "bin" / "python"), "-m", "zdlab", "db", "stop"], cwd=clone,
                           env=env, timeout=120)


def test_a_wheelhouse_that_is_not_a_folder_is_said_plainly(tmp_path):
    clone = fresh_clone(tmp_path)
    env = _kit_env(clone, ZDLAB_WHEELHOUSE=str(tmp_path / "no-such-folder"), PIP_INDEX_URL=closed_index())
    made = subprocess.run(["make", "setup"], cwd=clone, env=env, capture_output=True, text=True, timeout=300)
    assert made.returncode != 0
    assert "which is not a folder" in made.stderr and "make wheelhouse" in made.stderr, made.stderr
