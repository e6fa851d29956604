"""A room on one server (issue 19): learners provisioned by tools/provision_room.py work at the
same time, each in a database of their own, and A cannot connect to, read, change, drop or
signal anything of B's."""

from __future__ import annotations

import sys
import uuid
from pathlib import Path

import psycopg
import pytest
from psycopg import sql

from zdlab import checks, config, db, grader
from zdlab.exercises.nb00 import ex as ex00
from zdlab.sandbox import Sandbox

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tools"))
import provision_room  # noqa: E402


@pytest.fixture
def room(db_url, monkeypatch):
    monkeypatch.delenv(checks.STRICT_ENV, raising=False)
    suffix = uuid.uuid4().hex[:6]
    users = [f"Alice.{suffix}@example.org", f"bob_{suffix}"]
    urls = provision_room.provision(db_url, users)
    yield db_url, users, urls
    with psycopg.connect(db_url, autocommit=True) as admin:
        for user in users:
            name = config.learner_database(config._hub_learner(user))
            admin.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))
            admin.execute(sql.SQL("DROP ROLE IF EXISTS {}").format(sql.Identifier(name)))


def _as_learner(monkeypatch, user: str, url: str) -> Sandbox:
    """What the hub gives that learner's server: their own URL, their hub user name."""
    monkeypatch.setenv("DATABASE_URL", url)
    monkeypatch.setenv("JUPYTERHUB_USER", user)
    monkeypatch.delenv("ZDLAB_LEARNER", raising=False)
    db._ensured.clear()
    return Sandbox("00_setup").reset()


def test_two_learners_at_once_and_a_cannot_reach_b(room, monkeypatch):
    admin_url, (alice, bob), urls = room
    box_a = _as_learner(monkeypatch, alice, urls[alice])
    with box_a.connect("app") as a_session:
        box_b = _as_learner(monkeypatch, bob, urls[bob])
        with box_b.connect("app") as b_session:
            b_session.execute("CREATE TABLE secret (x int); INSERT INTO secret VALUES (1)")
            # Both check an exercise while the other's session is open.
            for box in (box_b, box_a):
                answer = (f"SELECT pid, application_name FROM pg_stat_activity WHERE datname = current_database() "
                          f"AND starts_with(application_name, 'zdlab/{box.schema}/')")
                result = ex00.q1.evaluate(answer_sql=answer, sandbox=box)
                assert result.status == "correct", result.message
            b_db = b_session.info.dbname
            a_user = a_session.info.user
            assert a_user != b_session.info.user and a_session.info.dbname != b_db
            # A is a plain role, and its learner SQL runs as that role (nothing to escalate to)
            assert not a_session.execute("SELECT rolsuper OR rolcreaterole OR rolcreatedb FROM pg_roles "
                                         "WHERE rolname = current_user").fetchone()[0]
            with grader.connect(box_a) as graded:
                assert graded.info.user == a_user
            # connect to B's database (and so read or change its tables): refused
            with pytest.raises(psycopg.OperationalError, match="permission denied"):
                psycopg.connect(config.with_database(urls[alice], b_db), connect_timeout=5).close()
            # drop it
            with pytest.raises(psycopg.errors.InsufficientPrivilege):
                a_session.execute(sql.SQL("DROP DATABASE {}").format(sql.Identifier(b_db)))
            # signal B's session
            with pytest.raises(psycopg.errors.InsufficientPrivilege):
                a_session.execute("SELECT pg_terminate_backend(%s)", [b_session.info.backend_pid])
            with pytest.raises(psycopg.errors.InsufficientPrivilege):
                a_session.execute("SELECT pg_cancel_backend(%s)", [b_session.info.backend_pid])
            assert b_session.execute("SELECT x FROM secret").fetchone() == (1,)
    with psycopg.connect(admin_url) as admin:  # each owns only its own database
        owned = admin.execute("SELECT datname, pg_get_userbyid(datdba), datconnlimit, "
                              "has_database_privilege('public', oid, 'CONNECT') FROM pg_database "
                              "WHERE datname = ANY(%s)", [[box_a.url.rsplit('/', 1)[1], b_db]]).fetchall()
        assert len(owned) == 2 and all(name == owner and not public for name, owner, _, public in owned), owned
        limits = admin.execute("SELECT rolname, rolconnlimit, rolconfig FROM pg_roles WHERE rolname = ANY(%s)",
                               [[o[0] for o in owned]]).fetchall()
        assert all(lim == provision_room.CONNECTION_LIMIT and any(c.startswith("temp_file_limit=") for c in conf)
                   for _, lim, conf in limits), limits
