"""The room's commands on the command line: `zdlab lint`, `zdlab progress`, `zdlab preflight`,
and `zdlab lab`'s port (a lab already running, a busy port). cli.py registers them."""

from __future__ import annotations

import argparse
import os

from . import config
from .errors import ZdlabError


def _lint(args: argparse.Namespace) -> int:
    from . import lint

    findings = lint.lint(args.path, pg_version=args.pg_version, exclude=args.exclude)
    print(lint.to_json(findings, args.path) if args.json else lint.render(findings, args.path))
    return 1 if lint.counted(findings) else 0


def _progress(args: argparse.Namespace) -> int:
    from . import progress

    if args.reset:
        print(progress.reset())
    elif args.room or args.files:
        room = progress.room_from_files(args.files) if args.files else progress.room_from_server()
        print(progress.room_table(room) if room else "no learner has a progress record yet.")
    else:
        print(progress.table())
    return 0


def _preflight(args: argparse.Namespace) -> int:
    from . import preflight

    return preflight.run(rows=args.rows, min_free_gb=args.min_free_gb, disk_path=args.disk_path,
                         seed_limit_s=args.seed_limit_s, notebook=not args.no_notebook)


def add_commands(sub: argparse._SubParsersAction) -> None:
    from . import preflight

    p = sub.add_parser("lint", help="squawk over migration files, each finding with the kit's lock, recipe "
                                    "and notebook section")
    p.add_argument("path", help="a .sql migration file, or a folder of them (searched recursively)")
    p.add_argument("--json", action="store_true", help="print one JSON object (for CI)")
    p.add_argument("--pg-version", default="18", help="the PostgreSQL version squawk assumes (default 18)")
    p.add_argument("--exclude", action="append", help="a squawk rule to leave out (repeatable)")
    p.set_defaults(func=_lint)

    p = sub.add_parser("progress", help="the exercises you passed; --room: every learner's")
    p.add_argument("--reset", action="store_true", help="forget this learner's passes")
    p.add_argument("--room", action="store_true",
                   help="every learner on the shared server (DATABASE_URL): the learner databases' records")
    p.add_argument("--files", metavar="GLOB",
                   help="with --room: read the learners' progress files instead (quote the pattern)")
    p.set_defaults(func=_progress)

    p = sub.add_parser("preflight", help="is this machine ready for the workshop? one line to paste in the chat")
    p.add_argument("--rows", type=int, default=preflight.DEMO_ROWS, help="rows to seed (default the demo's 1M)")
    p.add_argument("--min-free-gb", type=float, default=preflight.MIN_FREE_GB, help="default 2")
    p.add_argument("--disk-path", help="where to measure free disk (default: the kit's folder)")
    p.add_argument("--seed-limit-s", type=float, default=preflight.SEED_LIMIT_S)
    p.add_argument("--no-notebook", action="store_true", help="skip running notebooks/00_setup.ipynb")
    p.set_defaults(func=_preflight)


def lab_port_or_running(port: int | None, notebooks: str) -> int | None:
    """The port `zdlab lab` may use; None (after printing its URL) when a lab of this kit already runs.

    Jupyter moves to the next free port when its port is busy, which made `make lab` print a URL
    Jupyter did not serve: a busy port is now an error that names its holder, and the lab is
    started with port_retries=0.
    """
    from .server import port_in_use

    for running in _running_labs():
        if os.path.realpath(running.get("root_dir", "")) == os.path.realpath(notebooks):
            token = running.get("token") or ""
            url = running.get("url", "").rstrip("/") + "/lab" + (f"?token={token}" if token else "")
            print(f"JupyterLab is already running for this kit (pid {running.get('pid')}): {url}\n"
                  f"Open that URL; to start another, stop it first (Ctrl-C in its terminal).", flush=True)
            return None
    chosen = port if port is not None else config.lab_port()
    if port_in_use(chosen):
        from .preflight import port_holder

        raise ZdlabError(f"JupyterLab's port {chosen} on 127.0.0.1 is already in use by {port_holder(chosen)}. "
                         f"Use another port: `ZDLAB_LAB_PORT={chosen + 2} make lab` (or `zdlab lab --port "
                         f"{chosen + 2}`), or stop that program.")
    return chosen


def _running_labs() -> list[dict]:
    """The Jupyter servers of this user that still run: their jpserver-<pid>.json in Jupyter's
    runtime folder (what `jupyter server list` reads; read here without importing jupyter_server,
    which would double `make lab`'s start-up time)."""
    import glob
    import json

    try:
        from jupyter_core.paths import jupyter_runtime_dir
    except ImportError:
        return []
    alive = []
    for file in glob.glob(os.path.join(jupyter_runtime_dir(), "jpserver-*.json")):
        try:
            with open(file, encoding="utf-8") as fh:
                info = json.load(fh)
        except (OSError, ValueError):
            continue
        if not isinstance(info, dict):
            continue
        try:
            pid = int(info.get("pid", 0))
            if pid <= 0:
                continue
            os.kill(pid, 0)
        except PermissionError:
            pass  # alive, another user's
        except (OSError, ValueError):
            continue  # a stale runtime file of a server that was killed
        alive.append(info)
    return alive
