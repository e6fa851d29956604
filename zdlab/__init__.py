"""Zero-Downtime Lab helpers: the few functions the notebooks call.

    import zdlab
    sb = zdlab.sandbox("01_risks")          # a fresh schema of this notebook's own
    zdlab.seed(sb, rows=100_000)            # users + orders
    conn = sb.connect()                     # psycopg 3, search_path = the sandbox
    with zdlab.traffic(sb) as t:            # simulated application traffic
        t.run(conn, "CREATE INDEX ...")     # a migration statement, timed on its timeline
    t.report(); t.plot()                    # what it did to the application
    zdlab.measure(sql, rows=1_000_000)      # all of the above in one call, with a verdict
    zdlab.locks_taken(sb, sql)              # the table locks each statement takes
    zdlab.show_progress()                   # the exercises you passed (each notebook's last cell)
"""

import os as _os

# JupySQL sends usage telemetry unless this is set; the kit switches it off everywhere.
_os.environ.setdefault("PLOOMBER_STATS_ENABLED", "false")

from .claims import ClaimFailed, confirm  # noqa: E402
from .db import connect, database_url  # noqa: E402
from .errors import ZdlabError  # noqa: E402
from .locks import locks_taken  # noqa: E402
from .measure import measure  # noqa: E402
from .progress import show as show_progress  # noqa: E402
from .sandbox import Sandbox, sandbox  # noqa: E402
from .seed import DEMO_TABLES, seed  # noqa: E402
from .traffic import AppVersion, traffic  # noqa: E402

__all__ = ["connect", "database_url", "sandbox", "Sandbox", "seed", "DEMO_TABLES", "ZdlabError",
           "traffic", "AppVersion", "measure", "locks_taken", "confirm", "ClaimFailed", "show_progress"]
