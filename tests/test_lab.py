"""`zdlab lab` (what `make lab` runs) serves JupyterLab on notebooks/, behind a token."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _get(url: str) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=5) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, b""


def test_zdlab_lab_serves_notebooks_with_a_token(db_url, tmp_path):
    port = _free_port()
    log = tmp_path / "lab.log"
    env = {**os.environ, "HOME": str(tmp_path), "JUPYTER_RUNTIME_DIR": str(tmp_path / "rt")}
    env.pop("PLOOMBER_STATS_ENABLED", None)  # the kit must switch telemetry off by itself
    with open(log, "w") as out:
        proc = subprocess.Popen([sys.executable, "-m", "zdlab", "lab", "--port", str(port)],
                                stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    try:
        token = None
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline and token is None:
            assert proc.poll() is None, log.read_text()
            found = re.search(rf"127\.0\.0\.1:{port}/lab\?token=([0-9a-f]+)", log.read_text())
            token = found.group(1) if found else None
            time.sleep(0.2)
        assert token, log.read_text()
        assert _get(f"http://127.0.0.1:{port}/api/status")[0] == 403
        status, body = _get(f"http://127.0.0.1:{port}/api/contents?token={token}")
        assert status == 200
        assert b"00_setup.ipynb" in body  # JupyterLab is rooted at notebooks/
        # No news pop-up over the first notebook: the kit's overrides.json sets fetchNews to "false"
        # (JupyterLab asks whenever it is "none", its default).
        status, body = _get(f"http://127.0.0.1:{port}/lab/api/settings/"
                            f"@jupyterlab/apputils-extension:notification?token={token}")
        assert status == 200
        notification = json.loads(body)["schema"]["properties"]
        assert notification["fetchNews"]["default"] == "false"
        assert notification["checkForUpdates"]["default"] is False
        # The server's environment (and so every kernel's) has JupySQL telemetry off.
        environ = Path(f"/proc/{proc.pid}/environ").read_bytes().split(b"\0")
        assert b"PLOOMBER_STATS_ENABLED=false" in environ
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
