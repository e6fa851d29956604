"""Zero-Downtime Lab helpers: the few functions the notebooks call.

    import zdlab
    sb = zdlab.sandbox("01_risks")   # a fresh schema of this notebook's own
    zdlab.seed(sb, rows=100_000)     # users + orders
    conn = sb.connect()              # psycopg 3, search_path = the sandbox
"""

import os as _os

# JupySQL sends usage telemetry unless this is set; the kit switches it off everywhere.
_os.environ.setdefault("PLOOMBER_STATS_ENABLED", "false")

from .db import connect, database_url  # noqa: E402
from .errors import ZdlabError  # noqa: E402
from .sandbox import Sandbox, sandbox  # noqa: E402
from .seed import DEMO_TABLES, seed  # noqa: E402

__all__ = ["connect", "database_url", "sandbox", "Sandbox", "seed", "DEMO_TABLES", "ZdlabError"]
