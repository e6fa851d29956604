"""Environment for the whole test run, notebook kernels included.

nbval starts each notebook's kernel from this process's environment, so setting the variables
here (at import, before any kernel starts) is what makes them reach the notebooks:

- ZDLAB_STRICT_CHECKS=1: an incorrect ``ex.qN.check()`` raises, so a wrong answer in a solution
  notebook fails the suite (a not-attempted one never raises: the learners' copies pass).
- PLOOMBER_STATS_ENABLED=false: JupySQL sends no telemetry from the tests either.
- ZDLAB_PROGRESS_DIR: the checks the suite passes are recorded in a folder of the run's own,
  not in the maintainer's own progress (zdlab/progress.py).
"""

import os
import tempfile

os.environ["ZDLAB_STRICT_CHECKS"] = "1"
os.environ["PLOOMBER_STATS_ENABLED"] = "false"
os.environ.setdefault("ZDLAB_PROGRESS_DIR", tempfile.mkdtemp(prefix="zdlab-progress-"))
