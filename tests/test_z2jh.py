"""config/z2jh-values.yaml, run the way Zero to JupyterHub 4.4.0 runs it (tests/z2jh_chart.py).

The chart's configuration loader is reproduced for the keys the file uses; what it builds is
checked against the real jupyterhub (a hub initialised from it: services, roles, scopes) and
kubespawner (every pod of every catalog choice, validated strictly), and the file's keys
against the chart version's documented keys.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from types import SimpleNamespace
from unittest import mock
from urllib.parse import urlparse

import pytest
import yaml
from jupyterhub.objects import Hub
from sqlalchemy.engine import make_url

import jupyterhub_credits
from jupyterhub_credits.catalog import CPU_ONLY, load_catalog, validate_request
from jupyterhub_credits.hubconfig import SCOPES, SERVICE_NAME
from jupyterhub_credits.ledger import database as ledger_database
from jupyterhub_credits.spawner.context import reset_contexts
from jupyterhub_credits.spawner.kube import CreditsKubeSpawner
from tests import z2jh_chart
from tests.kube.emulator import KubeEmulator, MockUser, kubespawner_pointed_at
from tests.kube.validation import pod_to_dict, validate_manifest

ROOT = Path(__file__).resolve().parent.parent
VALUES = ROOT / "config" / "z2jh-values.yaml"
CATALOG_FILE = ROOT / "config" / "catalog.yaml"
CATALOG = load_catalog(CATALOG_FILE)
RELEASE = NAMESPACE = "jhub"
GPU = "nvidia.com/gpu"
#: The taint the README tells operators to put on GPU node pools (GKE puts it on its own).
GPU_TAINT = {"key": GPU, "value": "present", "effect": "NoSchedule"}
#: The secret the README tells operators to create (the ledger URL: a throwaway SQLite file).
DB_SECRET = "jupyterhub-credits-db"
HUB_DB_PASSWORD = "hub-db-password"
#: As an operator adds their authenticator's admins under hub.config.
OPERATOR_VALUES = {"hub": {"config": {"Authenticator": {"admin_users": ["ops"]}}}}


@pytest.fixture(scope="module")
def user_values():
    return yaml.safe_load(VALUES.read_text())


@pytest.fixture(scope="module")
def values():
    return z2jh_chart.render_values(
        VALUES, set_file={"hub.extraFiles.credits-catalog.stringData": CATALOG_FILE},
        overrides=OPERATOR_VALUES, release=RELEASE, namespace=NAMESPACE)


@pytest.fixture(scope="module")
def chart(values, tmp_path_factory):
    """The hub pod the chart runs and the Config its jupyterhub_config.py builds there."""
    workdir = tmp_path_factory.mktemp("z2jh")
    credits_url = f"sqlite:///{workdir / 'credits.sqlite'}"
    pod = z2jh_chart.hub_pod(values, workdir / "pod", k8s_secrets={
        DB_SECRET: {"hub.db.password": HUB_DB_PASSWORD, "credits-db-url": credits_url}})
    config = z2jh_chart.load_hub_config(pod)
    yield SimpleNamespace(pod=pod, c=config, credits_url=credits_url, workdir=workdir)
    reset_contexts()


def tolerates(toleration: dict, taint: dict) -> bool:
    """Kubernetes' rule: does ``toleration`` tolerate ``taint``?"""
    if toleration.get("effect") and toleration["effect"] != taint["effect"]:
        return False
    operator = toleration.get("operator", "Equal")
    if not toleration.get("key"):
        return operator == "Exists"
    if toleration["key"] != taint["key"]:
        return False
    return operator == "Exists" or toleration.get("value", "") == taint.get("value", "")


def catalog_gpu_tolerations() -> list[dict]:
    return [dict(t) for gpu in CATALOG.gpu_types.values() for t in gpu.kubernetes.tolerations]


# --------------------------------------------------------------------------- the values file


def test_every_key_set_is_one_the_chart_version_documents(user_values):
    version, documented = z2jh_chart.read_documented_keys()
    assert version == z2jh_chart.CHART_VERSION
    assert z2jh_chart.undocumented_keys(user_values, documented) == []
    # The check itself: a misspelt key is found, free-form maps are not looked into,
    # documented keys below a map of names (prePuller.extraImages.<name>.tag) are.
    assert z2jh_chart.undocumented_keys({
        "hub": {"extraConfg": {}, "extraEnv": {"ANY": {"valueFrom": {}}}},
        "prePuller": {"extraImages": {"x": {"name": "n", "tga": "t"}}},
        "singleuser": {"extraPodConfig": {"anything": {"goes": 1}}},
    }, documented) == ["hub.extraConfg", "prePuller.extraImages.x.tga"]


def test_hub_and_pulled_images_are_the_ones_the_bake_file_builds(user_values):
    image = user_values["hub"]["image"]
    assert image == {"name": "ghcr.io/jupyterhub-credits/k8s-hub",
                     "tag": jupyterhub_credits.__version__}
    bake_file = ROOT / "images" / "docker-bake.json"
    if not bake_file.exists():
        pytest.skip("images/docker-bake.json is not there yet (the images build the hub image)")
    bake = json.loads(bake_file.read_text())
    registry = bake["variable"]["REGISTRY"]["default"]

    def refs(target: str) -> set[str]:
        return {tag.replace("${REGISTRY}", registry) for tag in bake["target"][target]["tags"]}

    assert f"{image['name']}:{image['tag']}" in refs("hub")
    pulled = user_values["prePuller"]["extraImages"]
    assert set(pulled) == set(bake["group"]["default"]["targets"])
    for target, ref in pulled.items():
        assert f"{ref['name']}:{ref['tag']}" in refs(target), target


# --------------------------------------------------------------------------- hub settings


def test_hub_runs_the_credits_spawner_on_the_mounted_catalog_and_postgres(chart, values):
    from jupyterhub.app import JupyterHub

    c, pod = chart.c, chart.pod
    assert JupyterHub(config=c).spawner_class is CreditsKubeSpawner
    # hub.extraFiles mounts the catalog where configure_credits reads it, with its content.
    mounted = pod.root / values["hub"]["extraFiles"]["credits-catalog"]["mountPath"].lstrip("/")
    assert c.CreditsSpawner.catalog_path == str(mounted)
    assert mounted.read_text() == CATALOG_FILE.read_text()
    assert load_catalog(c.CreditsSpawner.catalog_path).images.keys() == CATALOG.images.keys()
    # The hub's own database: PostgreSQL, migrated at start, its password from the secret.
    assert c.JupyterHub.db_url == values["hub"]["db"]["url"]
    assert make_url(c.JupyterHub.db_url).get_backend_name() == "postgresql"
    assert make_url(c.JupyterHub.db_url).password is None, "no password in the values file"
    assert c.JupyterHub.upgrade_db is True
    assert pod.final_environ["PGPASSWORD"] == HUB_DB_PASSWORD
    # The ledger: its URL from the secret, migrated by configure_credits (a throwaway SQLite).
    assert c.CreditsSpawner.credits_db_url == chart.credits_url
    engine = ledger_database.make_engine(chart.credits_url)
    try:
        assert ledger_database.current_revision(engine) == ledger_database.head_revision()
    finally:
        engine.dispose()
    # The chart's own settings that the credits setup relies on are still there.
    assert c.JupyterHub.cleanup_servers is False, "a hub restart must not stop paid servers"
    assert c.KubeSpawner.namespace == NAMESPACE


def test_services_roles_and_scopes_pass_a_real_hub_initialisation(chart, tmp_path, monkeypatch):
    """The Config initialises a real JupyterHub 6.1: services, roles and scopes are valid."""
    from jupyterhub import orm, scopes
    from jupyterhub.app import JupyterHub

    c = chart.c.copy()
    c.JupyterHub.db_url = f"sqlite:///{tmp_path / 'jupyterhub.sqlite'}"  # not the cluster's
    monkeypatch.chdir(tmp_path)
    app = JupyterHub(config=c)
    # initialize() defines the custom scopes in jupyterhub.scopes' module-level table: put the
    # table back afterwards so that no later test in this process sees this hub's definitions.
    monkeypatch.setattr(scopes, "scope_definitions", dict(scopes.scope_definitions))

    async def initialise():
        with z2jh_chart.environment(chart.pod.final_environ):
            await app.initialize([])

    asyncio.run(initialise())
    try:
        services = app._service_map
        assert set(services) == {SERVICE_NAME, "jupyterhub-idle-culler"}
        assert services[SERVICE_NAME].managed and services["jupyterhub-idle-culler"].managed
        culler = next(s for s in c.JupyterHub.services if s["name"] == "jupyterhub-idle-culler")
        assert culler["command"][:3] == ["python3", "-m", "jupyterhub_idle_culler"]
        assert "--url=http://localhost:8081/hub/api" in culler["command"]
        assert "--timeout=3600" in culler["command"]

        roles = {role.name: role for role in app.db.query(orm.Role)}
        culler_role = roles["jupyterhub-idle-culler"]
        assert set(culler_role.scopes) == set(z2jh_chart.CULLER_SCOPES)
        assert [s.name for s in culler_role.services] == ["jupyterhub-idle-culler"]
        assert [s.name for s in roles["credits-service"].services] == [SERVICE_NAME]
        assert "delete:servers" in roles["credits-service"].scopes  # the meter stops servers
        assert [u.name for u in roles["credits-admin"].users] == ["ops"]  # from hub.config
        assert "access:services!service=credits" in roles["server"].scopes
        assert "custom:credits:read!user" in roles["user"].scopes  # extra_user_scopes
        # Every role's scopes exist for this hub, custom ones included, and expand.
        for role in roles.values():
            scopes._check_scopes_exist(role.scopes, who_for=f"role {role.name}")
        assert set(SCOPES) <= set(scopes.scope_definitions)
        assert {"custom:credits:read", "custom:credits:spend", "custom:credits:events",
                "custom:credits:metrics"} <= scopes.expand_scopes(["custom:credits:admin"])
        with pytest.raises(KeyError):  # the check can fail
            scopes._check_scopes_exist(["custom:credits:undefined"])
    finally:
        app.db.close()
        app.db.get_bind().dispose()


# --------------------------------------------------------------------------- user pods


def every_request():
    for image_id, image in CATALOG.images.items():
        yield {"image": image_id, "gpu_type": CPU_ONLY, "gpus": 0, "hours": "1"}
        for gpu_type in image.gpu_types:
            for gpus in range(1, CATALOG.quotas.max_gpus_per_session + 1):
                yield {"image": image_id, "gpu_type": gpu_type, "gpus": gpus, "hours": "1"}


@pytest.mark.asyncio(loop_scope="function")
async def test_every_pod_of_every_catalog_choice_validates(chart):
    c = chart.c
    chart_tolerations = c.KubeSpawner.tolerations
    credits_url = next(s for s in c.JupyterHub.services if s["name"] == SERVICE_NAME)["url"]
    checked = 0
    async with KubeEmulator() as emulator, kubespawner_pointed_at(emulator):
        spawner = CreditsKubeSpawner(
            hub=Hub(), user=MockUser(name="alice", groups=[]), config=c, api_token="token",
            oauth_client_id="unused", db=mock.Mock(),
            capacity_check=False)  # capacity is tested in test_kube_spawner; here: the pods
        for options in every_request():
            request = validate_request(CATALOG, options)
            session = SimpleNamespace(key=f"session:{checked:032x}", id=checked)
            spawner.user_options = options
            await spawner.place_on_gpus(session, request)
            await spawner.load_user_options()
            pod = pod_to_dict(await spawner.get_pod_manifest())
            validate_manifest(pod)

            spec = pod["spec"]
            (container,) = spec["containers"]
            resources = container.get("resources") or {}
            env = {e["name"]: e.get("value") for e in container["env"]}
            assert container["image"] == CATALOG.images[request.image].image, options
            assert spec["restartPolicy"] == "Never"
            assert spec["schedulerName"] == f"{RELEASE}-user-scheduler"
            assert [i["name"] for i in spec["initContainers"]] == ["block-cloud-metadata"]
            assert spec["securityContext"]["fsGroup"] == 100
            assert container["securityContext"]["runAsUser"] == 1000
            # The pod may reach the hub (network policy) and knows the credits service.
            assert pod["metadata"]["labels"]["hub.jupyter.org/network-access-hub"] == "true"
            assert env["JUPYTERHUB_CREDITS_API_URL"] == f"{credits_url}/services/credits/api"
            assert env["JUPYTERHUB_CREDITS_SESSION"] == session.key
            if request.uses_gpus:
                placement = CATALOG.gpu_types[request.gpu_type].kubernetes
                assert resources["limits"][placement.resource] == str(request.gpus)
                assert resources["requests"][placement.resource] == str(request.gpus)
                assert spec["nodeSelector"] == dict(placement.node_selector)
                assert spec["tolerations"] == [*chart_tolerations,
                                               *map(dict, placement.tolerations)]
                assert any(tolerates(t, GPU_TAINT) for t in spec["tolerations"])
            else:
                assert GPU not in resources.get("limits", {})
                assert "nodeSelector" not in spec or not spec["nodeSelector"]
                # A CPU server cannot land on a (tainted) GPU node.
                assert not any(tolerates(t, GPU_TAINT) for t in spec["tolerations"])
                assert env["NVIDIA_VISIBLE_DEVICES"] == "void"
            checked += 1
        # The home volume's claim, which KubeSpawner creates before the first pod.
        pvc = pod_to_dict(spawner.get_pvc_manifest())
        validate_manifest(pvc)
        assert pvc["spec"]["resources"]["requests"]["storage"] == "10Gi"
        assert {v["persistentVolumeClaim"]["claimName"] for v in spec["volumes"]
                if v.get("persistentVolumeClaim")} == {pvc["metadata"]["name"]}
    assert checked == 4 + 3 * 3 * 3  # 4 images (one CPU-only), 3 on 3 GPU types × 1..3 GPUs


# --------------------------------------------------------------------------- pre-puller


@pytest.mark.parametrize("hook", [True, False], ids=["hook", "continuous"])
def test_pre_puller_pulls_every_catalog_image_on_gpu_nodes_too(values, hook):
    daemonset = z2jh_chart.image_puller_daemonset(values, hook=hook)
    validate_manifest(daemonset)
    assert {image.image for image in CATALOG.images.values()} <= z2jh_chart.pulled_images(
        daemonset)
    tolerations = daemonset["spec"]["template"]["spec"]["tolerations"]
    assert any(tolerates(t, GPU_TAINT) for t in tolerations)
    for toleration in catalog_gpu_tolerations():  # whatever taint the catalog tolerates
        taint = {"key": toleration["key"], "effect": toleration.get("effect", "NoSchedule"),
                 "value": toleration.get("value", "present")}
        assert any(tolerates(t, taint) for t in tolerations), taint
    assert "nodeSelector" not in daemonset["spec"]["template"]["spec"], "every node"
    # The chart's first pull, singleuser.image, is a catalog image too (no wasted pull).
    first = values["singleuser"]["image"]
    assert f"{first['name']}:{first['tag']}" in {i.image for i in CATALOG.images.values()}
    assert values["prePuller"]["hook"]["enabled"] and values["prePuller"]["continuous"]["enabled"]


def test_toleration_rule_can_fail():
    assert not tolerates({"key": GPU, "operator": "Equal", "value": "x"}, GPU_TAINT)
    assert not tolerates({"key": GPU, "operator": "Exists", "effect": "NoExecute"}, GPU_TAINT)
    assert tolerates({"operator": "Exists"}, GPU_TAINT)


# --------------------------------------------------------------------------- the network path


def test_proxy_and_user_servers_reach_the_credits_service_in_the_hub_pod(chart, values):
    """The Service port, the network policies (hub, user pods, proxy) and the service agree."""
    c = chart.c
    service = next(s for s in c.JupyterHub.services if s["name"] == SERVICE_NAME)
    port = urlparse(service["url"]).port
    assert urlparse(service["url"]).hostname == chart.pod.get_name("hub")
    assert urlparse(service["environment"]["JUPYTERHUB_CREDITS_BIND_URL"]).port == port

    hub = values["hub"]
    hub_service = {"apiVersion": "v1", "kind": "Service",
                   "metadata": {"name": "hub", "namespace": NAMESPACE},
                   "spec": {"selector": {"component": "hub"},
                            "ports": [{"name": "hub", "port": 8081, "targetPort": "http"},
                                      *hub["service"]["extraPorts"]]}}
    validate_manifest(hub_service)
    assert {p["port"] for p in hub["service"]["extraPorts"]} == {port}
    assert {p["targetPort"] for p in hub["service"]["extraPorts"]} == {port}

    def policy(name: str, **rules) -> dict:
        return {"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
                "metadata": {"name": name, "namespace": NAMESPACE},
                "spec": {"podSelector": {}, **rules}}

    validate_manifest(policy("hub", ingress=hub["networkPolicy"]["ingress"]))
    validate_manifest(policy("singleuser", egress=values["singleuser"]["networkPolicy"]["egress"]))
    validate_manifest(policy("proxy", egress=values["proxy"]["chp"]["networkPolicy"]["egress"]))
    # Into the hub pod on the service's port: from pods labelled as user pods are.
    (rule,) = hub["networkPolicy"]["ingress"]
    assert [p["port"] for p in rule["ports"]] == [port]
    user_labels = c.KubeSpawner.extra_labels
    assert all(user_labels.get(k) == v
               for source in rule["from"] for k, v in source["podSelector"]["matchLabels"].items())
    # Out of user pods and the proxy to the hub pod (the chart's labels on it) on that port.
    hub_pod_labels = {"component": "hub", "app": "jupyterhub", "release": RELEASE,
                      "app.kubernetes.io/component": "hub",
                      "app.kubernetes.io/name": "jupyterhub",
                      "app.kubernetes.io/instance": RELEASE}
    for egress_rules in (values["singleuser"]["networkPolicy"]["egress"],
                         values["proxy"]["chp"]["networkPolicy"]["egress"]):
        (egress,) = egress_rules
        assert [p["port"] for p in egress["ports"]] == [port]
        assert all(hub_pod_labels.get(k) == v for target in egress["to"]
                   for k, v in target["podSelector"]["matchLabels"].items())
