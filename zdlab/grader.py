"""Learner SQL under least privilege: what an exercise checker runs of the learner's answer.

Two layers, so that an answer can neither escape the check nor outlive it:

- ``vet()`` reads every statement before any runs, and refuses what an answer never needs:
  transaction control where the check runs the answer in a transaction of its own (a COMMIT
  would keep its effects), SET/RESET of anything but ``lock_timeout`` (the check's timeouts
  stay), ``set_config()``, changes to roles, databases or the server, COPY to or from files
  and programs, DO blocks. One answer that should be one query must be one statement.
- ``connect()`` opens the connection the answer runs on as a role that is not a superuser and
  owns only that sandbox's schema. When the kit's own URL is a superuser's (the embedded
  server, a Docker database), that role is made per sandbox (``zdg_<hash>``, a password derived
  from the admin's, so concurrent kernels agree) and the sandbox's objects are handed to it.
  When the URL is already a plain role (a room provisioned with tools/provision_room.py), the
  answer runs as that role, which owns only the learner's database.

What the database itself refuses (``permission denied``, ``must be owner``) reads as
"not allowed" too: ``explain()``.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
import re
import secrets
from urllib.parse import quote, urlsplit, urlunsplit

import psycopg
from psycopg import sql

from . import config, db, statements
from .errors import ZdlabError, first_line
from .sandbox import Sandbox

ROLE_PREFIX = "zdg_"
# Role-level defaults: SET and set_config are refused in answers, so they hold for the session.
ROLE_SETTINGS = {"statement_timeout": "1min", "idle_in_transaction_session_timeout": "1min",
                 "temp_file_limit": "2GB"}
ROLE_CONNECTIONS = 40  # traffic workers + migration + checks of one sandbox

_TX = re.compile(r"^(BEGIN|START\s+TRANSACTION|COMMIT|END|ROLLBACK|ABORT|SAVEPOINT|RELEASE)\b", re.I)
_ALWAYS_REFUSED = [
    (re.compile(r"^(PREPARE\s+TRANSACTION|COMMIT\s+PREPARED|ROLLBACK\s+PREPARED)\b", re.I), "two-phase commit"),
    (re.compile(r"^(SET|RESET)\s+(SESSION\s+|LOCAL\s+)?(ROLE|SESSION\s+AUTHORIZATION)\b", re.I), "changing role"),
    (re.compile(r"^(CREATE|ALTER|DROP)\s+(ROLE|USER|GROUP|DATABASE|TABLESPACE|EXTENSION|SUBSCRIPTION"
                r"|PUBLICATION|EVENT\s+TRIGGER|LANGUAGE|SERVER|FOREIGN\s+DATA)\b", re.I),
     "changing roles, databases or the server"),
    (re.compile(r"^ALTER\s+SYSTEM\b", re.I), "changing the server's configuration"),
    (re.compile(r"^(DO|LOAD|GRANT|REVOKE|REASSIGN|SECURITY\s+LABEL|LISTEN|NOTIFY|CHECKPOINT)\b", re.I),
     "this command"),
    (re.compile(r"^COPY\b.*\b(PROGRAM|TO\s+'|FROM\s+')", re.I | re.S), "COPY to or from a file or program"),
]
_SET = re.compile(r"^(SET|RESET)\s+(SESSION\s+|LOCAL\s+)?(\w+)", re.I)
_ANYWHERE = [
    (re.compile(r"\bset_config\s*\(", re.I), "set_config()"),
    (re.compile(r"\b(pg_terminate_backend|pg_cancel_backend|pg_reload_conf|pg_read_file|pg_read_binary_file"
                r"|pg_ls_dir|lo_import|lo_export|dblink\w*)\s*\(", re.I), "server functions"),
]
SETTABLE = {"lock_timeout"}  # what a migration step may SET: its own wait for a lock


class NotAllowed(Exception):
    """The answer holds something a check does not run; the message says what and why."""


def vet(stmts: list[str], what: str, *, one: bool = False, transactions: bool = False) -> list[str]:
    """Refuse an answer before any of it runs (see the module docstring); the statements."""
    if one and len(stmts) > 1:
        raise NotAllowed(f"not allowed in {what}: {len(stmts)} statements (the check runs one query only; keep "
                         f"only the SELECT). Nothing of it was run.")
    for stmt in stmts:
        bare = statements._bare(stmt)
        shown = statements.short_sql(bare, 50)
        why = None
        if _TX.match(bare) and not transactions:
            why = ("transaction control: the check runs your SQL in a transaction of its own and rolls it "
                   "back; leave BEGIN, COMMIT and ROLLBACK out")
        setting = _SET.match(bare)
        if setting and setting.group(3).lower() not in SETTABLE:
            why = (f"changing the setting {setting.group(3)} (the check's time limits stay as they are; "
                   f"only lock_timeout may be set)")
        for pattern, label in _ALWAYS_REFUSED:
            if pattern.match(bare):
                why = f"{label}, which an answer never needs"
        for pattern, label in _ANYWHERE:
            if pattern.search(bare):
                why = f"{label}, which an answer never needs"
        if why:
            raise NotAllowed(f"not allowed in {what}: {shown!r} ({why}). Nothing of it was run.")
    return stmts


def explain(exc: psycopg.Error) -> str | None:
    """'not allowed: ...' for what the database refused the learner's role, else None."""
    if isinstance(exc, psycopg.errors.InsufficientPrivilege):
        return (f"not allowed: {first_line(exc)} (your SQL runs as a role that may change only this "
                f"sandbox's own schema).")
    return None


# -- the role ------------------------------------------------------------------------------------

_PROCESS_KEY = secrets.token_bytes(32)  # when the admin URL carries no password to derive from


def role_name(database: str, schema: str) -> str:
    return ROLE_PREFIX + hashlib.sha1(f"{database}/{schema}".encode()).hexdigest()[:24]


def _secret(admin_url: str, role: str) -> str:
    key = (config.url_password(admin_url) or "").encode() or _PROCESS_KEY
    return hmac.new(key, role.encode(), hashlib.sha256).hexdigest()


def scram_verifier(password: str, iterations: int = 4096) -> str:
    """A SCRAM-SHA-256 verifier (what PostgreSQL stores), so the password is never sent as text
    and never appears in a server log."""
    salt = os.urandom(16)
    salted = hashlib.pbkdf2_hmac("sha256", password.encode(), salt, iterations)
    client = hmac.new(salted, b"Client Key", hashlib.sha256).digest()
    server = hmac.new(salted, b"Server Key", hashlib.sha256).digest()
    b64 = base64.b64encode
    return (f"SCRAM-SHA-256${iterations}:{b64(salt).decode()}$"
            f"{b64(hashlib.sha256(client).digest()).decode()}:{b64(server).decode()}")


def _is_superuser(conn: psycopg.Connection) -> bool:
    return bool(conn.execute("SELECT rolsuper FROM pg_roles WHERE rolname = current_user").fetchone()[0])


def _ensure_role(admin: psycopg.Connection, role: str, password: str) -> None:
    ident = sql.Identifier(role)
    if not admin.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", [role]).fetchone():
        try:
            admin.execute(sql.SQL("CREATE ROLE {} LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOREPLICATION "
                                  "NOBYPASSRLS NOINHERIT CONNECTION LIMIT {}").format(
                ident, sql.Literal(ROLE_CONNECTIONS)))
        except (psycopg.errors.DuplicateObject, psycopg.errors.UniqueViolation):
            pass  # another kernel made it a moment ago
    admin.execute(sql.SQL("ALTER ROLE {} PASSWORD {}").format(ident, sql.Literal(scram_verifier(password))))
    for name, value in ROLE_SETTINGS.items():
        admin.execute(sql.SQL("ALTER ROLE {} SET {} = {}").format(ident, sql.Identifier(name), sql.Literal(value)))


_KINDS = {"r": "TABLE", "p": "TABLE", "v": "VIEW", "m": "MATERIALIZED VIEW", "f": "FOREIGN TABLE", "S": "SEQUENCE"}


def hand_over(admin: psycopg.Connection, schema: str, role: str) -> None:
    """Make ``role`` the owner of ``schema`` and everything in it (DDL needs the owner).

    Run before traffic starts: ALTER ... OWNER takes a brief exclusive lock on each table, so a
    session left holding a lock there (an open transaction in a notebook) would make it wait:
    bounded by a lock_timeout, with a message that says what to do.
    """
    with admin.transaction():
        admin.execute("SET LOCAL lock_timeout = '10s'")
        try:
            _hand_over(admin, schema, role)
        except psycopg.errors.LockNotAvailable:
            raise ZdlabError(f"The check could not take over the tables of {schema}: another session holds a "
                             f"lock on one of them (an open transaction in a notebook?). `zdlab doctor` lists "
                             f"it; end it (or run the notebook's first cell again), then run the check again."
                             ) from None


def _hand_over(admin: psycopg.Connection, schema: str, role: str) -> None:
    admin.execute(sql.SQL("ALTER SCHEMA {} OWNER TO {}").format(sql.Identifier(schema), sql.Identifier(role)))
    rels = admin.execute(
        "SELECT c.relname, c.relkind FROM pg_class c WHERE c.relnamespace = to_regnamespace(%s) "
        "AND c.relkind IN ('r','p','v','m','f','S') AND c.relowner <> to_regrole(%s) AND NOT EXISTS ("
        "  SELECT 1 FROM pg_depend d WHERE d.classid = 'pg_class'::regclass AND d.objid = c.oid "
        "  AND d.deptype IN ('a', 'i'))",  # a column's sequence goes with its table
        [schema, quote_ident(role)]).fetchall()
    for name, kind in rels:
        admin.execute(sql.SQL("ALTER {} {} OWNER TO {}").format(
            sql.SQL(_KINDS[kind]), sql.Identifier(schema, name), sql.Identifier(role)))
    for (sig,) in admin.execute(
            "SELECT p.oid::regprocedure::text FROM pg_proc p WHERE p.pronamespace = to_regnamespace(%s) "
            "AND p.proowner <> to_regrole(%s)", [schema, quote_ident(role)]).fetchall():
        admin.execute(sql.SQL("ALTER ROUTINE {} OWNER TO {}").format(sql.SQL(sig), sql.Identifier(role)))


def quote_ident(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def _login_url(url: str, role: str, password: str) -> str:
    parts = urlsplit(url)
    host = parts.netloc.rpartition("@")[2]
    return urlunsplit((parts.scheme, f"{quote(role, safe='')}:{quote(password, safe='')}@{host}",
                       parts.path, parts.query, ""))


def connect(box: Sandbox, role: str = "check", *, autocommit: bool = True, **kwargs) -> psycopg.Connection:
    """A connection of ``box`` on which learner SQL runs, as a role with no privilege beyond
    its sandbox (see the module docstring)."""
    with box.connect("admin") as admin:
        if not _is_superuser(admin):
            # Already a plain role (a provisioned room): it owns only the learner's database.
            return box.connect(role, autocommit=autocommit, **kwargs)
        database = admin.info.dbname
        name = role_name(database, box.schema)
        password = _secret(box.url, name)
        _ensure_role(admin, name, password)
        hand_over(admin, box.schema, name)
    return db.connect_url(_login_url(box.url, name, password), autocommit=autocommit,
                          application_name=box.app_name(role),
                          options=f"-c search_path={box.schema},public", **kwargs)

