"""JupyterHub configuration for the Zero-Downtime Lab on The Littlest JupyterHub.

Installed by deploy/tljh/install.sh as /opt/tljh/config/jupyterhub_config.d/zdlab.py; TLJH
loads every file there after its own configuration. ``c`` is JupyterHub's config object.

Two ways to give each learner a database, chosen by install.sh:

- embedded (default): each learner's kit starts its own PostgreSQL 18 (data under their home
  folder). All learners share the VM's 127.0.0.1, so each gets a port of their own:
  ZDLAB_PORT = 20000 + the learner's hub user id (unique, stable across restarts).
- shared: one server for the room. tools/provision_room.py (an admin step) made a role and a
  database per learner and wrote each learner's URL to a JSON file (hub user name -> URL), copied
  to /opt/tljh/config/zdlab-room.json (0600, read by the hub only). Each learner's server gets
  its OWN URL as DATABASE_URL, never another learner's or an admin's; a learner not in the file
  gets none, so their kit says it cannot connect instead of using someone else's database.
"""

import json
from pathlib import Path

BASE_PORT = 20000  # + hub user id; ids stay far below 45,535 on a workshop VM
ROOM_FILE = Path("/opt/tljh/config/zdlab-room.json")


def learner_port(spawner) -> str:
    return str(BASE_PORT + spawner.user.id)


def learner_name(spawner) -> str:
    return spawner.user.name


environment = {
    "PLOOMBER_STATS_ENABLED": "false",  # JupySQL telemetry: never
    "ZDLAB_LEARNER": learner_name,  # JupyterHub calls a callable value with the spawner
}
def learner_url(spawner) -> str:
    """This learner's own URL, read at each spawn (a room provisioned later needs no hub restart)."""
    return json.loads(ROOM_FILE.read_text()).get(spawner.user.name, "postgresql://not-provisioned@invalid/none")


if ROOM_FILE.exists():
    environment["DATABASE_URL"] = learner_url
else:
    environment["ZDLAB_PORT"] = learner_port
    del environment["ZDLAB_LEARNER"]  # the server is the learner's own: its `workshop` database will do

c.Spawner.environment.update(environment)  # noqa: F821 - `c` is provided by JupyterHub
c.Spawner.default_url = "/lab/tree/zdlab/00_setup.ipynb"  # noqa: F821
