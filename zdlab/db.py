"""Which database the notebooks use: ``DATABASE_URL`` or the embedded server, and with
``ZDLAB_LEARNER`` set, that learner's own database on it. Opening the connection itself, with its
clear errors, is `connection.connect_url`."""

from __future__ import annotations

import psycopg
from psycopg import sql

from . import config, server
from .connection import connect_url, create_database
from .errors import ZdlabError

_ensured: set[str] = set()


def database_url() -> str:
    """The URL of the database the notebooks use: DATABASE_URL or embedded `workshop`, or,
    with ZDLAB_LEARNER set, that learner's own database on the same server."""
    base = server.url()
    name = config.learner()
    if name is None:
        return base
    url = config.with_database(base, config.learner_database(name))
    if url not in _ensured:
        _ensure_database(base, config.learner_database(name))
        _ensured.add(url)
    return url


def _ensure_database(base_url: str, database: str) -> None:
    """Create a learner's database on first use (concurrent first uses are fine)."""
    try:
        create_database(base_url, database)
    except psycopg.errors.InsufficientPrivilege:
        raise ZdlabError(
            f"ZDLAB_LEARNER is set, so the kit wants a database {database!r} of the learner's own, but "
            f"the user in {config.redact(base_url)} may not create databases. Create it once as an admin "
            f"(CREATE DATABASE {database}), or grant CREATEDB to that user.") from None


def connect(*, autocommit: bool = True, application_name: str | None = None,
            **kwargs) -> psycopg.Connection:
    """A connection to the workshop database: ``DATABASE_URL`` if set, else the embedded server."""
    if not config.external_url() and not server.status().running:
        raise ZdlabError(
            f"The embedded PostgreSQL server is not running (data folder {server.pgdata()}). "
            f"Start it with `make lab`, or `zdlab db start` in a terminal "
            f"(in a notebook: `!zdlab db start`), then run this cell again. "
            f"To use another server instead, set DATABASE_URL before starting Jupyter."
        )
    url = database_url()
    return connect_url(url, autocommit=autocommit,
                       application_name=application_name, **kwargs)


def server_version_num(conn: psycopg.Connection) -> int:
    return int(conn.execute("SHOW server_version_num").fetchone()[0])


def drop_learner_database(learner: str, base_url: str | None = None) -> None:
    """Drop ``zdlab_<learner>`` (tools and tests that ran in a database of their own clean up).

    FORCE ends the sessions still in it, such as a kernel that hung.
    """
    name = config.learner_database(learner)
    with connect_url(base_url or server.url(), application_name=f"{config.APP_PREFIX}/admin") as conn:
        conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))
    _ensured.discard(config.with_database(base_url or server.url(), name))
