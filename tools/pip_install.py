"""Install pinned requirements into the kit's .venv, saying what it installs and from where.

    .venv/bin/python tools/pip_install.py requirements.txt --kit      # what `make lab` runs
    .venv/bin/python tools/pip_install.py requirements-dev.txt        # what `make test` adds

With WHEELHOUSE set to a folder (the Makefile sets it from ZDLAB_WHEELHOUSE, or to ./wheelhouse
when that folder exists), pip installs from that folder only (--no-index --find-links): no
package index is contacted, which is what a conference room's Wi-Fi needs. `make wheelhouse`
fills such a folder (tools/wheelhouse.py).
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def pins(path: Path) -> list[str]:
    """The `name==version` lines of a requirements file, following its `-r` includes."""
    found: list[str] = []
    for raw in path.read_text(encoding="utf-8").splitlines():
        line = raw.split("#", 1)[0].strip()
        if line.startswith("-r "):
            found += pins(path.parent / line[3:].strip())
        elif "==" in line:
            found.append(line)
    return found


def index_options(wheelhouse: str) -> list[str]:
    return ["--no-index", "--find-links", wheelhouse] if wheelhouse else []


def main(argv: list[str]) -> int:
    requirements = Path(argv[0])
    kit = "--kit" in argv[1:]
    wheelhouse = os.environ.get("WHEELHOUSE", "").strip()
    if wheelhouse and not Path(wheelhouse).is_dir():
        print(f"make: WHEELHOUSE / ZDLAB_WHEELHOUSE is {wheelhouse!r}, which is not a folder. Point it at the "
              f"folder `make wheelhouse` filled (a USB stick, a share), or unset it to install from the "
              f"package index.", file=sys.stderr)
        return 2
    count = len(pins(requirements))
    where = (f"from the wheelhouse {wheelhouse} (no network used)" if wheelhouse
             else "from the package index (first run only, about 1 min; longer on a slow network)")
    print(f"installing {count} pinned packages of {requirements.name} into {Path(sys.prefix).name} {where}",
          flush=True)
    started = time.monotonic()
    pip = [sys.executable, "-m", "pip", "install", "--quiet", "--disable-pip-version-check",
           *index_options(wheelhouse)]
    steps = [[*pip, "-r", str(requirements)]]
    if kit:
        steps.append([*pip, "--no-deps", "-e", str(REPO)])
    for cmd in steps:
        if subprocess.run(cmd).returncode != 0:
            hint = (f"The wheelhouse {wheelhouse} lacks a package for this machine (Python "
                    f"{sys.version.split()[0]}, {sys.platform}): refill it with `make wheelhouse` on a machine "
                    f"with network, or unset ZDLAB_WHEELHOUSE (and move ./wheelhouse away) to use the index."
                    if wheelhouse else "Check the network (or use a wheelhouse: see docs/facilitator.md), "
                                       "then run make again.")
            print(f"make: pip could not install {requirements.name}. {hint}", file=sys.stderr)
            return 1
    print(f"installed {requirements.name} in {time.monotonic() - started:.0f} s", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
