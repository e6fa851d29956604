"""How a migration's cost grows with the table (notebook 01, risk 1): its timings at several
sizes, the linear fit, and the write-ahead log every replica must replay, in one figure.

    plot_timings(rows, seconds, wal_bytes, table_bytes, fit)   # a matplotlib Figure
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from matplotlib.figure import Figure


def plot_timings(rows: Sequence[float], seconds: Sequence[float], wal_bytes: Sequence[float],
                 table_bytes: Sequence[float], fit: Sequence[float],
                 what: str = "ALTER COLUMN ... TYPE bigint") -> Figure:
    """Left: seconds against rows (log-log), measured and the fit ``np.polyfit(rows, seconds, 1)``.
    Right: the WAL written next to the table's size after the migration, per size."""
    rows_ = np.asarray(rows, dtype=float)
    fig = Figure(figsize=(10, 3.8), layout="constrained")
    ax, ax2 = fig.subplots(1, 2)
    line = np.geomspace(rows_[0], rows_[-1], 50)
    ax.plot(rows_, seconds, "o", color="#1f77b4", label="measured")
    ax.plot(line, np.polyval(fit, line), "-", color="#f0a030", label="linear fit")
    ax.set(xscale="log", yscale="log", xlabel="rows", ylabel="seconds (log scale)",
           title=f"{what}: time")
    ax.legend()
    where = np.arange(len(rows_))
    ax2.bar(where - 0.2, np.asarray(wal_bytes, dtype=float) / 2**20, width=0.4, color="#9467bd", label="WAL written")
    ax2.bar(where + 0.2, np.asarray(table_bytes, dtype=float) / 2**20, width=0.4, color="#7f7f7f",
            label="table + indexes after")
    ax2.set_xticks(where, [f"{int(r):,}" for r in rows_])
    ax2.set(yscale="log", xlabel="rows", ylabel="MB (log scale)", title="WAL every replica must replay")
    ax2.legend()
    return fig
