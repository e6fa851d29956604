"""The Docker path (docker-compose.yml, Dockerfile, docker/entrypoint.sh), checked without Docker.

No Docker engine runs on the CI machines, so nothing here builds an image or starts a
container. What is checked instead: the compose file against the official compose schema
plus the properties the course relies on, the Dockerfile with hadolint, and the entrypoint
run for real outside a container against an external PostgreSQL (the version matrix's
PostgreSQL 15, from Debian's binaries),
the way the `lab` service runs it against the `db` service.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from urllib.parse import urlsplit

import pytest
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tools"))
import pg15  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
COMPOSE = REPO / "docker-compose.yml"
DOCKERFILE = REPO / "Dockerfile"
ENTRYPOINT = REPO / "docker" / "entrypoint.sh"
DOCKERIGNORE = REPO / ".dockerignore"
VENV_BIN = Path(sys.executable).parent


# --- helpers -----------------------------------------------------------------------------


def _tool(name: str) -> str:
    """A command-line tool from requirements.txt: next to this interpreter, else on PATH."""
    path = VENV_BIN / name
    if path.exists():
        return str(path)
    found = shutil.which(name)
    assert found, f"`{name}` is missing: it is pinned in requirements.txt; run `make setup`"
    return found


def _compose() -> dict:
    return yaml.safe_load(COMPOSE.read_text())


INTERPOLATION = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?:(:?[-?])([^}]*))?\}")


def _defaults(value: str) -> str:
    """Interpolate compose `${VAR:-default}` / `${VAR-default}` / `${VAR}` as with an empty
    environment; a required `${VAR:?message}` becomes empty."""
    return INTERPOLATION.sub(lambda m: m.group(3) if m.group(2) in ("-", ":-") else "", str(value))


def _env(service: dict) -> dict[str, str]:
    raw = service.get("environment", {})
    if isinstance(raw, list):
        raw = dict(item.split("=", 1) for item in raw)
    return {k: _defaults(v) for k, v in raw.items()}


def _published(port: str | int | dict) -> tuple[str, str, str]:
    """(host ip, host port, container port) of one `ports:` entry."""
    if isinstance(port, dict):
        return str(port.get("host_ip", "")), _defaults(port.get("published", "")), str(port["target"])
    parts = _defaults(port).split(":")
    if len(parts) == 3:
        return parts[0], parts[1], parts[2]
    if len(parts) == 2:
        return "", parts[0], parts[1]  # no host ip: Docker binds 0.0.0.0
    return "", "", parts[0]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_for(check: Callable[[], object], timeout: float, what: str, alive: Callable[[], str | None]) -> object:
    """Poll ``check`` until it returns something truthy; fail with ``alive()``'s text if the
    process died, or after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        died = alive()
        if died is not None:
            pytest.fail(f"the entrypoint exited while waiting for {what}:\n{died}")
        result = check()
        if result:
            return result
        time.sleep(0.2)
    pytest.fail(f"timed out after {timeout:.0f}s waiting for {what}")


def _get(url: str, token: str | None = None) -> tuple[int, bytes]:
    req = urllib.request.Request(url, headers={"Authorization": f"token {token}"} if token else {})
    try:
        with urllib.request.urlopen(req, timeout=5) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, b""
    except OSError:
        return 0, b""  # not listening yet


def _base_env(home: Path, **extra: str) -> dict[str, str]:
    """A clean environment for the entrypoint: none of the caller's Jupyter/DB settings leak in,
    and no PLOOMBER_STATS_ENABLED, so the test sees that the entrypoint sets it itself."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("JUPYTER", "ZDLAB", "PLOOMBER")) and k != "DATABASE_URL"}
    env.update({"HOME": str(home), "ZDLAB_HOME": str(REPO), "ZDLAB_PYTHON": sys.executable,
                "JUPYTER_IP": "127.0.0.1",  # 0.0.0.0 is for inside a container only
                "PATH": f"{VENV_BIN}{os.pathsep}{env.get('PATH', '')}"})
    env.update(extra)
    return env


@contextlib.contextmanager
def _entrypoint(env: dict[str, str], log: Path) -> Iterator[subprocess.Popen]:
    """Run docker/entrypoint.sh in its own process group; always kill the group afterwards."""
    with open(log, "w") as out:
        proc = subprocess.Popen(["bash", str(ENTRYPOINT)], stdout=out, stderr=subprocess.STDOUT,
                                env=env, cwd=env["HOME"], start_new_session=True)
    try:
        yield proc
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)


def _exited(proc: subprocess.Popen, log: Path) -> Callable[[], str | None]:
    return lambda: None if proc.poll() is None else f"exit {proc.returncode}\n{log.read_text()}"


# --- docker-compose.yml ------------------------------------------------------------------


def test_compose_file_matches_the_official_compose_schema():
    out = subprocess.run([_tool("check-jsonschema"), "--builtin-schema", "vendor.compose-spec", str(COMPOSE)],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stdout + out.stderr


def test_schema_check_rejects_a_broken_compose_file(tmp_path):
    # Proves the check above can fail: a condition compose does not know, ports as a mapping.
    bad = tmp_path / "docker-compose.yml"
    bad.write_text("services:\n  lab:\n    image: x\n    ports: {a: 1}\n"
                   "    depends_on:\n      db:\n        condition: when_it_feels_like_it\n")
    out = subprocess.run([_tool("check-jsonschema"), "--builtin-schema", "vendor.compose-spec", str(bad)],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode != 0, out.stdout


def test_db_service_is_postgres_18_with_healthcheck_and_named_volume():
    compose = _compose()
    db = compose["services"]["db"]
    assert db["image"] == "postgres:18"
    env = _env(db)
    assert (env.get("POSTGRES_USER", "postgres"), env["POSTGRES_DB"]) == ("postgres", "workshop")
    test = db["healthcheck"]["test"]
    assert "pg_isready" in (" ".join(test) if isinstance(test, list) else test)
    # A named volume (declared at top level), mounted where postgres:18 keeps its data.
    mounts = [v.split(":") if isinstance(v, str) else [v["source"], v["target"]] for v in db["volumes"]]
    named = [(src, dst) for src, dst, *_ in mounts if src in (compose.get("volumes") or {})]
    assert named, f"no named volume among {db['volumes']}"
    assert ("/var/lib/postgresql" in [dst.rstrip("/") for _, dst in named]), \
        "postgres:18 needs its volume at /var/lib/postgresql (18+ layout), not .../data"
    # The host port is configurable, defaulting to 54320 (5432 is often taken).
    assert "${ZDLAB_DB_PORT:-54320}" in str(db["ports"][0])
    assert _published(db["ports"][0])[1:] == ("54320", "5432")


def test_every_published_port_is_on_the_hosts_loopback_only():
    services = _compose()["services"]
    published = [(name, p) for name, svc in services.items() for p in svc.get("ports", [])]
    assert {name for name, _ in published} == {"db", "lab"}
    for name, port in published:
        assert _published(port)[0] == "127.0.0.1", f"{name} publishes {port} beyond 127.0.0.1"


def test_lab_service_runs_the_image_against_db_as_a_non_root_user():
    services = _compose()["services"]
    lab = services["lab"]
    build = lab["build"]
    context = build if isinstance(build, str) else build.get("context", ".")
    dockerfile = "Dockerfile" if isinstance(build, str) else build.get("dockerfile", "Dockerfile")
    assert (REPO / context / dockerfile).resolve() == DOCKERFILE
    env = _env(lab)
    url = urlsplit(env["DATABASE_URL"])
    assert (url.hostname, url.port, url.username, url.password, url.path) == \
        ("db", 5432, "postgres", None, "/workshop"), "the lab reaches the db service by name"
    # The password reaches libpq as PGPASSWORD, from the same .env variable the db service uses.
    assert lab["environment"]["PGPASSWORD"].startswith("${POSTGRES_PASSWORD:?")
    assert lab["depends_on"]["db"]["condition"] == "service_healthy"
    assert env["PLOOMBER_STATS_ENABLED"] == "false"
    assert _published(lab["ports"][0])[1:] == ("8888", "8888")
    # Non-root: compose's `user:` (uid[:gid], defaults interpolated) and the image's USER.
    uid = _defaults(lab.get("user", "")).split(":")[0]
    assert uid and uid not in ("0", "root"), f"lab runs as {lab.get('user')!r}"
    image_user = [line.split()[1] for line in DOCKERFILE.read_text().splitlines() if line.startswith("USER ")]
    assert image_user and image_user[-1].split(":")[0] not in ("0", "root")
    # A learner's notebooks live on the host.
    mounts = [v.split(":")[:2] for v in lab["volumes"] if isinstance(v, str)]
    assert ["./notebooks", "/home/jovyan/work/notebooks"] in mounts


def test_no_secret_is_committed_only_required_variables_from_env():
    """Passwords and tokens come from .env (git-ignored, kept out of the image), never from a
    value or a default in the compose file; .env.example documents every variable compose reads."""
    text = COMPOSE.read_text()
    for name, svc in _compose()["services"].items():
        for key, raw in (svc.get("environment") or {}).items():
            if re.search("PASSWORD|SECRET|TOKEN", key):
                match = INTERPOLATION.fullmatch(str(raw))
                assert match, f"{name}: {key} is a literal value, not taken from .env"
                # A password is required (compose stops, saying what to do); a token may be empty.
                assert match.group(2) == (":?" if "PASSWORD" in key else ":-") and not (
                    match.group(2) == ":-" and match.group(3)), f"{name}: {key}={raw} has a default"
        for url in [v for k, v in (svc.get("environment") or {}).items() if k.endswith("_URL")]:
            assert urlsplit(_defaults(url)).password is None, f"{name}: a password inside {url}"
    assert re.search(r"(?m)^\.env$", (REPO / ".gitignore").read_text()), ".env must be git-ignored"
    assert re.search(r"(?m)^\.env$", DOCKERIGNORE.read_text()), ".env must stay out of the image"
    example = dict(line.split("=", 1) for line in (REPO / ".env.example").read_text().splitlines()
                   if line and not line.startswith("#"))
    assert {m[0] for m in INTERPOLATION.findall(text)} <= set(example), \
        "every variable docker-compose.yml reads is listed in .env.example"
    assert example["POSTGRES_PASSWORD"] == "" and example["JUPYTER_TOKEN"] == "", ".env.example holds no secret"
    tracked = subprocess.run(["git", "ls-files"], cwd=REPO, capture_output=True, text=True).stdout.split()
    assert ".env" not in tracked


def test_make_docker_env_writes_a_random_password_and_never_overwrites(tmp_path):
    for name in ("Makefile", ".env.example"):
        shutil.copy(REPO / name, tmp_path / name)
    passwords = []
    for _ in range(2):
        (tmp_path / ".env").unlink(missing_ok=True)
        out = subprocess.run(["make", "-s", "docker-env"], cwd=tmp_path, capture_output=True, text=True)
        assert out.returncode == 0, out.stderr
        env = dict(line.split("=", 1) for line in (tmp_path / ".env").read_text().splitlines()
                   if line and not line.startswith("#"))
        passwords.append(env["POSTGRES_PASSWORD"])
        assert re.fullmatch(r"[0-9a-f]{32}", passwords[-1]), passwords[-1]
        assert (tmp_path / ".env").stat().st_mode & 0o077 == 0, ".env is readable by its owner only"
    assert passwords[0] != passwords[1]
    (tmp_path / ".env").write_text("POSTGRES_PASSWORD=mine\n")
    out = subprocess.run(["make", "-s", "docker-env"], cwd=tmp_path, capture_output=True, text=True)
    assert (tmp_path / ".env").read_text() == "POSTGRES_PASSWORD=mine\n" and "exists" in out.stdout


def test_every_service_runs_as_a_non_root_user():
    for name, svc in _compose()["services"].items():
        user = _defaults(svc.get("user", "")).split(":")[0]
        assert user and user not in ("0", "root"), f"{name} runs as {svc.get('user')!r} (root by default)"


# An empty token (in Python or YAML, or `--ServerApp.token=` with nothing after it), or the
# switches that turn authentication or XSRF protection off.
DISABLING_AUTH = (r"token\s*[=:]\s*(''|\"\")|\.token=(['\"\s]|$)|disable_check_xsrf"
                  r"|allow_unauthenticated_access\s*[=:]\s*true|password_required\s*[=:]\s*false")


@pytest.mark.parametrize(("text", "disables"), [
    ("c.ServerApp.token = ''", True), ('c.IdentityProvider.token = ""', True),
    ("jupyter lab --ServerApp.token= --no-browser", True), ("cmd = ['--ServerApp.token=']", True),
    ("c.ServerApp.disable_check_xsrf = True", True), ("c.ServerApp.allow_unauthenticated_access = True", True),
    ("token = secrets.token_hex(16)", False), ('env["JUPYTER_TOKEN"] = token', False),
    ("--ServerApp.token=abc123", False), ('f"--ServerApp.token={token}"', False),
])
def test_the_token_scan_tells_disabling_from_setting(text, disables):
    assert bool(re.search(DISABLING_AUTH, text, re.IGNORECASE | re.MULTILINE)) is disables


def test_no_file_of_the_docker_path_disables_the_jupyter_token():
    compose = _compose()
    for name, svc in compose["services"].items():
        for key in _env(svc):
            if "TOKEN" in key.upper():
                # Empty means "generate one" (the entrypoint test below proves it), never "none".
                assert key == "JUPYTER_TOKEN", f"{name}: unexpected {key}"
        command = json.dumps(svc.get("command", "")) + json.dumps(svc.get("entrypoint", ""))
        assert "token" not in command.lower(), f"{name} overrides the token on its command line"
    disabling = re.compile(DISABLING_AUTH, re.IGNORECASE | re.MULTILINE)
    # Every file that starts or configures a lab: the Docker path, the kit, the tools, the hub
    # deployments, the Makefile (the tests themselves may name the patterns they look for).
    tracked = subprocess.run(["git", "ls-files"], cwd=REPO, capture_output=True, text=True).stdout.split()
    config_like = (".py", ".sh", ".yml", ".yaml", ".toml", ".cfg")
    paths = [REPO / f for f in tracked if not f.startswith(("tests/", "docs/")) and
             (f.endswith(config_like) or Path(f).name in ("Makefile", "Dockerfile"))]
    assert {COMPOSE, DOCKERFILE, ENTRYPOINT, REPO / "zdlab" / "cli.py"} <= set(paths)
    for path in paths:
        found = disabling.search(path.read_text())
        assert not found, f"{path.relative_to(REPO)} disables authentication: {found.group(0)!r}"


# --- Dockerfile --------------------------------------------------------------------------


def _hadolint(path: Path) -> subprocess.CompletedProcess:
    # --no-color: plain text to assert on; no config file, so the defaults apply.
    return subprocess.run([_tool("hadolint"), "--no-color", str(path)], capture_output=True, text=True,
                          timeout=60, cwd=path.parent)


def test_dockerfile_passes_hadolint():
    out = _hadolint(DOCKERFILE)
    assert out.returncode == 0, out.stdout + out.stderr


def test_hadolint_fails_a_bad_dockerfile(tmp_path):
    # Proves the lint test can fail: an unpinned base, apt without --no-install-recommends.
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM python:latest\nRUN apt-get update && apt-get install -y tini\n"
                   "RUN pip install jupyterlab\n")
    out = _hadolint(bad)
    assert out.returncode != 0, out.stdout
    for rule in ("DL3007", "DL3015", "DL3013"):
        assert rule in out.stdout, out.stdout


def test_dockerfile_builds_the_kit_the_way_the_issue_asks():
    text = DOCKERFILE.read_text()
    base = re.search(r"^FROM\s+(\S+)", text, re.MULTILINE).group(1)
    assert re.fullmatch(r"python:3\.(1[1-9])\.\d+-slim(-\w+)?(@sha256:[0-9a-f]{64})?", base), \
        f"base image {base} is not pinned to a patch release"
    assert re.search(r"PLOOMBER_STATS_ENABLED=false", text)
    assert re.search(r"ZDLAB_HOME=/home/jovyan/work", text)
    assert re.search(r"pip install --no-cache-dir -r \S*requirements(-hub)?\.txt", text)  # -hub: + jupyterhub
    assert re.search(r"pip install --no-cache-dir --no-deps \.", text)
    assert "zdlab-entrypoint" in text.split("ENTRYPOINT", 1)[1]
    # Everything COPY needs is in the repo and let through by .dockerignore's allow-list.
    ignore = [line.strip() for line in DOCKERIGNORE.read_text().splitlines() if line.strip()[:1] not in ("", "#")]
    assert ignore[0] == "*", ".dockerignore should start by excluding everything (an allow-list)"
    allowed = {line[1:].rstrip("/") for line in ignore if line.startswith("!")}
    for line in text.splitlines():
        if line.startswith("COPY "):
            sources = [w for w in line.split()[1:-1] if not w.startswith("--")]
            for src in sources:
                assert (REPO / src).exists(), f"COPY {src}: not in the repository"
                assert src.rstrip("/").split("/")[0] in allowed, f"COPY {src}: excluded by .dockerignore"
    for needed in ("zdlab", "pyproject.toml", "solutions", "tools", "requirements.txt"):
        assert needed in allowed


# --- docker/entrypoint.sh, run outside Docker ---------------------------------------------


def test_entrypoint_fails_fast_and_clearly_when_nothing_listens(tmp_path):
    port = _free_port()  # bound then released: nothing listens there
    url = f"postgresql://postgres:s3cret-pw@127.0.0.1:{port}/workshop"
    env = _base_env(tmp_path, DATABASE_URL=url, ZDLAB_DB_WAIT="3", JUPYTER_PORT=str(_free_port()))
    started = time.monotonic()
    out = subprocess.run(["bash", str(ENTRYPOINT)], capture_output=True, text=True, env=env, timeout=60,
                         start_new_session=True)
    elapsed = time.monotonic() - started
    text = out.stdout + out.stderr
    assert out.returncode != 0, text
    assert f"postgresql://postgres:***@127.0.0.1:{port}/workshop" in out.stderr, text
    assert "did not answer within 3s" in out.stderr, text
    assert "s3cret-pw" not in text
    assert "JupyterLab on" not in text  # it gave up before starting Jupyter
    assert elapsed < 30, f"took {elapsed:.1f}s with a 3 s budget"


def test_entrypoint_rejects_a_wait_that_is_not_a_number(tmp_path):
    env = _base_env(tmp_path, DATABASE_URL="postgresql://postgres:x@127.0.0.1:1/workshop", ZDLAB_DB_WAIT="soon")
    out = subprocess.run(["bash", str(ENTRYPOINT)], capture_output=True, text=True, env=env, timeout=60)
    assert out.returncode != 0
    assert "ZDLAB_DB_WAIT='soon'" in out.stderr


@pytest.fixture(scope="module")
def pg15_url() -> Iterator[str]:
    """An external PostgreSQL 15 for the entrypoint, as the compose `db` is for the `lab` service:
    the version matrix's server (tools/pg15.py: Debian's binaries, installed when missing as root),
    stopped afterwards unless it was already running (as during `make test-pg15`)."""
    was_running = pg15.zdlab("db", "status").returncode == 0
    started = subprocess.run([sys.executable, str(REPO / "tools" / "pg15.py"), "start"],
                             capture_output=True, text=True, timeout=600)
    if started.returncode != 0:
        pytest.skip(f"no PostgreSQL 15 for the entrypoint test: {started.stderr.strip()[-300:]}")
    try:
        yield started.stdout.strip().splitlines()[-1]
    finally:
        if not was_running:
            pg15.zdlab("db", "stop")


@pytest.fixture(scope="module")
def lab(pg15_url) -> Iterator[dict]:
    """The entrypoint running JupyterLab against PostgreSQL 15, with a known token."""
    home = Path(tempfile.mkdtemp(prefix="zdlab-entrypoint-"))
    port = _free_port()
    token = secrets.token_hex(16)
    env = _base_env(home, DATABASE_URL=pg15_url, JUPYTER_TOKEN=token, JUPYTER_PORT=str(port), ZDLAB_DB_WAIT="30")
    log = home / "entrypoint.log"
    try:
        with _entrypoint(env, log) as proc:
            base = f"http://127.0.0.1:{port}"
            # Wait until it answers at all, then demand 200: a wrong token fails at once, not on timeout.
            _wait_for(lambda: _get(f"{base}/api/status", token)[0], 120, "JupyterLab to answer", _exited(proc, log))
            assert _get(f"{base}/api/status", token)[0] == 200, log.read_text()
            yield {"base": base, "token": token, "env": env, "log": log, "proc": proc}
    finally:
        shutil.rmtree(home, ignore_errors=True)


def test_lab_answers_with_the_token_and_refuses_without_it(lab):
    status = f"{lab['base']}/api/status"
    assert _get(status, lab["token"])[0] == 200
    assert _get(f"{status}?token={lab['token']}")[0] == 200
    assert _get(status)[0] == 403
    assert _get(status, "not-the-token")[0] == 403


def test_lab_serves_the_kits_notebooks_folder_with_telemetry_off(lab):
    status, body = _get(f"{lab['base']}/api/contents", lab["token"])
    assert status == 200
    served = {item["name"] for item in json.loads(body)["content"] if item["name"].endswith(".ipynb")}
    assert served == {p.name for p in (REPO / "notebooks").glob("*.ipynb")}
    # exec all the way down: the entrypoint's pid is now JupyterLab's, and its environment
    # (so every kernel's) has JupySQL telemetry off although the caller did not set it.
    environ = Path(f"/proc/{lab['proc'].pid}/environ").read_bytes().split(b"\0")
    assert b"PLOOMBER_STATS_ENABLED=false" in environ


def test_entrypoint_log_names_the_server_without_its_password(lab):
    text = lab["log"].read_text()
    port = urlsplit(lab["env"]["DATABASE_URL"]).port
    assert f"postgresql://postgres:***@127.0.0.1:{port}/workshop" in text
    assert "(PostgreSQL 15" in text, text  # `zdlab db status` connected before Jupyter started
    assert f":{urlsplit(lab['env']['DATABASE_URL']).password}@" not in text
    assert lab["token"] not in text  # a token the user chose is not echoed into logs


def _execute_in_kernel(base: str, token: str, code: str, timeout: float = 90) -> str:
    """Start a kernel through JupyterLab's API, run ``code`` over its websocket, return stdout."""
    import websocket  # websocket-client, a JupyterLab dependency pinned in requirements.txt

    req = urllib.request.Request(f"{base}/api/kernels", data=b"{}", method="POST",
                                 headers={"Authorization": f"token {token}", "Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=30) as resp:
        kernel_id = json.loads(resp.read())["id"]
    try:
        ws = websocket.create_connection(f"{base.replace('http', 'ws', 1)}/api/kernels/{kernel_id}/channels",
                                         header=[f"Authorization: token {token}"], timeout=timeout)
        try:
            msg_id = uuid.uuid4().hex
            ws.send(json.dumps({
                "header": {"msg_id": msg_id, "username": "test", "session": uuid.uuid4().hex,
                           "msg_type": "execute_request", "version": "5.3"},
                "parent_header": {}, "metadata": {}, "channel": "shell", "buffers": [],
                "content": {"code": code, "silent": False, "store_history": False, "user_expressions": {},
                            "allow_stdin": False, "stop_on_error": True},
            }))
            stdout, deadline = [], time.monotonic() + timeout
            while time.monotonic() < deadline:
                msg = json.loads(ws.recv())
                if msg.get("parent_header", {}).get("msg_id") != msg_id:
                    continue
                kind = msg["msg_type"]
                if kind == "stream":
                    stdout.append(msg["content"]["text"])
                elif kind == "error":
                    pytest.fail("kernel error: " + "\n".join(msg["content"]["traceback"]))
                elif kind == "status" and msg["content"]["execution_state"] == "idle":
                    return "".join(stdout)
            pytest.fail(f"the kernel did not finish within {timeout:.0f}s")
        finally:
            ws.close()
    finally:
        req = urllib.request.Request(f"{base}/api/kernels/{kernel_id}", method="DELETE",
                                     headers={"Authorization": f"token {token}"})
        with contextlib.suppress(OSError):
            urllib.request.urlopen(req, timeout=30).close()


def test_a_notebook_kernel_reaches_the_database(lab):
    code = ("from zdlab import db\n"
            "with db.connect() as conn:\n"
            "    print('version_num', db.server_version_num(conn))\n"
            "    print('database', conn.execute('SELECT current_database()').fetchone()[0])\n")
    out = _execute_in_kernel(lab["base"], lab["token"], code)
    found = re.search(r"version_num (\d+)", out)
    assert found and found.group(1).startswith("15"), out
    assert "database workshop" in out


def test_doctor_passes_with_the_entrypoints_environment(lab):
    out = subprocess.run([sys.executable, "-m", "zdlab", "doctor"], capture_output=True, text=True,
                         env=lab["env"], timeout=180, cwd=lab["env"]["HOME"])
    assert out.returncode == 0, out.stdout + out.stderr
    assert re.search(r"\[ok\] server version 15\.", out.stdout), out.stdout


def test_entrypoint_generates_and_prints_a_token_when_none_is_given(pg15_url, tmp_path):
    home = Path(tempfile.mkdtemp(prefix="zdlab-entrypoint-"))
    port = _free_port()
    env = _base_env(home, DATABASE_URL=pg15_url, JUPYTER_PORT=str(port), JUPYTER_TOKEN="")
    log = tmp_path / "entrypoint.log"
    try:
        with _entrypoint(env, log) as proc:
            def printed() -> str | None:
                found = re.search(rf"http://127\.0\.0\.1:{port}/lab\?token=([0-9a-f]{{32,}})", log.read_text())
                return found.group(1) if found else None

            token = _wait_for(printed, 60, "the entrypoint to print a token", _exited(proc, log))
            base = f"http://127.0.0.1:{port}"
            _wait_for(lambda: _get(f"{base}/api/status", token)[0], 120, "JupyterLab to answer", _exited(proc, log))
            assert _get(f"{base}/api/status", token)[0] == 200, "the printed token is not the one JupyterLab uses"
            assert _get(f"{base}/api/status")[0] == 403
    finally:
        shutil.rmtree(home, ignore_errors=True)
