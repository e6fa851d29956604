"""Exercises for the notebooks: ``check()``, ``hint()`` and ``solution()`` for every question.

In a notebook (learntools style)::

    from zdlab.exercises.nb00 import ex      # this notebook's exercises
    answer_sql = "SELECT ..."                # the learner's answer, in a named variable
    ex.q1.check()                            # correct / incorrect (with why) / not attempted yet
    ex.q1.hint()                             # ex.q1.hint(2), ex.q1.hint(3): more and more help
    ex.q1.solution()                         # where the worked answer is, and its code

How it fits together:

- ``Exercise`` is the base class of one question. A subclass names the notebook variables it
  reads (``answers``), gives ``hints``, and writes ``grade(box, **answers)``: it queries the
  database (pg_catalog, pg_stat_activity, row counts), returns the success message, or raises
  ``Incorrect("what is wrong, in one sentence")``. Run the learner's SQL with ``run_learner_sql``
  so that a typo becomes "incorrect: your query failed: ..." instead of a traceback.
- ``check()`` reads those variables from the caller's globals (the notebook); the learner's copy
  sets each to ``...`` (tools/make_notebooks.py), which, like an undefined name, is "not attempted yet".
  Each exercise of a notebook therefore uses variable names of its own (``answer_sql``,
  ``answer_index_sql``...). Tests pass them explicitly: ``ex.q1.check(answer_sql=..., sandbox=box)``.
- ``Notebook("00_setup", q1=..., q2=...)`` groups one notebook's exercises, binds them to
  that notebook's sandbox (``zdlab.sandbox("00_setup")``) and to ``solutions/00_setup.ipynb``,
  and registers itself in ``NOTEBOOKS``.
- One place per notebook: notebook ``NN_name`` has ``zdlab/exercises/nbNN.py`` defining
  ``ex = Notebook("NN_name", ...)`` with subclasses of ``Exercise`` from here, and its notebook
  does ``from zdlab.exercises.nbNN import ex``.
- ``ZDLAB_STRICT_CHECKS=1`` (the test suite sets it for notebook kernels): an incorrect result
  raises ``AssertionError``, so a solution notebook with a wrong answer fails the suite
  (tests/test_notebook_order.py). A
  not-attempted result never raises: the learner's copy must run clean.
- ``evaluate()`` is ``check()`` without display and without strict mode: for self-tests of a
  checker on known-wrong answers (cells tagged ``solution-only``, dropped from the learner's copy).
"""

from __future__ import annotations

import html
import inspect
import json
import re
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Literal

import psycopg

from . import config, grader, registry, statements
from .errors import ZdlabError, first_line
from .sandbox import Sandbox

if TYPE_CHECKING:
    from .report import Report

Status = Literal["correct", "incorrect", "not_attempted"]

STRICT_ENV = config.STRICT_ENV
LEARNER_TIMEOUT = "10s"  # a runaway learner query must not hang the check cell

_MISSING = object()
_NOTE_STYLE = "border-left:3px solid #9a6700;padding:0.2em 0.6em;white-space:normal"  # hints, solutions
_STYLE = {  # symbol, title, colour
    "correct": ("✓", "Correct", "#1a7f37"),
    "incorrect": ("✗", "Incorrect", "#cf222e"),
    "not_attempted": ("…", "Not attempted yet", "#9a6700"),
}


class Incorrect(Exception):
    """Raised by ``Exercise.grade`` with one sentence saying what is wrong."""


class CouldNotCheck(Exception):
    """Raised when the checker itself cannot run (database down, sandbox missing)."""


@dataclass
class Result:
    """What ``check()`` found. ``bool(result)`` is True only when correct."""

    status: Status
    message: str
    exercise: str = ""
    _shown_in: int | None = field(default=None, repr=False, compare=False)

    def __bool__(self) -> bool:
        return self.status == "correct"

    def text(self) -> str:
        symbol, title, _ = _STYLE[self.status]
        return f"{symbol} {title}: {self.message}"

    def _repr_html_(self) -> str:
        symbol, title, colour = _STYLE[self.status]
        return (f'<div style="color:{colour}"><b>{symbol} {title}</b>'
                f'{" (" + html.escape(self.exercise) + ")" if self.exercise else ""}: '
                f'{html.escape(self.message)}</div>')

    def _ipython_display_(self) -> None:
        from IPython import get_ipython
        from IPython.display import display

        ip = get_ipython()
        # check() has already shown this result in this cell; do not echo it a second time.
        if ip is not None and self._shown_in == ip.execution_count:
            return
        display({"text/plain": self.text(), "text/html": self._repr_html_()}, raw=True)

    def show(self) -> None:
        """Display in Jupyter (coloured HTML), print elsewhere."""
        self._shown_in = show(self.text(), self._repr_html_())


def show(plain: str, rich: str) -> int | None:
    """Display ``rich`` (HTML) in a notebook, ``plain`` in other front ends; print ``plain`` outside
    IPython. HTML wraps at word boundaries, where a long plain-text line is cut mid-word.
    Returns the cell's execution count when displayed in IPython."""
    try:
        from IPython import get_ipython
        from IPython.display import display
    except ImportError:  # plain Python without IPython
        print(plain)
        return None
    ip = get_ipython()
    if ip is None:
        print(plain)
        return None
    display({"text/plain": plain, "text/html": rich}, raw=True)
    return ip.execution_count


def prose_html(text: str) -> str:
    """Escaped text for HTML, with `backticked` words as code."""
    return re.sub(r"`([^`]+)`", r"<code>\1</code>", html.escape(text))


def require_unnoticed(report: Report, what: str = "your steps") -> str:
    """Raise ``Incorrect`` unless the app did not notice the run (``zdlab.judge``'s verdict).

    Returns one line saying what was measured against what, for the success message."""
    j = report.judgement
    if j is None:
        raise CouldNotCheck("the run was not judged: this is a bug in the checker.")
    if j.verdict in ("breaking", "blocking"):
        who = f" Longest wait: {report.blocking_chain[0]['edge']}." if report.blocking_chain else ""
        raise Incorrect(f"the application noticed {what}: {j.reasons[0]}.{who}")
    return (f"the longest app wait on the migration was {j.stall_ms:,.0f} ms against this run's noise of "
            f"{j.limit_ms:,.0f} ms, and no statement blocked for its whole run")


def require_ran(report: Report, what: str = "your SQL failed") -> None:
    """Raise ``Incorrect`` with what the run's first failed statement said, if one failed."""
    failed = next((s["error"] for s in report.statements if s["error"]), None)
    if failed:
        raise Incorrect(f"{what}: {failed}")


def require_no_failed_requests(report: Report, when: str = "") -> None:
    """Raise ``Incorrect`` if application requests failed during the run (``when``: " while ...")."""
    if report.failed_requests:
        worst = max(report.failures_by_error.items(), key=lambda kv: kv[1])[0]
        raise Incorrect(f"{report.failed_requests} application requests failed{when}, for example: {worst}.")


def strict() -> bool:
    """True when incorrect answers must raise (the test suite's notebook kernels)."""
    return config.strict_checks()


def is_placeholder(value: Any) -> bool:
    """No answer given yet: missing, None, ``...``, an empty string or the untouched template."""
    if value is _MISSING or value is None or value is Ellipsis:
        return True
    return isinstance(value, str) and (not value.strip() or "YOUR CODE HERE" in value)


def describe(value: Any) -> str:
    """A wrong answer as a message shows it: ``int 42``, ``function f``, ``list of 2 items``."""
    if callable(value):
        return f"function {getattr(value, '__name__', type(value).__name__)}"
    if isinstance(value, list | tuple | dict | set):
        return f"{type(value).__name__} of {len(value)} item(s)"
    return f"{type(value).__name__} {value!r:.40}"


def need_sql(name: str, value: Any, what: str = "SQL statements") -> list[str]:
    """The statements of an answer that must be SQL text, or ``Incorrect`` naming the variable."""
    if not isinstance(value, str):
        raise Incorrect(f"{name} should be a string of {what}, not {describe(value)}.")
    stmts = statements.split(value)
    if not stmts:
        raise Incorrect(f"{name} holds no SQL statement (only comments?): write {what}.")
    return stmts


def need_function(name: str, value: Any, params: str) -> Callable[..., Any]:
    """An answer that must be a function the checker calls with ``params`` (e.g. ``"conn, batch_size"``;
    keyword-only ones after ``*``): a clear ``Incorrect`` before anything runs, not a TypeError later."""
    if not callable(value):
        raise Incorrect(f"{name} should be your function taking ({params}), not {describe(value)}.")
    positional, _, keywords = params.partition("*")
    args = [p.strip() for p in positional.split(",") if p.strip()]
    kwargs = {k.strip(): None for k in keywords.split(",") if k.strip()}
    try:
        signature = inspect.signature(value)
    except (TypeError, ValueError):  # a builtin or C function: nothing to compare, it is called as is
        return value
    try:
        signature.bind(*args, **kwargs)
    except TypeError as exc:
        shown = getattr(value, "__name__", "it")
        raise Incorrect(f"{name} should be your function taking ({params}); yours is {shown}{signature}, "
                        f"which cannot be called that way ({exc}).") from None
    return value


def call_learner(what: str, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """Call the learner's function; an exception of its own (not a database error, which the caller
    judges) becomes ``Incorrect`` instead of "the checker failed"."""
    try:
        return fn(*args, **kwargs)
    except psycopg.Error:
        raise
    except Exception as exc:
        raise Incorrect(f"{what} raised {type(exc).__name__}: {first_line(exc)}. Run it on its own in a cell "
                        f"to see the traceback, fix it, then check again.") from None


def learner_step(name: str, call: Callable[[psycopg.Connection], Any],
                 seen: dict) -> Callable[[psycopg.Connection], None]:
    """``call`` (which calls the learner's function) as a ``zdlab.measure.measure_in`` step labelled
    ``name(conn)``. ``seen`` keeps what the runner does not: the exception it raised
    (``seen["error"]``; the span records only its text) and whether it left a transaction open
    (``seen["left_open"]``; the runner then rolls it back)."""
    def step(conn: psycopg.Connection) -> None:
        try:
            call(conn)
        except Exception as exc:
            seen["error"] = exc
            raise
        seen["left_open"] = conn.info.transaction_status != psycopg.pq.TransactionStatus.IDLE

    step.__name__ = name
    return step


def learner_failure(exc: BaseException, message: str) -> Incorrect:
    """What a learner step's exception (``learner_step``'s ``seen["error"]``) means for the check: an
    ``Incorrect`` already worded (``call_learner``'s) as it is, otherwise ``message`` with PostgreSQL's
    first line in place of ``{}``."""
    return exc if isinstance(exc, Incorrect) else Incorrect(message.format(first_line(exc)))


def limit_learner_time(conn: psycopg.Connection) -> None:
    """SET LOCAL statement_timeout = LEARNER_TIMEOUT (set_config: SET takes no query parameter)."""
    conn.execute("SELECT set_config('statement_timeout', %s, true)", [LEARNER_TIMEOUT])


def run_learner_sql(conn: psycopg.Connection, sql: Any) -> tuple[list[str], list[tuple]]:
    """Run the learner's query, one statement vetted by ``grader.vet``; return (column names, rows).
    A failure becomes ``Incorrect``. ``conn`` should come from ``grader.connect``."""
    if not isinstance(sql, str):
        raise Incorrect(f"the answer should be a string holding one SQL query, not {describe(sql)}.")
    stmts = grader.vet(need_sql("the answer", sql, "SQL (one SELECT query)"), "your query", one=True)
    try:
        cur = conn.execute(stmts[0])
    except psycopg.Error as exc:
        if conn.broken:
            raise  # the connection died: the checker could not run, not the learner's fault
        if isinstance(exc, psycopg.errors.QueryCanceled):
            raise Incorrect(f"your query ran longer than {LEARNER_TIMEOUT} and was cancelled.") from None
        first = grader.explain(exc) or f"your query failed: {first_line(exc)}"
        raise Incorrect(first) from None
    if cur.description is None:
        raise Incorrect("your SQL returned no rows at all: it should be one SELECT query.")
    return [c.name for c in cur.description], cur.fetchall()


class Exercise:
    """One question of one notebook. Subclass it; see the module docstring."""

    answers: ClassVar[tuple[str, ...]] = ("answer_sql",)  # notebook variables check() reads
    hints: ClassVar[tuple[str, ...]] = ()

    def __init__(self) -> None:
        self.notebook: Notebook | None = None
        self.name = type(self).__name__

    def __repr__(self) -> str:
        return f"<exercise {self.label}: .check()  .hint()  .solution()>"

    @property
    def label(self) -> str:
        return f"{self.notebook.name} {self.name}" if self.notebook else self.name

    # -- what subclasses write ---------------------------------------------------------
    def grade(self, box: Sandbox, **answers: Any) -> str:
        """Return the success message, or raise Incorrect; every answer is given (not placeholder)."""
        raise NotImplementedError

    # -- what notebooks call -------------------------------------------------------------
    def check(self, *, sandbox: Sandbox | None = None, **answers: Any) -> Result:
        """Grade the answer, show the verdict and return it (strict mode: raise when incorrect)."""
        result = self._evaluate(sys._getframe(1).f_globals, sandbox, answers)
        result.show()
        if result.status == "correct" and self.notebook is not None:
            from . import progress  # late: progress reads the exercise catalog from this module

            progress.record(self.notebook.name, self.name)  # never raises
        if result.status == "incorrect" and strict():
            raise AssertionError(f"{self.label}: {result.text()}")
        return result

    def evaluate(self, *, sandbox: Sandbox | None = None, **answers: Any) -> Result:
        """Grade without showing anything and without strict mode: for checker self-tests."""
        return self._evaluate(sys._getframe(1).f_globals, sandbox, answers)

    def hint(self, level: int = 1) -> None:
        """Print hint ``level`` (1 = a nudge, the last one = nearly the answer)."""
        if not self.hints:
            print(f"No hint for {self.label}.")
            return
        level = max(1, min(int(level), len(self.hints)))
        more = f"more: .hint({level + 1})" if level < len(self.hints) else "last hint; see .solution()"
        title, text = f"Hint {level} of {len(self.hints)}", self.hints[level - 1]
        show(f"{title}: {text}  ({more})",
             f'<div style="{_NOTE_STYLE}"><b>{title}:</b> {prose_html(text)} '
             f'<span style="color:#57606a">({html.escape(more)})</span></div>')

    def solution(self) -> None:
        """Print where the worked answer is and its code."""
        path = self.notebook.solutions_path() if self.notebook else None
        if path is None:
            print(f"No worked answer is registered for {self.label}.")
            return
        shown = _relative(path)
        code = solution_code(path, self.answers[0]) if path.exists() else None
        if code is None:
            print(f"The worked answer is in {shown} (exercise {self.name}); that file is not in this copy of the kit.")
            return
        show(f"Worked answer: {shown}, exercise {self.name}:\n\n{code}",
             f'<div style="{_NOTE_STYLE}"><b>Worked answer:</b> <code>{html.escape(shown)}</code>, exercise '
             f'{html.escape(self.name)}:</div><pre style="margin:0.3em 0">{html.escape(code)}</pre>')

    # -- machinery -----------------------------------------------------------------------
    def _evaluate(self, namespace: dict, box: Sandbox | None, given: dict) -> Result:
        unknown = set(given) - set(self.answers)
        if unknown:
            raise TypeError(f"{self.label} reads {', '.join(self.answers)}; got {', '.join(sorted(unknown))}")
        values = {name: given.get(name, namespace.get(name, _MISSING)) for name in self.answers}
        missing = [name for name, value in values.items() if is_placeholder(value)]
        if missing:
            return Result("not_attempted", f"set {' and '.join(missing)} in the cell above, run it, "
                                           f"then run this check again.", self.label)
        try:
            box = box or self._sandbox()
            return Result("correct", self.grade(box, **values), self.label)
        except (Incorrect, grader.NotAllowed) as exc:
            return Result("incorrect", str(exc), self.label)
        except ZdlabError as exc:
            return Result("incorrect", f"could not check: {exc.message}", self.label)
        except (CouldNotCheck, psycopg.Error) as exc:
            first = first_line(exc)
            return Result("incorrect", f"could not check: {first}", self.label)
        except Exception as exc:  # a checker bug must still not show the learner a traceback
            return Result("incorrect", f"could not check: the checker failed ({type(exc).__name__}: {exc}). "
                                       f"Tell your instructor.", self.label)

    def _sandbox(self) -> Sandbox:
        if self.notebook is None:
            raise CouldNotCheck(f"{self.label} belongs to no notebook, so it has no sandbox.")
        return Sandbox(self.notebook.name)


class Notebook:
    """The exercises of one notebook, as attributes: ``ex.q1``, ``ex.q2``..."""

    def __init__(self, name: str, **exercises: Exercise) -> None:
        self.name = name
        self.exercises = exercises
        for key, exercise in exercises.items():
            exercise.notebook, exercise.name = self, key
            setattr(self, key, exercise)
        NOTEBOOKS[name] = self

    def __repr__(self) -> str:
        return f"<exercises of {self.name}: {', '.join(self.exercises)}>"

    def solutions_path(self) -> Path:
        return config.home() / "solutions" / f"{self.name}.ipynb"


NOTEBOOKS: dict[str, Notebook] = registry.NOTEBOOKS  # shared with zdlab.progress


def solution_code(path: Path, variable: str) -> str | None:
    """The code between the solution markers that assigns ``variable`` in notebook ``path``."""
    cells = json.loads(path.read_text(encoding="utf-8")).get("cells", [])
    block = re.compile(r"^[ \t]*### BEGIN SOLUTION[ \t]*\n(.*?)^[ \t]*### END SOLUTION", re.M | re.S)
    # An answer is a variable (``name = ...``) or a function the learner writes (``def name(``).
    assigns = re.compile(rf"^\s*(?:{re.escape(variable)}\s*=|def\s+{re.escape(variable)}\s*\()", re.M)
    for cell in cells:
        source = "".join(cell.get("source", []))
        for match in block.finditer(source):
            if assigns.search(match.group(1)):
                return match.group(1).rstrip()
    return None


def _relative(path: Path) -> str:
    try:
        return str(path.relative_to(config.home()))
    except ValueError:
        return str(path)
