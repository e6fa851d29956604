"""What a notebook does once at the top: JupySQL's ``%sql`` connected to the sandbox.

    engine = zdlab.sql_magic(sb)      # then %sql / %%sql run in the sandbox

One call instead of the same five lines in every notebook: it loads JupySQL (the maintained
successor of ipython-sql), makes SQL errors raise with PostgreSQL's full message (a failing
``%sql`` cell stops "Run all"), hides the connection banner and returns plain result sets.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .errors import ZdlabError

if TYPE_CHECKING:
    from sqlalchemy.engine import Engine

    from .sandbox import Sandbox

SETTINGS = ("SqlMagic.short_errors = False", "SqlMagic.displaycon = False", "SqlMagic.autopandas = False")


def sql_magic(sb: Sandbox) -> Engine:
    """Load ``%sql`` in this notebook, connected to ``sb``; the SQLAlchemy engine it uses."""
    from IPython import get_ipython

    ip = get_ipython()
    if ip is None:
        raise ZdlabError("zdlab.sql_magic() sets up the %sql magic of a notebook: run it in a notebook cell "
                         "(Jupyter or IPython). In a script, use sb.connect() instead.")
    ip.run_line_magic("load_ext", "sql")
    for setting in SETTINGS:
        ip.run_line_magic("config", setting)
    engine = sb.engine()
    ip.run_line_magic("sql", "engine")  # JupySQL reads `engine` from this function's local scope
    return engine
