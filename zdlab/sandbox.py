"""Each notebook works in its own schema, reset at the top of the notebook.

Every connection opened for a sandbox carries ``application_name = zdlab/<schema>/<role>``,
so a reset can find and end the sessions that an earlier (perhaps crashed) run of the
same notebook left behind, and nothing else.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING

import psycopg
from psycopg import sql

from . import config, db
from .connection import CONNECT_TIMEOUT_S, connect_url
from .errors import BadInput, ZdlabError

if TYPE_CHECKING:
    import sqlalchemy


def schema_name(name: str) -> str:
    """``"01 Risks"`` -> ``zd_01_risks``: a safe, lower-case identifier."""
    slug = re.sub(r"[^a-z0-9]+", "_", name.lower()).strip("_")
    if not slug:
        raise BadInput(f"{name!r} cannot name a sandbox: use letters, digits or underscores "
                       f"(for example zdlab.sandbox(\"team_a\")).")
    return ("zd_" + slug)[:48]


class Sandbox:
    """A schema of its own plus the connections that work in it."""

    def __init__(self, name: str, url: str | None = None) -> None:
        self.name = name
        self.schema = schema_name(name)
        self.url = url or db.database_url()

    def __repr__(self) -> str:
        return f"Sandbox(schema={self.schema!r}, url={config.redact(self.url)!r})"

    def app_name(self, role: str) -> str:
        return f"{config.APP_PREFIX}/{self.schema}/{role}"[:63]

    def connect(self, role: str = "notebook", *, autocommit: bool = True, **kwargs) -> psycopg.Connection:
        """A connection whose search_path starts at this sandbox's schema."""
        return connect_url(self.url, autocommit=autocommit, application_name=self.app_name(role),
                           options=f"-c search_path={self.schema},public", **kwargs)

    def engine(self, role: str = "sql") -> sqlalchemy.Engine:
        """A SQLAlchemy engine for JupySQL's ``%sql``, on the same URL and schema."""
        import sqlalchemy

        return sqlalchemy.create_engine(
            config.sqlalchemy_url(self.url), isolation_level="AUTOCOMMIT",
            connect_args={"application_name": self.app_name(role), "connect_timeout": CONNECT_TIMEOUT_S,
                          "options": f"-c search_path={self.schema},public"})

    def end_sessions(self, conn: psycopg.Connection) -> int:
        """Terminate every session tagged for this sandbox except ``conn``'s own."""
        prefix = f"{config.APP_PREFIX}/{self.schema}/"
        rows = conn.execute(
            "SELECT pg_terminate_backend(pid, 5000) FROM pg_stat_activity "
            "WHERE left(application_name, length(%s)) = %s AND pid <> pg_backend_pid() "
            "AND datname = current_database()", [prefix, prefix]).fetchall()
        return len(rows)

    def reset(self) -> Sandbox:
        """End leftover sessions, drop the schema and create it empty."""
        with self.connect("admin") as conn:
            self.end_sessions(conn)
            conn.execute("SET lock_timeout = '10s'")
            try:
                conn.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(self.schema)))
                conn.execute(sql.SQL("CREATE SCHEMA {}").format(sql.Identifier(self.schema)))
            except psycopg.errors.LockNotAvailable:
                raise ZdlabError(
                    f"Could not reset schema {self.schema}: another session holds a lock on it "
                    f"(not one of this notebook's). Look in pg_stat_activity for it, or run "
                    f"`zdlab reset`.") from None
        return self

    def drop(self) -> None:
        with self.connect("admin") as conn:
            self.end_sessions(conn)
            conn.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(self.schema)))

    def __enter__(self) -> Sandbox:
        return self

    def __exit__(self, *exc: object) -> None:
        self.drop()


def sandbox(name: str, *, reset: bool = True, url: str | None = None) -> Sandbox:
    """The sandbox called ``name``, reset to an empty schema unless ``reset=False``."""
    box = Sandbox(name, url)
    return box.reset() if reset else box


def all_sandboxes(conn: psycopg.Connection) -> list[str]:
    return [r[0] for r in conn.execute(
        "SELECT nspname FROM pg_namespace WHERE nspname LIKE 'zd\\_%' ORDER BY 1")]
