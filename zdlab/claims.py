"""Live proofs that read as confirmations: one line per claim, measured against what was claimed.

    zdlab.confirm("the plain build blocks writes", report.verdict == "blocking", str(report.judgement))
    report.expect("blocking", mode="ShareLock")     # the same, for a traffic report

A claim that holds prints ``✓ claim: measured``. One that does not raises ``ClaimFailed``, a
``ZdlabError``: the notebook shows one paragraph (what was claimed, what was measured, what to
do), never a traceback, and the test suite fails on it. The margins behind every verdict live
in ``zdlab.judge``, not in the notebooks.
"""

from __future__ import annotations

from .errors import ZdlabError


class ClaimFailed(ZdlabError):
    """What the course claims did not hold in this run."""


def confirm(claim: str, holds: bool, measured: str) -> None:
    """Print the claim with what was measured; raise ``ClaimFailed`` when it does not hold."""
    if not holds:
        raise ClaimFailed(f"The course claims: {claim}. This run measured: {measured}. Run the cell again; "
                          f"if it fails again, this machine behaves differently from what the course says: "
                          f"please report it with this message (docs/troubleshooting.md).")
    print(f"✓ {claim}: {measured}")
