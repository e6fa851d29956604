"""The JupyterHub deployments in deploy/, checked without a cluster or a VM.

No Kubernetes cluster and no TLJH VM run in CI, so nothing here deploys anything. What is
checked instead:

- every YAML file parses, and passes yamllint when it is installed;
- the Zero to JupyterHub values (deploy/z2jh/config.yaml, alone and with the shared-db.yaml
  overlay merged the way Helm merges ``--values`` files) against a schema of the keys they use
  with the chart's types (deploy/z2jh/values-subset.schema.json; the chart's complete schema is
  its values.schema.json), and that the schema does reject a misspelt key and a wrong type;
- the properties the kit relies on: the single-user command, the ENTRYPOINT override, the
  embedded server started in each pod, telemetry off, DATABASE_URL taken from the Secret that
  shared-postgres.yaml defines, ZDLAB_LEARNER from the hub user name;
- the Python snippets for the hub, run against traitlets' real Config object and a fake spawner;
- the plain Kubernetes manifests with ``kubectl create --dry-run=client``, against a local fake
  API server that only answers discovery (kubectl needs discovery to map kinds, even in
  client dry-run; no cluster is contacted);
- deploy/tljh/install.sh with ``bash -n``.
"""

from __future__ import annotations

import copy
import http.server
import json
import re
import shutil
import subprocess
import sys
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace

import jsonschema
import pytest
import yaml

REPO = Path(__file__).resolve().parent.parent
DEPLOY = REPO / "deploy"
Z2JH = DEPLOY / "z2jh"
TLJH = DEPLOY / "tljh"
SCHEMA = json.loads((Z2JH / "values-subset.schema.json").read_text())
YAMLLINT_CONFIG = ("{extends: default, rules: {line-length: {max: 120}, document-start: disable, "
                   "truthy: {check-keys: false}}}")


def _load(path: Path) -> dict:
    return yaml.safe_load(path.read_text())


def _merge(base: dict, overlay: dict) -> dict:
    """Helm's merge of two --values files: maps merge key by key, anything else is replaced."""
    out = copy.deepcopy(base)
    for key, value in overlay.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def _values() -> dict[str, dict]:
    base = _load(Z2JH / "config.yaml")
    return {"embedded": base, "shared": _merge(base, _load(Z2JH / "shared-db.yaml"))}


def _run_hub_config(code: str, environment: dict | None = None) -> SimpleNamespace:
    """Run a hub config snippet the way JupyterHub does: with ``c``, a traitlets Config."""
    from traitlets.config import Config

    c = Config()
    if environment is not None:
        c.KubeSpawner.environment = dict(environment)
    exec(compile(code, "<hub.extraConfig>", "exec"), {"c": c})
    return c


def _spawner(name: str = "Alice.Smith", uid: int = 7) -> SimpleNamespace:
    return SimpleNamespace(user=SimpleNamespace(name=name, id=uid))


# --- YAML ---------------------------------------------------------------------------------


YAML_FILES = sorted(DEPLOY.rglob("*.yaml"))


def test_deploy_files_exist() -> None:
    names = {p.relative_to(DEPLOY).as_posix() for p in DEPLOY.rglob("*") if p.is_file()}
    assert {"z2jh/config.yaml", "z2jh/shared-db.yaml", "z2jh/shared-postgres.yaml",
            "z2jh/values-subset.schema.json", "tljh/install.sh", "tljh/zdlab_config.py"} <= names, names


@pytest.mark.parametrize("path", YAML_FILES, ids=lambda p: p.relative_to(DEPLOY).as_posix())
def test_yaml_parses(path: Path) -> None:
    docs = [d for d in yaml.safe_load_all(path.read_text()) if d is not None]
    assert docs and all(isinstance(d, dict) for d in docs), path


def test_yamllint() -> None:
    if shutil.which("yamllint") is None and not (Path(sys.executable).parent / "yamllint").exists():
        pytest.skip("yamllint is not installed (proposed pin: yamllint==1.38.0)")
    exe = shutil.which("yamllint") or str(Path(sys.executable).parent / "yamllint")
    out = subprocess.run([exe, "--strict", "-d", YAMLLINT_CONFIG, *map(str, YAML_FILES)],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stdout + out.stderr


# --- z2jh values --------------------------------------------------------------------------


@pytest.mark.parametrize("variant", ["embedded", "shared"])
def test_z2jh_values_match_the_schema(variant: str) -> None:
    jsonschema.Draft7Validator.check_schema(SCHEMA)
    errors = sorted(jsonschema.Draft7Validator(SCHEMA).iter_errors(_values()[variant]), key=str)
    assert not errors, "\n".join(f"{'.'.join(map(str, e.path))}: {e.message}" for e in errors)


@pytest.mark.parametrize("breakage", ["misspelt key", "wrong type", "bad quantity"])
def test_z2jh_schema_rejects_mistakes(breakage: str) -> None:
    values = _values()["embedded"]
    if breakage == "misspelt key":
        values["singleuser"]["lifecycleHook"] = values["singleuser"].pop("lifecycleHooks")
    elif breakage == "wrong type":
        values["cull"]["timeout"] = "1h"
    else:
        values["singleuser"]["memory"]["guarantee"] = "1 gigabyte"
    assert list(jsonschema.Draft7Validator(SCHEMA).iter_errors(values)), f"the schema accepted a {breakage}"


def test_z2jh_single_user_runs_the_hub_server_not_zdlab_lab() -> None:
    values = _values()["embedded"]
    single = values["singleuser"]
    # KubeSpawner passes cmd as the container's args: the image's ENTRYPOINT (zdlab-entrypoint,
    # which runs `zdlab lab`) must be replaced, or it would get `jupyterhub-singleuser` as an argument.
    assert single["cmd"] == "jupyterhub-singleuser"
    entrypoint = [line for line in (REPO / "Dockerfile").read_text().splitlines() if line.startswith("ENTRYPOINT")]
    assert entrypoint == ['ENTRYPOINT ["tini", "-g", "--", "zdlab-entrypoint"]'], entrypoint
    c = _run_hub_config(values["hub"]["extraConfig"]["zdlab-entrypoint.py"])
    assert c.KubeSpawner.extra_container_config == {"command": ["tini", "-g", "--"]}
    # The image's user, so the kit's folder (owned by 1000) is writable.
    assert (single["uid"], single["fsGid"]) == (1000, 1000) and "USER 1000:1000" in (REPO / "Dockerfile").read_text()
    assert single["image"]["tag"] not in ("", "latest")
    assert single["extraEnv"]["PLOOMBER_STATS_ENABLED"] == "false"


def test_z2jh_embedded_server_starts_in_each_pod() -> None:
    values = _values()
    script = values["embedded"]["singleuser"]["lifecycleHooks"]["postStart"]["exec"]["command"][-1]
    assert "python -m zdlab db start" in script and "DATABASE_URL" not in values["embedded"]["singleuser"]["extraEnv"]
    # Notebooks are copied without overwriting what the learner saved on their volume.
    assert "cp -n" in script and "make_notebooks.py" in script
    assert values["embedded"]["singleuser"]["storage"]["homeMountPath"] == "/home/jovyan/work/notebooks"
    # The shared variant starts no server of its own.
    shared_script = values["shared"]["singleuser"]["lifecycleHooks"]["postStart"]["exec"]["command"][-1]
    assert "zdlab db start" not in shared_script and "cp -n" in shared_script


def test_z2jh_shared_server_wiring() -> None:
    single = _values()["shared"]["singleuser"]
    # No learner pod reads the admin's Secret: the hub hands each its own URL (below).
    assert "DATABASE_URL" not in single["extraEnv"]
    ref = {"name": "zdlab-shared-db", "key": "database-url"}
    text = (Z2JH / "shared-postgres.yaml").read_text()
    docs = {(d["kind"], d["metadata"]["name"]): d for d in yaml.safe_load_all(text)}
    # No Secret is committed: the file's header creates it with a random password. The server
    # reads its password and the learners their URL from that one Secret, so the two agree.
    assert not [kind for kind, _ in docs if kind == "Secret"], "a Secret (a password) is committed"
    created = re.search(r"kubectl create secret generic (\S+) --namespace zdlab((?:\s*\\\s*#?\s*--from-literal=\S+)+)",
                        text)
    assert created and created.group(1) == ref["name"], "the header must create the Secret the pods read"
    literals = dict(re.findall(r"--from-literal=([\w-]+)=\"([^\"]*)\"", created.group(2)))
    url = literals[ref["key"]]
    assert url.startswith("postgresql://") and "@zdlab-postgres:5432/" in url
    assert literals["postgres-password"] == "$PW" and ":$PW@" in url, "the URL's password must be the server's"
    sts_env = docs[("StatefulSet", "zdlab-postgres")]["spec"]["template"]["spec"]["containers"][0]["env"]
    pw_ref = next(e for e in sts_env if e["name"] == "POSTGRES_PASSWORD")["valueFrom"]["secretKeyRef"]
    assert pw_ref == {"name": ref["name"], "key": "postgres-password"}
    service = docs[("Service", "zdlab-postgres")]
    assert service["spec"]["ports"][0]["port"] == 5432
    # ZDLAB_LEARNER comes from the hub user name, through a callable JupyterHub evaluates per spawn.
    snippet = _values()["shared"]["hub"]["extraConfig"]["zdlab-learner.py"]
    c = _run_hub_config(snippet, {"PLOOMBER_STATS_ENABLED": "false"})
    env = c.KubeSpawner.environment
    assert env["PLOOMBER_STATS_ENABLED"] == "false", "the snippet must add to the environment, not replace it"
    assert env["ZDLAB_LEARNER"](_spawner("alice")) == "alice"
    # Each learner's DATABASE_URL is their own, from the room file tools/provision_room.py wrote.
    mount = _values()["shared"]["hub"]["extraVolumeMounts"][0]["mountPath"]
    assert _values()["shared"]["hub"]["extraVolumes"][0]["secret"]["secretName"] == "zdlab-room"
    assert f"{mount}/room.json" in snippet
    with tempfile.TemporaryDirectory() as tmp:
        room = Path(tmp) / "room.json"
        room.write_text(json.dumps({"alice": "postgresql://zdlab_alice:a@zdlab-postgres:5432/zdlab_alice"}))
        url_of = env["DATABASE_URL"]
        assert url_of(_spawner("alice"), room=str(room)).endswith("/zdlab_alice")
        assert "zdlab_" not in url_of(_spawner("mallory"), room=str(room))
    # The learner pods reach the shared server's pods on 5432, and no other private address.
    policy = single["networkPolicy"]
    assert policy["enabled"] and policy["egressAllowRules"]["privateIPs"] is False
    assert policy["egress"] == [{"to": [{"podSelector": {"matchLabels": {"app.kubernetes.io/name": "zdlab-postgres"}}}],
                                 "ports": [{"port": 5432, "protocol": "TCP"}]}]


def test_z2jh_learner_names_make_valid_databases(monkeypatch: pytest.MonkeyPatch) -> None:
    """Hub user names (e-mail addresses, capitals) become the kit's learner database names."""
    from zdlab import config

    for user, database in [("alice", "zdlab_alice"), ("Bob.Smith@example.org", "zdlab_bob_smith_example_org_")]:
        monkeypatch.setenv("ZDLAB_LEARNER", user)
        assert config.learner_database(config.learner()).startswith(database)


# --- TLJH ---------------------------------------------------------------------------------


def test_tljh_install_script_syntax() -> None:
    out = subprocess.run(["bash", "-n", str(TLJH / "install.sh")], capture_output=True, text=True, timeout=30)
    assert out.returncode == 0, out.stderr
    text = (TLJH / "install.sh").read_text()
    assert "requirements.txt" in text and "zdlab_config.py" in text and "tljh-config reload" in text


@pytest.mark.parametrize("mode", ["embedded", "shared"])
def test_tljh_hub_config(mode: str, tmp_path: Path) -> None:
    url_file = tmp_path / "zdlab-room.json"
    if mode == "shared":  # what tools/provision_room.py writes
        url_file.write_text('{"Alice": "postgresql://zdlab_alice_1:a@127.0.0.1:5432/zdlab_alice_1", '
                            '"bob": "postgresql://zdlab_bob:b@127.0.0.1:5432/zdlab_bob"}\n')
    code = (TLJH / "zdlab_config.py").read_text().replace('Path("/opt/tljh/config/zdlab-room.json")',
                                                         f"Path({str(url_file)!r})")
    from traitlets.config import Config

    c = Config()
    exec(compile(code, "zdlab_config.py", "exec"), {"c": c, "__name__": "zdlab_config"})
    # Not set before (TLJH sets no environment): traitlets keeps the update for when it applies.
    env = c.Spawner.environment.get_value({})
    env = {k: (v(_spawner("Alice", 7)) if callable(v) else v) for k, v in env.items()}
    assert env["PLOOMBER_STATS_ENABLED"] == "false"
    if mode == "shared":
        # Alice's server holds Alice's credentials only: not bob's, not an admin's.
        assert env["DATABASE_URL"] == "postgresql://zdlab_alice_1:a@127.0.0.1:5432/zdlab_alice_1"
        assert env["ZDLAB_LEARNER"] == "Alice" and "ZDLAB_PORT" not in env
        stranger = c.Spawner.environment.get_value({})["DATABASE_URL"](_spawner("mallory", 9))
        assert "zdlab_" not in stranger, "a learner not in the room gets no one's database"
    else:
        # Every learner's embedded server on a port of their own: they share the VM's 127.0.0.1.
        assert env["ZDLAB_PORT"] == "20007" and "DATABASE_URL" not in env


# --- plain Kubernetes manifests -----------------------------------------------------------


DISCOVERY = {
    "/api": {"kind": "APIVersions", "versions": ["v1"],
             "serverAddressByClientCIDRs": [{"clientCIDR": "0.0.0.0/0", "serverAddress": "127.0.0.1"}]},
    "/apis": {"kind": "APIGroupList", "apiVersion": "v1", "groups": [
        {"name": "apps", "versions": [{"groupVersion": "apps/v1", "version": "v1"}],
         "preferredVersion": {"groupVersion": "apps/v1", "version": "v1"}}]},
    "/api/v1": {"kind": "APIResourceList", "groupVersion": "v1", "resources": [
        {"name": n, "singularName": s, "namespaced": True, "kind": k, "verbs": ["create", "get", "list"]}
        for n, s, k in [("secrets", "secret", "Secret"), ("services", "service", "Service"),
                        ("configmaps", "configmap", "ConfigMap"),
                        ("persistentvolumeclaims", "persistentvolumeclaim", "PersistentVolumeClaim")]]},
    "/apis/apps/v1": {"kind": "APIResourceList", "groupVersion": "apps/v1", "resources": [
        {"name": n, "singularName": s, "namespaced": True, "kind": k, "verbs": ["create", "get", "list"]}
        for n, s, k in [("statefulsets", "statefulset", "StatefulSet"), ("deployments", "deployment", "Deployment")]]},
}


@pytest.fixture
def discovery_only_api() -> Iterator[str]:
    """A local HTTP server that answers Kubernetes discovery and nothing else (404)."""

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 - the http.server API
            body = DISCOVERY.get(self.path.split("?")[0])
            self.send_response(200 if body else 404)
            self.send_header("Content-Type", "application/json")
            self.end_headers()
            self.wfile.write(json.dumps(body or {"kind": "Status", "code": 404}).encode())

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def _kubectl() -> str:
    exe = shutil.which("kubectl") or ("/usr/bin/kubectl" if Path("/usr/bin/kubectl").exists() else None)
    if exe is None:
        pytest.skip("kubectl is not installed: the manifests' client-side dry run needs it")
    return exe


def test_kubernetes_manifests_dry_run(discovery_only_api: str, tmp_path: Path) -> None:
    kubectl = _kubectl()
    manifest = Z2JH / "shared-postgres.yaml"
    out = subprocess.run(
        [kubectl, "create", "--dry-run=client", "--validate=false", "-o", "yaml", "--namespace", "zdlab",
         "--server", discovery_only_api, "--cache-dir", str(tmp_path / "cache"), "-f", str(manifest)],
        capture_output=True, text=True, timeout=60, env={"HOME": str(tmp_path), "PATH": "/usr/bin:/bin"})
    assert out.returncode == 0, out.stderr
    items = [d for d in yaml.safe_load_all(out.stdout) if d]
    assert sorted(o["kind"] for o in items) == ["Service", "StatefulSet"], out.stdout[:500]
    sts = next(o for o in items if o["kind"] == "StatefulSet")
    pod = sts["spec"]["template"]["spec"]
    assert sts["spec"]["selector"]["matchLabels"].items() <= sts["spec"]["template"]["metadata"]["labels"].items()
    assert pod["containers"][0]["image"] == "postgres:18"
    # Mounted where postgres:18 expects its data (the compose file mounts the same parent).
    assert {"name": "data", "mountPath": "/var/lib/postgresql"} in pod["containers"][0]["volumeMounts"]


def test_kubectl_dry_run_rejects_an_unknown_kind(discovery_only_api: str, tmp_path: Path) -> None:
    """The dry run is not a rubber stamp: a kind the API does not serve fails."""
    kubectl = _kubectl()
    bad = tmp_path / "bad.yaml"
    bad.write_text("apiVersion: apps/v1\nkind: StatefulSett\nmetadata:\n  name: x\n")
    out = subprocess.run(
        [kubectl, "create", "--dry-run=client", "--validate=false", "-o", "json", "--server", discovery_only_api,
         "--cache-dir", str(tmp_path / "cache"), "-f", str(bad)],
        capture_output=True, text=True, timeout=60, env={"HOME": str(tmp_path), "PATH": "/usr/bin:/bin"})
    assert out.returncode != 0 and "StatefulSett" in out.stderr, out.stderr
