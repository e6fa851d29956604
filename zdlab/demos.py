"""Small instruments for the notebooks' live corrections: each returns evidence that does not
depend on machine speed (lock modes from pg_locks, which request kinds waited, which failed).

    if needs_version(conn, 120000, "REINDEX CONCURRENTLY"): ...   # else prints why it skips
    waits = waits_behind(sb, ["REINDEX INDEX i"], {"read": "SELECT ..."})   # pg_locks, no traffic
    queued = queue_behind(sb, "UPDATE users SET name = name WHERE id = 0", statements)  # traffic
    apps = prepared_star_apps()   # one app in autocommit, one in transactions: SELECT * prepared
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field

import psycopg

from .errors import ZdlabError
from .sandbox import Sandbox
from .traffic import AppVersion, RequestContext, describe_error, traffic

POLL_S = 0.005  # pg_locks poll: a wait of a few hundred ms is seen dozens of times


def needs_version(server: psycopg.Connection | int, num: int, feature: str) -> bool:
    """True when the server (a connection, or its server_version_num) is at least ``num``; otherwise
    print why the cell skips."""
    have = server if isinstance(server, int) else int(server.execute("SHOW server_version_num").fetchone()[0])
    if have >= num:
        return True
    print(f"SKIPPED: {feature} needs PostgreSQL {num // 10000} or newer; this server is {have // 10000}. "
          f"The kit is tested on PostgreSQL 15 and 18.")
    return False


@dataclass
class Wait:
    """What one probe statement waited for while the holder's transaction stayed open."""

    sql: str
    waited: bool = False
    mode: str | None = None  # the lock mode it asked for and did not get
    relation: str | None = None  # the table or index (or the lock type, for a transaction id)
    error: str | None = None

    def __str__(self) -> str:
        if not self.waited:
            return f"did not wait ({self.error or 'ran at once'})"
        return f"waited for {self.mode} on {self.relation}"


def _first_wait(watch: psycopg.Connection, pid: int) -> tuple[str, str] | None:
    return watch.execute("SELECT mode, coalesce(relation::regclass::text, locktype) FROM pg_locks "
                         "WHERE pid = %s AND NOT granted LIMIT 1", [pid]).fetchone()


def waits_behind(sb: Sandbox, hold: list[str], probes: dict[str, str], *,
                 probe_timeout: str = "500ms") -> dict[str, Wait]:
    """Run ``hold`` in a transaction left open, then each probe from another session; what it waited for.

    Each probe runs with ``lock_timeout = probe_timeout``, so a blocked probe gives up; while it
    waits, a third session reads from ``pg_locks`` the lock it asked for. The holder is rolled back.
    """
    out: dict[str, Wait] = {}
    with sb.connect("holder", autocommit=False) as holder, sb.connect("probe") as probe, \
            sb.connect("watch", prepare_threshold=None) as watch:
        for stmt in hold:
            holder.execute(stmt, prepare=False)
        probe.execute("SELECT set_config('lock_timeout', %s, false)", [probe_timeout])
        try:
            for label, sql in probes.items():
                res = out[label] = Wait(sql)
                done = threading.Event()

                def run(sql: str = sql, res: Wait = res, done: threading.Event = done) -> None:
                    try:
                        probe.execute(sql, prepare=False)
                    except psycopg.Error as exc:
                        res.error = describe_error(exc)
                    finally:
                        done.set()

                thread = threading.Thread(target=run, daemon=True)
                thread.start()
                while not done.is_set():
                    seen = _first_wait(watch, probe.info.backend_pid)
                    if seen and not res.waited:
                        res.waited, (res.mode, res.relation) = True, seen
                    done.wait(POLL_S)
                thread.join()
        finally:
            holder.rollback()
    return out


@dataclass
class Queued:
    """One statement queued behind the same open transaction, under traffic."""

    label: str
    sql: str
    waited_for: tuple[str, str] | None = None  # (mode, relation) the statement itself waited for
    kinds_queued: set[str] = field(default_factory=set)  # app request kinds that waited on the statement
    modes: set[tuple[str, str]] = field(default_factory=set)  # (wanted by the app, held/wanted by it)
    failed_requests: int = 0
    error: str | None = None


def _read_user(conn: psycopg.Connection, ctx: RequestContext) -> None:
    conn.execute("SELECT id, email, name FROM users WHERE id = %s", [ctx.user_id]).fetchall()


def _update_user(conn: psycopg.Connection, ctx: RequestContext) -> None:
    conn.execute("UPDATE users SET name = name WHERE id = %s", [ctx.user_id])


# Pods that each send one kind of request: a pod stuck behind a lock is stuck on its own kind, so
# which kinds queued does not depend on what each pod happened to be doing at that moment.
READERS_AND_WRITERS = [AppVersion("reader", {"read_user": _read_user}),
                       AppVersion("writer", {"update_user": _update_user})]


def queue_behind(sb: Sandbox, hold_sql: str, statements: dict[str, str], *, hold_s: float = 1.0,
                 apps: list[AppVersion] | None = None) -> list[Queued]:
    """Each statement in turn, under traffic (``apps``: two pods reading ``users``, two updating it),
    behind a session that ran ``hold_sql`` and stays idle in transaction; the holder ends ``hold_s``
    after the statement is seen waiting (the scenario's length, not a measurement). Returns, per
    statement, the lock it waited for and the request kinds that queued behind it (blocking-chain
    edges whose blocker is the migration), with the lock modes."""
    out = []
    for label, sql in statements.items():
        res = Queued(label, sql)
        with sb.connect("migration") as mig, sb.connect("watch", prepare_threshold=None) as watch, \
                traffic(sb, apps=apps or READERS_AND_WRITERS) as t:
            if not t.wait_for_requests(40):
                raise ZdlabError("The simulated application did not start; see zdlab doctor.")
            with sb.connect("long-tx", autocommit=False) as holder:
                holder.execute(hold_sql, prepare=False)
                # t.run records a database error on its span instead of raising.
                thread = threading.Thread(target=t.run, args=(mig, sql), kwargs={"label": label}, daemon=True)
                thread.start()
                release_at = None
                while thread.is_alive():
                    now = time.monotonic()
                    seen = _first_wait(watch, mig.info.backend_pid)
                    if seen and res.waited_for is None:
                        res.waited_for = seen
                    if (seen or res.waited_for) and release_at is None:
                        release_at = now + hold_s
                    if release_at is not None and now >= release_at:
                        holder.rollback()
                    thread.join(POLL_S)
                holder.rollback()
            t.wait_for_requests(len(t.requests) + 40)
        report = t.report()
        res.error = t.spans[-1].error if t.spans else None
        for edge in report.blocking_chain:
            if edge["blocker"] == "migration":
                res.kinds_queued.add(edge["waiter"].split(".")[-1])  # "reader.read_user" -> "read_user"
                res.modes.add((edge["wanted_mode"] or "?", edge["blocker_mode"] or "?"))
        res.failed_requests = report.failed_requests
        out.append(res)
    return out


def prepared_star_apps(table: str = "users") -> tuple[AppVersion, AppVersion]:
    """Two apps reading ``SELECT * FROM <table> WHERE id = %s``, prepared by psycopg 3 after 5 runs:
    ``autocommit`` runs it alone (the kit's simulated app), ``transaction`` inside BEGIN ... COMMIT
    (psycopg 3's ``conn.transaction()``: a failure there ends in ROLLBACK)."""
    from psycopg import sql as pgsql
    from psycopg.types.numeric import Int8

    query = pgsql.SQL("SELECT * FROM {} WHERE id = %s").format(pgsql.Identifier(table))

    # psycopg 3 sends a Python int as int2, int4 or int8 by its size, and keeps one prepared
    # statement per parameter type: ids under 32768 would be a second statement, prepared (with
    # the new columns) only after five of them, long after the others. One type, one statement.
    def autocommit(conn: psycopg.Connection, ctx: RequestContext) -> None:
        conn.execute(query, [Int8(ctx.user_id)]).fetchall()

    def in_transaction(conn: psycopg.Connection, ctx: RequestContext) -> None:
        with conn.transaction():
            conn.execute(query, [Int8(ctx.user_id)]).fetchall()

    return (AppVersion("autocommit", {"read_user": autocommit}),
            AppVersion("transaction", {"read_user": in_transaction}))
