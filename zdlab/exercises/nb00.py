"""Notebook 00_setup: its one exercise, finding this sandbox's sessions (learntools-style)."""

from __future__ import annotations

from .. import config, grader
from ..checks import Exercise, Incorrect, Notebook, limit_learner_time, need_sql, run_learner_sql
from ..sandbox import Sandbox


class SandboxSessions(Exercise):
    """From pg_stat_activity: pid and application_name of every session of this sandbox."""

    answers = ("answer_sql",)
    hints = (
        "pg_stat_activity has one row per server process, for every database of the server. Keep the "
        "rows of this database (datname = current_database()) whose application_name starts with "
        "'zdlab/zd_00_setup/', and return only the columns pid and application_name.",
        "PostgreSQL has starts_with(text, prefix); LIKE 'prefix%' works too (mind that _ is a "
        "wildcard in LIKE).",
        "SELECT pid, application_name FROM pg_stat_activity "
        "WHERE datname = current_database() AND starts_with(application_name, '...');",
    )

    def grade(self, box: Sandbox, answer_sql: str) -> str:
        need_sql("answer_sql", answer_sql, "SQL (one SELECT query)")
        prefix = f"{config.APP_PREFIX}/{box.schema}/"
        with grader.connect(box, "check", autocommit=False) as conn:
            # One transaction: pg_stat_activity is snapshotted at its first read in a transaction,
            # so the learner's query and ours see the same sessions. Rolled back: nothing persists.
            limit_learner_time(conn)
            columns, rows = run_learner_sql(conn, answer_sql)
            truth = conn.execute("SELECT pid, application_name FROM pg_stat_activity "
                                 "WHERE datname = current_database() AND starts_with(application_name, %s)",
                                 [prefix]).fetchall()
            conn.rollback()
        wanted = ["pid", "application_name"]
        if sorted(columns) != sorted(wanted):
            raise Incorrect(f"return exactly the columns pid and application_name; your query returns "
                            f"{', '.join(columns) or 'no column'}.")
        got = [tuple(row[columns.index(c)] for c in wanted) for row in rows]
        extra = sorted(set(got) - set(truth), key=str)
        missed = sorted(set(truth) - set(got), key=str)
        if extra:
            pid, app = extra[0]
            raise Incorrect(f"your query returns {len(extra)} session(s) that are not this sandbox's, for "
                            f"example pid {pid} with application_name {app!r}. Keep only the rows of this "
                            f"database whose application_name starts with {prefix!r}.")
        if missed:
            raise Incorrect(f"your query misses {len(missed)} of this sandbox's {len(truth)} session(s), for "
                            f"example application_name {missed[0][1]!r}. Match every application_name that "
                            f"starts with {prefix!r}.")
        if len(got) != len(truth):
            raise Incorrect("your query returns some sessions more than once; return one row per session.")
        roles = ", ".join(sorted(app.removeprefix(prefix) for _, app in truth))
        return (f"your query finds this sandbox's {len(truth)} session(s) ({roles}), including the one "
                f"this checker opened to run it.")


ex = Notebook("00_setup", q1=SandboxSessions())
