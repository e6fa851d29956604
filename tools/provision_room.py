"""Provision a room on one shared PostgreSQL server: an admin step, never run by a learner's kit.

    ADMIN_URL=postgresql://postgres:...@db:5432/postgres python tools/provision_room.py OUT_FILE alice bob ...

For each learner (a hub user name, mapped to a database name as the kit maps it: zdlab.config):
a LOGIN role ``zdlab_<name>`` that is no superuser and may create no role and no database, owning
only its database ``zdlab_<name>``; CONNECT on that database revoked from PUBLIC (so no other
learner can connect to it), a connection limit and a temp-file limit. The role's password is
random; the URLs go to ``OUT_FILE`` (JSON, hub user name -> URL, mode 600), for the hub to hand
each learner's server its own URL only (deploy/tljh/zdlab_config.py, deploy/z2jh/shared-db.yaml). Running it
again keeps every database and renews the passwords. The admin URL is read from the environment,
never from the command line.
"""

from __future__ import annotations

import json
import os
import secrets
import sys
from pathlib import Path
from urllib.parse import quote, urlsplit, urlunsplit

import psycopg
from psycopg import sql

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from zdlab import config  # noqa: E402
from zdlab.grader import scram_verifier  # noqa: E402

CONNECTION_LIMIT = 30  # a kernel, the traffic workers and a check's connections, with room to spare
TEMP_FILE_LIMIT = "2GB"  # a runaway sort or hash of one learner cannot fill the server's disk
WORK_MEM = "16MB"


def learner_url(admin_url: str, role: str, password: str, database: str) -> str:
    parts = urlsplit(admin_url)
    host = parts.netloc.rpartition("@")[2]
    return urlunsplit((parts.scheme, f"{quote(role, safe='')}:{quote(password, safe='')}@{host}",
                       "/" + quote(database), parts.query, ""))


def provision(admin_url: str, users: list[str]) -> dict[str, str]:
    """Create or update each learner's role and database; {hub user name: that learner's URL}."""
    urls = {}
    with psycopg.connect(admin_url, autocommit=True) as admin:
        for user in users:
            name = config._hub_learner(user)
            role = database = config.learner_database(name)
            password = secrets.token_urlsafe(24)
            ident = sql.Identifier(role)
            if not admin.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", [role]).fetchone():
                admin.execute(sql.SQL("CREATE ROLE {} LOGIN").format(ident))
            # No CREATEROLE: before PostgreSQL 16 it lets a role grant itself almost anything.
            admin.execute(sql.SQL("ALTER ROLE {} LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOREPLICATION "
                                  "NOBYPASSRLS CONNECTION LIMIT {} PASSWORD {}").format(
                ident, sql.Literal(CONNECTION_LIMIT), sql.Literal(scram_verifier(password))))
            for setting, value in (("temp_file_limit", TEMP_FILE_LIMIT), ("work_mem", WORK_MEM)):
                admin.execute(sql.SQL("ALTER ROLE {} SET {} = {}").format(
                    ident, sql.Identifier(setting), sql.Literal(value)))
            if not admin.execute("SELECT 1 FROM pg_database WHERE datname = %s", [database]).fetchone():
                admin.execute(sql.SQL("CREATE DATABASE {} OWNER {}").format(sql.Identifier(database), ident))
            admin.execute(sql.SQL("REVOKE ALL ON DATABASE {} FROM PUBLIC").format(sql.Identifier(database)))
            admin.execute(sql.SQL("GRANT CONNECT, TEMPORARY ON DATABASE {} TO {}").format(
                sql.Identifier(database), ident))
            urls[user] = learner_url(admin_url, role, password, database)
    return urls


def main(argv: list[str]) -> int:
    admin_url = os.environ.get("ADMIN_URL", "").strip()
    if len(argv) < 2 or not admin_url:
        print(__doc__, file=sys.stderr)
        return 2
    out = Path(argv[0])
    room = json.loads(out.read_text()) if out.exists() else {}
    urls = provision(admin_url, argv[1:])
    config.write_secret(out, json.dumps({**room, **urls}, indent=1) + "\n")
    for user, url in urls.items():
        print(f"{user}: {config.without_password(url)}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
