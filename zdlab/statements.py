"""Split a migration file into statements, the way psql would run them one by one; read and
check what a user gives as a migration (a file, or SQL text) before anything is seeded."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import sqlparse

from .errors import BadInput

_TX_START = re.compile(r"^(BEGIN|START\s+TRANSACTION)\b", re.I)
_TX_END = re.compile(r"^(COMMIT|END|ROLLBACK|ABORT)\b", re.I)

# The first word of every PostgreSQL command (the manual's "SQL Commands" chapter). A statement
# that starts with anything else is prose, a psql meta-command or a typo, caught before seeding.
SQL_COMMANDS = frozenset("""
ABORT ALTER ANALYSE ANALYZE BEGIN CALL CHECKPOINT CLOSE CLUSTER COMMENT COMMIT COPY CREATE
DEALLOCATE DECLARE DELETE DISCARD DO DROP END EXECUTE EXPLAIN FETCH GRANT IMPORT INSERT LISTEN
LOAD LOCK MERGE MOVE NOTIFY PREPARE REASSIGN REFRESH REINDEX RELEASE RESET REVOKE ROLLBACK
SAVEPOINT SECURITY SELECT SET SHOW START TABLE TRUNCATE UNLISTEN UPDATE VACUUM VALUES WITH
""".split())
_FIRST_WORD = re.compile(r"^[(\s]*([A-Za-z_]\w*)")


def split(sql: str) -> list[str]:
    """Statements without trailing semicolons; comment-only pieces dropped."""
    out = []
    for piece in sqlparse.split(sql):
        body = sqlparse.format(piece, strip_comments=True).strip().rstrip(";").strip()
        if body:
            out.append(piece.strip().rstrip(";").strip())
    return out


def short_sql(sql: str, width: int = 60) -> str:
    """One line, at most ``width`` characters: a statement as a label or in a message."""
    flat = " ".join(sql.split())
    return flat if len(flat) <= width else flat[: width - 1] + "…"


def is_begin(stmt: str) -> bool:
    return bool(_TX_START.match(_bare(stmt)))


def is_end(stmt: str) -> bool:
    return bool(_TX_END.match(_bare(stmt)))


def _bare(stmt: str) -> str:
    return sqlparse.format(stmt, strip_comments=True).strip()


def check_sql(text: str, source: str = "the migration") -> list[str]:
    """The statements of ``text``, or a BadInput saying why it is no migration (nothing is run).

    ``source`` names it in messages: a file's path, or "the migration", "setup_sql".
    """
    if "\x00" in text:  # libpq would silently cut the query at the first NUL byte
        raise BadInput(f"{source} holds NUL bytes: it is a binary file, not SQL text. Give a .sql file "
                       f"of SQL statements separated by semicolons.")
    stmts = split(text)
    if not stmts:
        raise BadInput(f"{source} holds no SQL statement (it is empty or only comments): nothing to run. "
                       f"Write at least one statement, for example ALTER TABLE users ADD COLUMN note text;")
    for i, stmt in enumerate(stmts, 1):
        match = _FIRST_WORD.match(_bare(stmt))
        if match is None or match.group(1).upper() not in SQL_COMMANDS:
            word = match.group(1) if match else _bare(stmt)[:1]
            looks_like = (" (a psql meta-command: the kit runs SQL only)" if word == "\\"
                          else " (a file name? pass pathlib.Path(...) to read a file)"
                          if len(stmts) == 1 and re.fullmatch(r"\S+\.sql", stmt.strip(), re.I) else "")
            raise BadInput(f"statement {i} of {source} does not start with a SQL command: "
                           f"{short_sql(stmt)!r} begins with {word!r}{looks_like}. Fix that statement (a typo "
                           f"in its first word?) and run it again; statements are separated by semicolons.")
    return stmts


def read_file(path: str | Path) -> str:
    """The text of a migration file, or a BadInput saying why it cannot be used."""
    p = Path(path)
    if not p.exists():
        raise BadInput(f"{p}: no such file. Give the path of a .sql migration file.")
    if p.is_dir():
        raise BadInput(f"{p} is a folder; give the path of one .sql migration file.")
    try:
        text = p.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise BadInput(f"{p} is not UTF-8 text (a binary file?). Give a .sql file of SQL statements, "
                       f"saved as UTF-8.") from None
    except OSError as exc:
        raise BadInput(f"{p} cannot be read ({exc.strerror}). Check its permissions, or give another "
                       f".sql file.") from None
    check_sql(text, str(p))
    return text


def migration_text(sql: Any, what: str = "the migration") -> str:
    """SQL text given to the Python API (a str, or a ``pathlib.Path`` to read), checked like a file."""
    if isinstance(sql, Path):
        return read_file(sql)
    if isinstance(sql, bytes | bytearray):
        raise BadInput(f"{what} is bytes, not SQL text. Decode it first: data.decode('utf-8').")
    if not isinstance(sql, str):
        raise BadInput(f"{what} should be SQL text (a str) or a pathlib.Path to a .sql file, not "
                       f"{type(sql).__name__}. Pass the SQL itself, or Path(\"migration.sql\") for a file.")
    check_sql(sql, what)
    return sql
