"""Opening a connection to a URL: every psycopg connection the kit opens goes through here, so
that a server that is down, a wrong URL or a wrong password all give one clear paragraph.

Shared by `db` (which database) and `server` (the embedded server creates its database).
"""

from __future__ import annotations

import psycopg
from psycopg import sql

from . import config
from .errors import ZdlabError, first_line

CONNECT_TIMEOUT_S = 5


def explain_connect_error(url: str, exc: Exception) -> ZdlabError:
    """Turn a libpq failure into what happened and what to do."""
    text = str(exc).strip()
    low = text.lower()
    shown = config.redact(url)
    using = ("DATABASE_URL" if config.external_url() else "the embedded server (`make lab` or `zdlab db start`)")
    if "password authentication failed" in low or "no password supplied" in low:
        what = ("The server rejected the user name or password. Check the user and password in "
                "DATABASE_URL (the Docker path's is POSTGRES_PASSWORD in .env), or unset DATABASE_URL to use "
                "the embedded server.")
    elif "does not exist" in low and "database" in low:
        what = ("The server is up but that database does not exist. Create it (`createdb`), fix the "
                "database name at the end of the URL, or run `zdlab db start` for the embedded server.")
    elif "could not translate host name" in low or "name or service not known" in low:
        what = ("That host name does not resolve. Outside Docker use 127.0.0.1 or localhost; inside "
                "the compose network the server is called `db`.")
    elif ("invalid response to ssl negotiation" in low or "server closed the connection unexpectedly" in low
          or "expected authentication request" in low):
        what = ("Something answers on that port, but it is not PostgreSQL. Check the port in the URL "
                f"(PostgreSQL's usual one is 5432, the embedded server's {config.DEFAULT_PORT}) of {using}.")
    elif "connection refused" in low or "no such file or directory" in low:
        what = (f"Nothing is listening there: the server is down or on another port. Start it with "
                f"`make lab` or `zdlab db start`, or check the host and port of {using}.")
    elif "invalid" in low and ("option" in low or "uri" in low or "conninfo" in low or "port" in low):
        what = "The URL is not valid; it should look like postgresql://user:password@host:5432/dbname."
    elif "timeout" in low or "timed out" in low:
        what = "The server did not answer in time. Check the host and port, and any firewall between."
    else:
        what = f"Check that the server runs and that the URL is right ({using})."
    first = config.redact(text.splitlines()[-1]) if text else type(exc).__name__
    return ZdlabError(f"Could not connect to PostgreSQL at {shown}: {first} {what}")


def connect_url(url: str, *, autocommit: bool = True, application_name: str | None = None,
                **kwargs) -> psycopg.Connection:
    """Open a psycopg connection to ``url`` with a clear error instead of a traceback."""
    params = {"connect_timeout": CONNECT_TIMEOUT_S, "application_name": application_name or config.APP_PREFIX}
    params.update(kwargs)
    try:
        return psycopg.connect(url, autocommit=autocommit, **params)
    except psycopg.OperationalError as exc:
        raise explain_connect_error(url, exc) from None
    except psycopg.ProgrammingError as exc:  # a malformed URL
        # One paragraph: libpq's message ends in a newline, and may quote the URL, password and all.
        raise ZdlabError(f"The connection URL {config.redact(url)!r} is not valid: "
                         f"{config.redact(first_line(exc)).rstrip('.')}. It should look like "
                         f"postgresql://user:password@host:5432/dbname.") from None


def create_database(base_url: str, database: str) -> None:
    """Create ``database`` on the server of ``base_url`` unless it exists (concurrent calls are fine).

    Raises psycopg's InsufficientPrivilege for a user that may not create databases: only the
    caller knows what to tell the user then."""
    with connect_url(base_url, application_name=f"{config.APP_PREFIX}/admin") as conn:
        if conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", [database]).fetchone():
            return
        try:
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(database)))
        except psycopg.errors.DuplicateDatabase:
            pass  # another kernel of the same learner created it a moment ago
        except psycopg.errors.UniqueViolation:
            pass  # the same race, reported through the catalog's unique index
