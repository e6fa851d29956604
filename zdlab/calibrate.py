"""Size a demo for this machine: large enough that its unsafe step is clearly visible here.

A verdict never depends on the machine (``zdlab.judge`` compares each wait with the same run's
noise and with the statement's own duration). What a learner SEES does: on a fast laptop a plain
index build on a million rows may take 150 ms, hardly above the noise of a plot. So a notebook
whose demos need a visible stall seeds with ``seed_visible``: it seeds the notebook's size, then
measures, once and quickly, how long an index build on ``orders`` takes here and this machine's
noise under the kit's traffic (the judge's own figure), and seeds more rows (at most
``MAX_GROWTH`` times) when the build would not last ``VISIBLE_FACTOR`` times that noise. It
prints the size chosen and why. A slow or crowded machine keeps the notebook's size: its
unsafe steps are already long. ``ZDLAB_DEMO_SCALE`` (the any-machine test's sizes) turns the
calibration off: that run chose its size on purpose.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from . import config
from .judge import noise_ms
from .measure import WARMUP_PER_KIND, WARMUP_TIMEOUT_S
from .sandbox import Sandbox
from .seed import seed
from .traffic import KINDS, traffic

VISIBLE_FACTOR = 4.0  # "clearly longer than the noise": the unsafe step lasts 4x this run's noise
MAX_GROWTH = 4.0  # never more than 4x the notebook's size: seeding and every later demo grow with it
NOISE_S = 0.5  # traffic watched for the noise figure


@dataclass
class Calibration:
    """The size a notebook chose, and the two figures it was chosen from."""

    rows: int  # users (and orders) seeded
    base_rows: int  # the notebook's own size
    build_ms: float | None = None  # an index build on orders at base_rows, on this machine
    noise_ms: float | None = None  # this machine's noise under the kit's traffic (zdlab.judge)

    def __str__(self) -> str:
        if self.build_ms is None or self.noise_ms is None:
            return f"demo size: {self.rows:,} rows (ZDLAB_DEMO_SCALE set: no calibration)"
        why = (f"an index build on {self.base_rows:,} orders took {self.build_ms:,.0f} ms here, "
               f"{self.build_ms / self.noise_ms:,.1f}x this machine's noise ({self.noise_ms:,.0f} ms)")
        if self.rows == self.base_rows:
            return f"demo size: {self.rows:,} rows ({why}: clearly visible)"
        return (f"demo size: {self.rows:,} rows instead of {self.base_rows:,} ({why}: this machine is fast, "
                f"so the demos use more rows to make the unsafe steps last at least {VISIBLE_FACTOR:g}x the noise)")


def probe(sb: Sandbox) -> tuple[float, float]:
    """(ms an index build on ``orders`` takes here, this machine's noise in ms), on a seeded sandbox."""
    with traffic(sb) as t:
        t.wait_for_requests(len(KINDS) * WARMUP_PER_KIND, timeout=WARMUP_TIMEOUT_S)
        time.sleep(NOISE_S)
    noise = noise_ms(t.report())
    with sb.connect("calibrate") as conn:
        conn.execute("DROP INDEX IF EXISTS zdlab_calibrate_idx")
        start = time.perf_counter()
        conn.execute("CREATE INDEX zdlab_calibrate_idx ON orders (created_at)")
        build = (time.perf_counter() - start) * 1000
        conn.execute("DROP INDEX zdlab_calibrate_idx")
    return build, noise


def growth(build_ms: float, noise: float) -> float:
    """How many times more rows make a build of ``build_ms`` last ``VISIBLE_FACTOR`` x ``noise``."""
    if build_ms <= 0:
        return MAX_GROWTH
    return min(MAX_GROWTH, max(1.0, VISIBLE_FACTOR * noise / build_ms))


def seed_visible(sb: Sandbox, rows: int = 1_000_000) -> Calibration:
    """Seed ``sb`` (``rows`` users and orders, more on a fast machine) and print the size chosen."""
    if config.demo_scale() != 1:
        counts = seed(sb, rows)
        cal = Calibration(counts["users"], counts["users"])
    else:
        seed(sb, rows)
        build, noise = probe(sb)
        factor = growth(build, noise)
        chosen = rows if factor <= 1.0 else round(rows * factor, -3)
        if chosen != rows:
            seed(sb, chosen)
        cal = Calibration(chosen, rows, build, noise)
    print(cal)
    return cal
