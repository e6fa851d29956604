"""One exception type for everything a learner can get wrong.

A ZdlabError carries a short paragraph (what happened, what to do). In a notebook
IPython shows only that paragraph (``_render_traceback_``); the command line prints it
and exits non-zero. Neither shows a traceback from our code.
"""

from __future__ import annotations


class ZdlabError(Exception):
    """An error with a message written for a person, not a stack trace."""

    exit_code = 1

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    def _render_traceback_(self) -> list[str]:
        # IPython calls this instead of printing the traceback.
        return [f"\x1b[31m{type(self).__name__}\x1b[0m: {self.message}"]


class BadInput(ZdlabError):
    """The user gave us something we cannot use (a missing file, an empty migration)."""

    exit_code = 2


def first_line(exc: BaseException) -> str:
    """The first line of an error's message (Postgres adds DETAIL/HINT lines), or its type."""
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0]
