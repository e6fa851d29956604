"""JupyterHub configuration for the Zero-Downtime Lab on The Littlest JupyterHub.

Installed by deploy/tljh/install.sh as /opt/tljh/config/jupyterhub_config.d/zdlab.py; TLJH
loads every file there after its own configuration. ``c`` is JupyterHub's config object.

Two ways to give each learner a database, chosen by install.sh:

- embedded (default): each learner's kit starts its own PostgreSQL 18 (data under their home
  folder). All learners share the VM's 127.0.0.1, so each gets a port of their own:
  ZDLAB_PORT = 20000 + the learner's hub user id (unique, stable across restarts).
- shared: DATABASE_URL (from /opt/tljh/config/zdlab-database-url) points every learner at one
  server, and ZDLAB_LEARNER (their hub user name) gives each a database of their own,
  ``zdlab_<name>``, created on first use (the server's user needs CREATEDB).
"""

from pathlib import Path

BASE_PORT = 20000  # + hub user id; ids stay far below 45,535 on a workshop VM
DATABASE_URL_FILE = Path("/opt/tljh/config/zdlab-database-url")


def learner_port(spawner) -> str:
    return str(BASE_PORT + spawner.user.id)


def learner_name(spawner) -> str:
    return spawner.user.name


environment = {
    "PLOOMBER_STATS_ENABLED": "false",  # JupySQL telemetry: never
    "ZDLAB_LEARNER": learner_name,  # JupyterHub calls a callable value with the spawner
}
if DATABASE_URL_FILE.exists():
    environment["DATABASE_URL"] = DATABASE_URL_FILE.read_text().strip()
else:
    environment["ZDLAB_PORT"] = learner_port
    del environment["ZDLAB_LEARNER"]  # the server is the learner's own: its `workshop` database will do

c.Spawner.environment.update(environment)  # noqa: F821 - `c` is provided by JupyterHub
c.Spawner.default_url = "/lab/tree/zdlab/00_setup.ipynb"  # noqa: F821
