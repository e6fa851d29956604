"""Where things live and which database to use: the one place that reads the environment.

- ``DATABASE_URL`` set: use that server, start none (Docker path, shared servers).
- otherwise: the embedded PostgreSQL 18 under ``<repo>/.zdlab/`` on 127.0.0.1:``ZDLAB_PORT``.

Every other module asks a function here (`pg_bin()`, `strict_checks()`, `child_env()` ...)
rather than ``os.environ``, so each variable the kit honours is named and checked once.
"""

from __future__ import annotations

import hashlib
import os
import re
from pathlib import Path
from urllib.parse import quote, unquote, urlsplit, urlunsplit

from .errors import BadInput, ZdlabError

DEFAULT_PORT = 54320  # not 5432: a local PostgreSQL often holds that one
DB_NAME = "workshop"
DB_USER = "postgres"
APP_PREFIX = "zdlab"  # every connection we open is tagged application_name=zdlab/...
STRICT_ENV = "ZDLAB_STRICT_CHECKS"  # set by the test suite's notebook kernels
# JupySQL (ploomber-core) sends usage telemetry unless this is set; never from this kit.
NO_TELEMETRY = {"PLOOMBER_STATS_ENABLED": "false"}


def quiet_telemetry() -> None:
    """Switch JupySQL's telemetry off in this process (and so in what it starts), unless the
    user chose otherwise: called before JupySQL is imported."""
    for key, value in NO_TELEMETRY.items():
        os.environ.setdefault(key, value)


def child_env(**overrides: str) -> dict[str, str]:
    """The environment for a program the kit starts: ours, telemetry off, plus ``overrides``."""
    return {**os.environ, **NO_TELEMETRY, **overrides}


def pg_bin() -> str | None:
    """``ZDLAB_PG_BIN``: another PostgreSQL's bin folder for the embedded server (the matrix's 15)."""
    return os.environ.get("ZDLAB_PG_BIN", "").strip() or None


def search_path() -> list[str]:
    """The folders of ``PATH``, where a server's own client programs may be found."""
    return [folder for folder in os.environ.get("PATH", "").split(os.pathsep) if folder]


def strict_checks() -> bool:
    """True when incorrect answers must raise (``ZDLAB_STRICT_CHECKS``, the suite's kernels)."""
    return os.environ.get(STRICT_ENV, "").strip() not in ("", "0", "false", "no")


def jupyter_token_set() -> bool:
    """JupyterLab will take its token from ``JUPYTER_TOKEN`` (the Docker path sets one)."""
    return bool(os.environ.get("JUPYTER_TOKEN"))


def home() -> Path:
    """The kit's root folder: ``ZDLAB_HOME``, else the repository this package sits in."""
    if os.environ.get("ZDLAB_HOME"):
        return Path(os.environ["ZDLAB_HOME"]).expanduser().resolve()
    repo = Path(__file__).resolve().parent.parent
    if (repo / "pyproject.toml").exists():
        return repo
    return Path.home() / ".zdlab-home"


def state_dir() -> Path:
    """Git-ignored folder for the embedded server's data, log and password.

    ``ZDLAB_STATE_DIR`` moves it: `make test-matrix` keeps a second server (PostgreSQL 15)
    beside the default one that way.
    """
    if os.environ.get("ZDLAB_STATE_DIR"):
        return Path(os.environ["ZDLAB_STATE_DIR"]).expanduser().resolve()
    return home() / ".zdlab"


def lab_settings_dir() -> Path:
    """JupyterLab's application settings for `zdlab lab`: its ``overrides.json`` turns off the news
    pop-up (it asks, over the first notebook's outputs, whether to fetch Jupyter news) and the
    update check."""
    return Path(__file__).resolve().parent / "lab_settings"


def password_file() -> Path:
    return state_dir() / "password"


def embedded_password() -> str:
    """The embedded server's password, made at random when its data folder was created.

    Random, not a fixed word: the server listens on 127.0.0.1, which every local user of a
    shared machine can reach. The file is readable by its owner only and never committed.
    """
    try:
        secret = password_file().read_text().strip()
    except FileNotFoundError:
        secret = ""
    if not secret:  # missing, or empty/truncated (a full disk while it was written): same recovery
        raise ZdlabError(
            f"The embedded server's password file {password_file()} is missing or empty (it is written "
            f"when the server's data folder is created). `zdlab db stop`, then `zdlab db start`, gives the "
            f"server a new random password and keeps its data; or set DATABASE_URL to use a server "
            f"of your own."
        )
    return secret


def password_file_ok() -> bool:
    """A password file that holds a password (an empty or truncated one is as good as none)."""
    try:
        return bool(password_file().read_text().strip())
    except OSError:
        return False


def passfile() -> Path:
    """A libpq password file (mode 600) for psql and the other client programs: no password on
    a command line, where every local user can read it (`ps`)."""
    return state_dir() / "pgpass"


def write_secret(path: Path, text: str) -> None:
    """Write a secret file readable by its owner only from its first byte (never chmod'ed after)."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "w") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)  # all or nothing: a full disk leaves the old file, never a truncated one
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def port() -> int:
    return _port_setting("ZDLAB_PORT", DEFAULT_PORT, "export ZDLAB_PORT=54321")


def _port_setting(name: str, default: int, example: str) -> int:
    """A port from the environment variable ``name``: a number in 1024-65535, or BadInput."""
    raw = os.environ.get(name, "").strip()
    if not raw:
        return default
    if not raw.isdigit() or not 1024 <= int(raw) <= 65535:
        raise BadInput(
            f"{name}={raw!r} is not a usable port. Set it to a number between 1024 and "
            f"65535 (for example `{example}`), or unset it to use {default}."
        )
    return int(raw)


def service_home() -> Path:
    """Started as root: where the service user keeps what it cannot reach in the checkout
    (``ZDLAB_SERVICE_HOME``, default /var/lib/zdlab-pg)."""
    return Path(os.environ.get("ZDLAB_SERVICE_HOME", "") or "/var/lib/zdlab-pg")


def demo_scale() -> float:
    """ZDLAB_DEMO_SCALE: multiply every seeded table's size (default 1).

    The any-machine runs (`make test-extremes`) use it to show that every verdict holds at half
    and at twice the demo size; a facilitator on slow laptops can use it to shorten the demos."""
    raw = os.environ.get("ZDLAB_DEMO_SCALE", "").strip()
    if not raw:
        return 1.0
    try:
        scale = float(raw)
    except ValueError:
        scale = 0.0
    if not 0.01 <= scale <= 100:
        raise BadInput(f"ZDLAB_DEMO_SCALE={raw!r} is not a usable scale. Set it to a number between 0.01 and "
                       f"100 (for example ZDLAB_DEMO_SCALE=0.5 for demos half the size), or unset it.")
    return scale


def learner() -> str | None:
    """ZDLAB_LEARNER: on a shared server, each learner works in a database of their own.

    Under JupyterHub on a shared server (DATABASE_URL set) the hub user name, JUPYTERHUB_USER,
    is the default: without it, every learner would share `workshop`, and one learner's
    sandbox reset would end another's sessions.
    """
    raw = os.environ.get("ZDLAB_LEARNER", "").strip()
    if not raw and external_url():
        hub_user = os.environ.get("JUPYTERHUB_USER", "").strip()
        if hub_user:
            return _hub_learner(hub_user)
    if not raw:
        return None
    if not re.sub(r"[^a-z0-9]+", "", raw.lower()):
        raise BadInput(f"ZDLAB_LEARNER={raw!r} cannot name a database: use letters or digits, with '-' or "
                       f"'_' between them if you like (for example ZDLAB_LEARNER=alice).")
    return _hub_learner(raw)


MAX_LEARNER = 40  # zdlab_<name> and the roles named after it stay under PostgreSQL's 63 bytes


def _hub_learner(user: str) -> str:
    """A database-safe learner name from any name (a hub user name is often an e-mail address).

    The lower-case slug when it says the same as the name; otherwise (other characters were
    folded, or it is too long) the slug plus a hash of the full name, so two different names
    never share a database: "Alice" and "alice" are two people to a hub.
    """
    slug = re.sub(r"[^a-z0-9]+", "_", user.lower()).strip("_") or "user"
    if slug == user and len(slug) <= MAX_LEARNER:
        return slug
    return f"{slug[:MAX_LEARNER - 9]}_{hashlib.sha1(user.encode()).hexdigest()[:8]}"


def learner_database(name: str) -> str:
    return f"zdlab_{name}"


def external_url() -> str | None:
    """The server the user chose with DATABASE_URL, if any."""
    url = os.environ.get("DATABASE_URL", "").strip()
    return url or None


def embedded_url(port_number: int | None = None, database: str = DB_NAME, password: str | None = None) -> str:
    p = port_number if port_number is not None else port()
    secret = password if password is not None else embedded_password()
    return f"postgresql://{DB_USER}:{quote(secret, safe='')}@127.0.0.1:{p}/{database}"


def with_database(url: str, database: str) -> str:
    """The same server URL with another database name."""
    try:
        parts = urlsplit(url)
    except ValueError as exc:  # e.g. an unclosed [ of an IPv6 host: the same message as connect_url's
        raise ZdlabError(f"The connection URL {redact(url)!r} is not valid: {exc}. It should look like "
                         f"postgresql://user:password@host:5432/dbname.") from None
    return urlunsplit((parts.scheme, parts.netloc, "/" + quote(database), parts.query, ""))


def redact(url: str) -> str:
    """The URL (or key=value connection string) with its password hidden, for messages.

    Up to the last '@' before the host: a password may hold an '@' of its own (libpq reads
    the user information up to the last one).
    """
    url = re.sub(r"(password\s*=\s*)('(?:[^'\\]|\\.)*'|[^\s&]+)", r"\1***", url)
    return re.sub(r"(://[^:/@\s]*:)[^\s/?#]*@", r"\1***@", url)


def url_password(url: str) -> str | None:
    """The password in a URL (decoded), or None."""
    try:
        secret = urlsplit(url).password
    except ValueError:
        return None
    return unquote(secret) if secret else None


def without_password(url: str) -> str:
    """The URL with no password at all: what `zdlab db url` prints, and what the kit puts on a
    client program's command line (the password goes through PGPASSWORD or a password file)."""
    return re.sub(r"(://[^:/@\s]*):[^\s/?#]*@", r"\1@", url)


def client_env(url: str) -> tuple[str, dict[str, str]]:
    """(URL without its password, environment carrying it as PGPASSWORD) for pg_dump, pgbench, psql:
    a process's arguments are readable by every local user, its environment by its owner only."""
    env = dict(os.environ)
    secret = url_password(url)
    if secret is not None:
        env["PGPASSWORD"] = secret
    return without_password(url), env


def sqlalchemy_url(url: str) -> str:
    """The same URL for SQLAlchemy/JupySQL, driven by psycopg 3."""
    return re.sub(r"^postgres(ql)?(\+\w+)?://", "postgresql+psycopg://", url)


# -- issue 17: progress records and the JupyterLab port ----------------------------------------

DEFAULT_LAB_PORT = 8888


def progress_dir() -> Path:
    """Where passed exercises are recorded (zdlab/progress.py): ``ZDLAB_PROGRESS_DIR`` (the test
    suite points it at a temporary folder), else ``<state dir>/progress``."""
    if os.environ.get("ZDLAB_PROGRESS_DIR"):
        return Path(os.environ["ZDLAB_PROGRESS_DIR"]).expanduser().resolve()
    return state_dir() / "progress"


def lab_port() -> int:
    """JupyterLab's port: ``ZDLAB_LAB_PORT`` (``make lab`` and ``zdlab lab`` read it), else 8888."""
    return _port_setting("ZDLAB_LAB_PORT", DEFAULT_LAB_PORT, "ZDLAB_LAB_PORT=8890 make lab")
