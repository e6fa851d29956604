"""Zero-Downtime Lab helpers: the few functions the notebooks call.

    import zdlab
    sb = zdlab.sandbox("01_risks")          # a fresh schema of this notebook's own
    zdlab.seed(sb, rows=100_000)            # users + orders
    conn = sb.connect()                     # psycopg 3, search_path = the sandbox
    with zdlab.traffic(sb) as t:            # simulated application traffic
        t.run(conn, "CREATE INDEX ...")     # a migration statement, timed on its timeline
    t.report(); t.plot()                    # what it did to the application
    zdlab.measure(sql, rows=1_000_000)      # all of the above in one call, with a verdict
    zdlab.measure_in(sb, steps)             # the same in a sandbox you set up (SQL or a list of steps)
    zdlab.locks_taken(sb, sql)              # the table locks each statement takes
    zdlab.show_progress()                   # the exercises you passed (each notebook's last cell)
    zdlab.Scoreboard, zdlab.Migrator        # the capstone's scoreboard; notebook 02's migration runner
"""

from . import config as _config

# JupySQL sends usage telemetry unless told not to; switched off before anything imports it.
_config.quiet_telemetry()

from .calibrate import seed_visible  # noqa: E402
from .claims import ClaimFailed, confirm  # noqa: E402
from .db import connect, database_url  # noqa: E402
from .errors import ZdlabError  # noqa: E402
from .locks import locks_taken  # noqa: E402
from .measure import measure, measure_in  # noqa: E402
from .migrate import IrreversibleMigration, Migration, Migrator  # noqa: E402
from .notebook import sql_magic  # noqa: E402
from .progress import show as show_progress  # noqa: E402
from .report import Report  # noqa: E402
from .sandbox import Sandbox, sandbox  # noqa: E402
from .scoreboard import Scoreboard  # noqa: E402
from .seed import DEMO_TABLES, seed  # noqa: E402
from .traffic import AppVersion, traffic  # noqa: E402

__all__ = ["sql_magic", "seed_visible", "connect", "database_url", "sandbox", "Sandbox", "seed", "DEMO_TABLES",
           "ZdlabError",
           "traffic", "AppVersion", "measure", "measure_in", "Report", "locks_taken", "confirm", "ClaimFailed",
           "Scoreboard", "Migrator", "Migration", "IrreversibleMigration", "show_progress"]
