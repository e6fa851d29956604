"""What one migration statement did to its table, in the server's and the catalog's own words.

    with sb.connect("migration") as mig, zdlab.traffic(sb) as t:
        watch = StatementWatch(t, mig, "users")    # DEBUG1 messages on, then a baseline of traffic
        added = watch.run("ALTER TABLE users ADD COLUMN plan text NOT NULL DEFAULT 'free'", recover=400)
    added.rewrote, added.said                      # a new relfilenode? what the server said at DEBUG1
    t.report().during(added.span)                  # what it did to the app (zdlab.report)

PostgreSQL reports at DEBUG1 when an ALTER TABLE rewrites a table (``rewriting table "users"``),
when it scans one to check a constraint (``verifying table "users"``), and when it skips that
scan (``existing constraints on column ... are sufficient to prove ...``): the most direct proof
there is. A rewrite writes the table to a new file, so a changed ``pg_class.relfilenode`` proves
one too.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import psycopg

from .records import Span
from .traffic import Traffic


def filenode(conn: psycopg.Connection, table: str) -> int:
    """The table's file on disk (``pg_relation_filenode``): a rewrite gives it a new one."""
    return conn.execute("SELECT pg_relation_filenode(%s::regclass)", [table]).fetchone()[0]


def default_stored_once(conn: psycopg.Connection, table: str, column: str) -> bool:
    """``pg_attribute.atthasmissing``: the column's default is stored once, in the catalog, not in the rows.

    Read it at once: a later rewrite stores the value in every row and clears it."""
    row = conn.execute("SELECT atthasmissing FROM pg_attribute WHERE attrelid = %s::regclass AND attname = %s",
                       [table, column]).fetchone()
    return bool(row and row[0])


@dataclass
class Effect:
    """One statement's span on the traffic timeline, whether it rewrote the table, what the server said."""

    span: Span
    rewrote: bool
    said: list[str] = field(default_factory=list)  # DEBUG1 messages about tables and constraints

    def said_about(self, start: str) -> list[str]:
        """The server's messages that begin with ``start`` (``"rewriting table"``, ``"verifying table"``)."""
        return [m for m in self.said if m.startswith(start)]

    def line(self) -> str:
        """Duration, new file or not, the statement, and below it what the server said."""
        said = "".join(f"\n{'':>28}server: {m}" for m in self.said)
        return (f"{self.span.duration_ms or 0:>7,.0f} ms  {'new file' if self.rewrote else 'same file':<9}  "
                f"{self.span.label}{said}")


class StatementWatch:
    """Run migration statements on ``conn`` under the traffic ``t``, each observed as an ``Effect``.

    Turns on ``client_min_messages = debug1`` on ``conn`` and collects what the server says, then
    lets the application serve a baseline of requests before the first statement."""

    def __init__(self, t: Traffic, conn: psycopg.Connection, table: str = "users", *, baseline: int = 400) -> None:
        self.t, self.conn, self.table = t, conn, table
        self._said: list[str] = []
        conn.add_notice_handler(lambda diag: self._said.append(diag.message_primary or ""))
        conn.execute("SET client_min_messages = debug1")
        t.let_run(baseline)

    def run(self, step: str | Callable[[psycopg.Connection], object], label: str | None = None, *,
            recover: int = 0) -> Effect:
        """Run one SQL statement (or a function of the connection), timed on the traffic's timeline.

        A database error is raised (a demo must not carry on past it). ``recover``: requests the
        app serves afterwards, before the next statement, so each one's effect stands apart."""
        before = filenode(self.conn, self.table)
        self._said.clear()
        if isinstance(step, str):
            span = self.t.run(self.conn, step, label=label, raise_errors=True)
        else:
            with self.t.statement(label or f"{getattr(step, '__name__', 'step')}()", conn=self.conn) as span:
                step(self.conn)
        said = [m for m in self._said if "table" in m or "constraints" in m]
        effect = Effect(span, filenode(self.conn, self.table) != before, said)
        if recover:
            self.t.let_run(recover)
        return effect
