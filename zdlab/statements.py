"""Split a migration file into statements, the way psql would run them one by one."""

from __future__ import annotations

import re
from pathlib import Path

import sqlparse

from .errors import BadInput

_TX_START = re.compile(r"^(BEGIN|START\s+TRANSACTION)\b", re.I)
_TX_END = re.compile(r"^(COMMIT|END|ROLLBACK|ABORT)\b", re.I)


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


def read_file(path: str | Path) -> str:
    """The text of a migration file, or a BadInput saying why it cannot be used."""
    p = Path(path)
    if not p.exists():
        raise BadInput(f"{p}: no such file. Give the path of a .sql migration file.")
    if p.is_dir():
        raise BadInput(f"{p} is a folder; give the path of one .sql migration file.")
    try:
        text = p.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise BadInput(f"{p} cannot be read ({exc}). Check its permissions and that it is UTF-8 text.") from None
    if not split(text):
        raise BadInput(f"{p} holds no SQL statement (it is empty or only comments). Nothing to run.")
    return text
