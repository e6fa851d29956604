"""Command line: `python -m zdlab ...` (also installed as `zdlab`)."""

from __future__ import annotations

import argparse
import os
import shutil
import sys

import psycopg

from . import config, db, server
from .errors import BadInput, ZdlabError


def _db(args: argparse.Namespace) -> int:
    if args.action == "url":  # no password unless asked: a URL ends up in shell history and `ps`
        url = db.database_url()
        print(url if args.show_password else config.without_password(url))
        return 0
    if config.external_url():
        if args.action == "status":
            with db.connect() as conn:
                version = conn.execute("SHOW server_version").fetchone()[0]
            print(f"using DATABASE_URL {config.redact(config.external_url())} (PostgreSQL {version})")
        else:
            print(f"DATABASE_URL is set ({config.redact(config.external_url())}): the kit uses that "
                  f"server and starts or stops none.")
        return 0
    if args.action == "start":
        st = server.start()
        print(st.describe())
        print(f"database URL: {config.redact(db.database_url())}")
    elif args.action == "stop":
        before = server.status()
        after = server.stop()
        if before.running and not after.running:
            print(f"stopped the embedded PostgreSQL (pid {before.pid}, port {before.port}); its data is kept in "
                  f"{after.pgdata} (`zdlab db start` starts it again)")
        elif not before.running:
            print(f"embedded PostgreSQL was not running (data folder {after.pgdata}): nothing to stop")
        else:
            print(after.describe())
    else:
        st = server.status()
        print(st.describe())
        return 0 if st.running else 3
    return 0


def _lab(args: argparse.Namespace) -> int:
    from .commands import lab_port_or_running

    notebooks = args.notebook_dir or str(config.home() / "notebooks")
    args.port = lab_port_or_running(args.port, notebooks)
    if args.port is None:
        return 0  # a lab of this kit already runs; its URL was printed
    if not config.external_url():
        server.start()
    with db.connect():
        pass  # fail here, with a clear message, rather than in the first notebook cell
    cmd = [sys.executable, "-m", "jupyter", "lab", f"--notebook-dir={notebooks}",
           f"--ServerApp.ip={args.ip}", f"--ServerApp.port={args.port}",
           f"--LabApp.app_settings_dir={config.lab_settings_dir()}",
           "--ServerApp.port_retries=0", *args.extra]  # the port we print is the port it serves on
    if not args.browser:
        cmd.append("--no-browser")
    if os.geteuid() == 0:
        cmd.append("--allow-root")  # CI and containers often run as root; the token still applies
    if config.jupyter_token_set():
        print("JupyterLab starts with the token from JUPYTER_TOKEN.", flush=True)
    else:
        print(f"JupyterLab on http://{args.ip}:{args.port}: open the URL with ?token=... printed below.",
              flush=True)
    # Telemetry off, and the kernels find this kit's home whatever folder they start in.
    os.execve(sys.executable, cmd, config.child_env(ZDLAB_HOME=str(config.home())))
    return 0  # not reached


def _reset(args: argparse.Namespace) -> int:
    from .sandbox import Sandbox, all_sandboxes

    if args.server:
        if config.external_url():
            raise ZdlabError("--server deletes the embedded server's data; DATABASE_URL is set, so "
                             "there is none to delete. Run `zdlab reset` without --server.")
        server.stop()
        shutil.rmtree(server.pgdata(), ignore_errors=True)
        config.password_file().unlink(missing_ok=True)
        print("embedded server stopped and its data deleted; `zdlab db start` makes a new one")
        return 0
    with db.connect(application_name=f"{config.APP_PREFIX}/reset") as conn:
        schemas = all_sandboxes(conn)
    for schema in schemas:
        box = Sandbox(schema.removeprefix("zd_"))
        box.drop()
    print(f"dropped {len(schemas)} sandbox schema(s) and ended their sessions: {', '.join(schemas) or '-'}")
    return 0


def _inputs(args: argparse.Namespace) -> tuple[str, str | None]:
    """The migration file's SQL and the optional setup file's, or BadInput (exit 2)."""
    from . import statements

    if args.rows < 1:
        raise BadInput(f"--rows must be at least 1 (users and orders to seed), not {args.rows}.")

    sql = statements.read_file(args.file)
    setup = statements.read_file(args.setup) if args.setup else None
    return sql, setup


def _failed_next_step(args: argparse.Namespace, failed: list[tuple[int, str]]) -> str | None:
    """One line after a run whose statement failed: which one, and what to do about it."""
    if not failed:
        return None
    number, error = failed[0]
    hint = ""
    if "does not exist" in error and "relation" in error:  # the sandbox has only the seeded tables
        hint = (" The sandbox holds only the seeded tables users and orders: create your own tables "
                "with --setup FILE.")
    return f"next step: statement {number} of {args.file} failed; fix it and run `zdlab {args.command}` again.{hint}"


def _scratch_sandbox(kind: str) -> str:
    # A name of its own per run: two teams' runs on one server must not reset each other.
    return f"{kind}_{os.getpid()}"


def _measure(args: argparse.Namespace) -> int:
    import json

    from .measure import measure

    sql, setup = _inputs(args)
    report = measure(sql, rows=args.rows, allowed_ms=args.allowed_ms, setup_sql=setup,
                     workers=args.workers, sandbox_name=_scratch_sandbox("measure"), progress=False)
    if args.json:
        print(json.dumps(report.to_dict(), indent=2, default=str))
        return 0
    print(report)
    failed = [(i, s["error"]) for i, s in enumerate(report.statements, 1) if s["error"]]
    step = _failed_next_step(args, failed)
    if step:
        print(step)
    return 0


def _locks(args: argparse.Namespace) -> int:
    import json

    from . import statements
    from .locks import locks_taken
    from .measure import run_setup
    from .sandbox import Sandbox
    from .seed import seed

    sql, setup = _inputs(args)
    with Sandbox(_scratch_sandbox("locks")).reset() as box:
        seed(box, rows=args.rows, progress=False)
        if setup:
            run_setup(box, setup)
        results = locks_taken(box, sql)
    if args.json:
        print(json.dumps([r.to_dict() for r in results], indent=2))
        return 0
    for r in results:
        print(statements.short_sql(r.sql, 100))
        if r.error:
            print(f"    error: {r.error}")
        elif r.status != "ok":
            print(f"    ({r.status}{': ' + r.note if r.note else ''})")
        for lock in r.locks:
            print(f"    {lock['mode']:<26} on {lock['relation']}")
        if r.status == "ok" and not r.locks and not r.error:
            print("    no table lock")
    step = _failed_next_step(args, [(i, r.error) for i, r in enumerate(results, 1) if r.error])
    if step:
        print(step)
    return 0


def _doctor(args: argparse.Namespace) -> int:
    from . import doctor

    return doctor.run(fix=args.fix)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="zdlab", description="Zero-Downtime Lab command line")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("db", help="the embedded PostgreSQL server")
    p.add_argument("action", choices=["start", "stop", "status", "url"])
    p.add_argument("--show-password", action="store_true",
                   help="url: include the password (else psql reads it from PGPASSFILE=.zdlab/pgpass)")
    p.set_defaults(func=_db)

    p = sub.add_parser("lab", help="start the database (unless DATABASE_URL) and JupyterLab")
    p.add_argument("--ip", default="127.0.0.1")
    p.add_argument("--port", type=int, default=None, help="default: ZDLAB_LAB_PORT, else 8888")
    p.add_argument("--notebook-dir")
    p.add_argument("--browser", action="store_true", help="open a browser")
    p.set_defaults(func=_lab, extra=[])  # unknown options go to JupyterLab (see main)

    p = sub.add_parser("measure", help="run a migration file against live traffic and report its impact")
    p.add_argument("file", help="the migration (.sql)")
    p.add_argument("--rows", type=int, default=100_000, help="users (and orders) to seed (default 100000)")
    p.add_argument("--allowed-ms", type=float, default=0.0,
                   help="a wait the migration accepts on top of the run's own noise, e.g. its lock_timeout "
                        "(default 0: any wait on the migration longer than the noise is 'blocking')")
    p.add_argument("--workers", type=int, default=4, help="application workers (default 4)")
    p.add_argument("--setup", help="SQL run first, to create a team's own tables")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(func=_measure)

    p = sub.add_parser("locks", help="the table locks each statement of a migration file takes")
    p.add_argument("file", help="the migration (.sql)")
    p.add_argument("--rows", type=int, default=1000, help="users (and orders) to seed (default 1000)")
    p.add_argument("--setup", help="SQL run first, to create a team's own tables")
    p.add_argument("--json", action="store_true", help="print a JSON list")
    p.set_defaults(func=_locks)

    p = sub.add_parser("doctor", help="check the environment, with a fix for each problem",
                       description="Check the environment (Python, packages, the server, the database, the "
                                   "%sql magic, disk) and what a crash left in your database: stray sessions "
                                   "of a killed kernel, invalid indexes of a cancelled CREATE INDEX "
                                   "CONCURRENTLY, half-seeded tables. Exit 1 if any check fails.")
    p.add_argument("--fix", action="store_true",
                   help="first end the stray sessions, drop the invalid indexes and the half-seeded tables "
                        "(in your database only), and say what was done")
    p.set_defaults(func=_doctor)

    p = sub.add_parser("reset", help="drop every sandbox schema and end its sessions")
    p.add_argument("--server", action="store_true", help="also delete the embedded server's data")
    p.set_defaults(func=_reset)

    from .commands import add_commands  # lint, progress, preflight (issue 17)

    add_commands(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args, unknown = parser.parse_known_args(argv)
    if unknown:
        if args.command != "lab":
            parser.error(f"unrecognized arguments: {' '.join(unknown)}")
        args.extra = [a for a in unknown if a != "--"]  # e.g. --ServerApp.base_url=/x
    try:
        return args.func(args)
    except ZdlabError as exc:
        print(f"zdlab: {exc.message}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        return 130
    except psycopg.Error as exc:  # not a learner mistake we know: say so plainly, still no traceback
        print(f"zdlab: PostgreSQL reported an error we did not expect: {str(exc).strip()}. "
              f"Run the command again; if it repeats, `zdlab doctor` checks the setup.", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
