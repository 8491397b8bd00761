"""What the Zero to JupyterHub chart makes of a values file, reproduced for the tests.

No cluster and no ``helm`` run here, so this module plays the chart for the keys that
``config/z2jh-values.yaml`` uses: Helm's merge of the values over the chart's defaults
(and ``--set-file``), the hub pod the chart starts (its secret, its environment, its
mounted ``hub.extraFiles``), and the chart's ``jupyterhub_config.py`` that turns the
values into a traitlets ``Config``, ending with the ``hub.extraConfig`` snippets. The
tests then check the result against the real ``jupyterhub`` and ``kubespawner``.

Reproduced, from chart 4.4.0 (jupyterhub/zero-to-jupyterhub-k8s tag 4.4.0, commit
5c5f5df7; files jupyterhub/files/hub/jupyterhub_config.py and z2jh.py,
templates/hub/deployment.yaml, secret.yaml, _helpers-names.tpl and
image-puller/_helpers-daemonset.tpl), written from reading them, not copied:

- values: the chart's defaults (``CHART_DEFAULTS``, only the keys read below) under the
  user's values, maps merged key by key, anything else replaced, ``null`` deleting a
  default; ``--set-file`` as ``set_file={"a.b.c": path}``;
- z2jh.py's helpers as snippets see them: ``get_config`` (dotted path into the values),
  ``get_secret_value`` (the user's ``hub.existingSecret`` first, then the chart's own
  secret), ``get_name``/``get_name_env`` (resource names with ``fullnameOverride`` a
  string, and the Service environment variables Kubernetes sets), ``set_config_if_not_none``;
- the hub pod: ``--upgrade-db`` when ``hub.db.upgrade`` is true; the environment
  (``POD_NAMESPACE``, ``HELM_RELEASE_NAME``, ``CONFIGPROXY_AUTH_TOKEN``, ``hub.extraEnv`` in
  its mapping form with ``value``, ``valueFrom.secretKeyRef`` and the namespace
  ``fieldRef``; secrets come from ``k8s_secrets``); ``hub.extraFiles`` with ``stringData``,
  mounted under a temporary root (the pod's ``/`` is ``root``: ``mountPath`` is seen by the
  snippets as ``root + mountPath``); api tokens, cookie secret and CryptKeeper keys
  generated as the chart's secret does;
- jupyterhub_config.py: the fixed hub settings (spawner class, external proxy,
  ``cleanup_servers`` off, ``last_activity_interval``, bind/connect URLs), the database
  (``hub.db.url``, PGPASSWORD/MYSQL_PWD from ``hub.db.password``), common labels and
  namespace, every ``singleuser.*`` key the chart maps to a KubeSpawner trait, the image,
  ``allowPrivilegeEscalation``, image pull secrets, the user scheduler, node-purpose
  affinity, tolerations (``scheduling.userPods.tolerations`` + ``singleuser.extraTolerations``),
  dynamic/static home storage, the cloud-metadata blocking init container, ``cmd``,
  ``defaultUrl``, the idle culler's service and role (its command and scopes), ``hub.services``
  (name from the key, api token from the secret), ``hub.loadRoles``, ``hub.config``
  pass-through, and ``hub.extraConfig`` exec'd in sorted key order with the names the chart's
  file has in scope (``c``, z2jh's helpers, ``os``, ``re``, ``sys``, ``glob``,
  ``url_path_join``, kubernetes_asyncio's ``client``, ``camelCaseify``);
- the image pullers (hook and continuous DaemonSets): their pod's node selector, tolerations
  (``scheduling.userPods.tolerations`` + ``singleuser.extraTolerations`` +
  ``prePuller.extraTolerations``) and the images they pull.

Not reproduced (a values file using them fails loudly with ``NotReproduced``, or they do not
shape what the tests check): templates other than those above (proxy, ingress, RBAC,
network policies, user scheduler), ``nameOverride``/null ``fullnameOverride``,
``singleuser.extraFiles``, ``hub.extraFiles`` with ``data``/``binaryData``,
``/usr/local/etc/jupyterhub/jupyterhub_config.d``, ``hub.existingSecret``'s own
``values.yaml``, the curl HTTP client the chart selects for Tornado (process-wide),
``debug.enabled``, required user node affinity in the pullers, and module-level names of the
chart's file other than those listed (a snippet using one fails with a NameError here).

Regenerate the recorded documented keys (tests/z2jh_documented_keys.txt) from the chart's
values.schema.yaml with ``python -m tests.z2jh_chart values.schema.yaml``.
"""

from __future__ import annotations

import contextlib
import copy
import glob
import os
import re
import secrets
import sys
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from traitlets.config import Config

CHART_VERSION = "4.4.0"
CHART_COMMIT = "5c5f5df751588a68a7781ead01d0f62e88e2e72f"
DOCUMENTED_KEYS = Path(__file__).with_name("z2jh_documented_keys.txt")

#: The chart's default values that the code below reads (values.yaml of 4.4.0; image tags
#: are the chart version, as chartpress sets them at release).
CHART_DEFAULTS: dict[str, Any] = {
    "fullnameOverride": "",
    "nameOverride": None,
    "imagePullSecret": {"create": False, "automaticReferenceInjection": True},
    "imagePullSecrets": [],
    "hub": {
        "config": {"JupyterHub": {"admin_access": True, "authenticator_class": "dummy"}},
        "baseUrl": "/",
        "db": {"type": "sqlite-pvc", "upgrade": None, "url": None, "password": None},
        "extraEnv": {}, "extraConfig": {}, "extraFiles": {}, "services": {}, "loadRoles": {},
        "templatePaths": [], "templateVars": {}, "existingSecret": None,
        "consecutiveFailureLimit": 5, "allowNamedServers": False,
        "namedServerLimitPerUser": None, "concurrentSpawnLimit": 64,
        "activeServerLimit": None, "authenticatePrometheus": None,
        "redirectToServer": None, "shutdownOnLogout": None,
    },
    "proxy": {"secretToken": None},
    "singleuser": {
        "podNameTemplate": None, "extraTolerations": [], "nodeSelector": {},
        "extraNodeAffinity": {"required": [], "preferred": []},
        "extraPodAffinity": {"required": [], "preferred": []},
        "extraPodAntiAffinity": {"required": [], "preferred": []},
        "networkTools": {"image": {"name": "quay.io/jupyterhub/k8s-network-tools",
                                   "tag": CHART_VERSION, "pullPolicy": None,
                                   "pullSecrets": []},
                         "resources": {}},
        "cloudMetadata": {"blockWithIptables": True, "ip": "169.254.169.254"},
        "events": True, "extraAnnotations": {},
        "extraLabels": {"hub.jupyter.org/network-access-hub": "true"},
        "extraFiles": {}, "extraEnv": {}, "lifecycleHooks": {}, "initContainers": [],
        "extraContainers": [], "allowPrivilegeEscalation": False, "uid": 1000, "fsGid": 100,
        "serviceAccountName": None,
        "storage": {"type": "dynamic", "extraLabels": {}, "extraVolumes": None,
                    "extraVolumeMounts": None,
                    "static": {"pvcName": None, "subPath": "{username}"},
                    "capacity": "10Gi", "homeMountPath": "/home/jovyan",
                    "dynamic": {"storageClass": None, "pvcNameTemplate": None,
                                "volumeNameTemplate": "volume-{user_server}",
                                "storageAccessModes": ["ReadWriteOnce"], "subPath": None}},
        "image": {"name": "quay.io/jupyterhub/k8s-singleuser-sample", "tag": CHART_VERSION,
                  "pullPolicy": None, "pullSecrets": []},
        "startTimeout": 300, "cpu": {"limit": None, "guarantee": None},
        "memory": {"limit": None, "guarantee": "1G"},
        "extraResource": {"limits": {}, "guarantees": {}},
        "cmd": "jupyterhub-singleuser", "defaultUrl": None, "extraPodConfig": {},
        "profileList": [],
    },
    "scheduling": {
        "userScheduler": {"enabled": True},
        "podPriority": {"enabled": False},
        "userPods": {
            "tolerations": [
                {"key": "hub.jupyter.org/dedicated", "operator": "Equal", "value": "user",
                 "effect": "NoSchedule"},
                {"key": "hub.jupyter.org_dedicated", "operator": "Equal", "value": "user",
                 "effect": "NoSchedule"},
            ],
            "nodeAffinity": {"matchNodePurpose": "prefer"},
        },
    },
    "prePuller": {
        "containerSecurityContext": {
            "runAsNonRoot": True, "runAsUser": 65534, "runAsGroup": 65534,
            "allowPrivilegeEscalation": False, "capabilities": {"drop": ["ALL"]},
            "seccompProfile": {"type": "RuntimeDefault"}},
        "resources": {}, "extraTolerations": [],
        "hook": {"enabled": True}, "continuous": {"enabled": True},
        "pullProfileListImages": True, "extraImages": {},
        "pause": {"image": {"name": "registry.k8s.io/pause", "tag": "3.10.1"}},
    },
    "cull": {"enabled": True, "users": False, "adminUsers": True, "removeNamedServers": False,
             "timeout": 3600, "every": 600, "concurrency": 10, "maxAge": 0},
    "debug": {"enabled": False},
}

#: Port of the hub container and of the proxy's API Service (the chart's fixed numbers).
HUB_PORT = 8081
PROXY_API_PORT = 8001


class NotReproduced(NotImplementedError):
    """The values use a chart behaviour this module does not reproduce."""


# --------------------------------------------------------------------------- values


def helm_merge(defaults: Any, values: Any) -> Any:
    """Helm's coalescing of user ``values`` over chart ``defaults``."""
    if not (isinstance(defaults, Mapping) and isinstance(values, Mapping)):
        return copy.deepcopy(values)
    merged = copy.deepcopy(dict(defaults))
    for key, value in values.items():
        if value is None:
            merged.pop(key, None)  # null removes a default
        elif key in merged:
            merged[key] = helm_merge(merged[key], value)
        else:
            merged[key] = copy.deepcopy(value)
    return merged


def _set_path(values: dict, dotted: str, value: Any) -> None:
    *parents, last = dotted.split(".")
    for key in parents:
        values = values.setdefault(key, {})
    values[last] = value


def render_values(values_file: Path, *, set_file: Mapping[str, Path] = (),
                  overrides: Mapping | None = None, release: str = "jhub",
                  namespace: str = "jhub") -> dict:
    """The values the chart's templates see: defaults, the file, ``--set-file``, overrides.

    Like the chart's secret, the result carries ``Chart`` and ``Release`` for get_config.
    """
    user = yaml.safe_load(Path(values_file).read_text()) or {}
    for dotted, path in dict(set_file).items():
        _set_path(user, dotted, Path(path).read_text())
    if overrides:
        user = helm_merge(user, overrides)
    values = helm_merge(CHART_DEFAULTS, user)
    values["Chart"] = {"Name": "jupyterhub", "Version": CHART_VERSION, "AppVersion": "5.5.0"}
    values["Release"] = {"Name": release, "Namespace": namespace, "Service": "Helm"}
    return values


def resource_names(values: dict) -> dict[str, str]:
    """The hub ConfigMap's resource names that get_name reads."""
    fullname = values.get("fullnameOverride")
    if not isinstance(fullname, str) or values.get("nameOverride") is not None:
        raise NotReproduced("names with nameOverride or a null fullnameOverride")
    release = values["Release"]["Name"]
    dash = f"{fullname}-" if fullname else ""
    return {
        "hub": f"{dash}hub",
        "proxy-api": f"{dash}proxy-api",
        "proxy-public": f"{dash}proxy-public",
        "singleuser": f"{dash}singleuser",
        "image-pull-secret": f"{dash}image-pull-secret",
        # cluster-wide names carry the release when there is no fullname
        "user-scheduler": f"{dash}user-scheduler" if fullname else f"{release}-user-scheduler",
        "priority": fullname or f"{release}-default-priority",
    }


# --------------------------------------------------------------------------- the hub pod


@dataclass
class HubPod:
    """What the chart's hub pod gives ``jupyterhub_config.py``: values, secrets, env, files."""

    values: dict
    root: Path
    #: the chart-managed k8s Secret (``/usr/local/etc/jupyterhub/secret/<key>``)
    secret: dict[str, str]
    #: the user's ``hub.existingSecret`` (``.../existing-secret/<key>``), if any
    existing_secret: dict[str, str]
    environ: dict[str, str]
    names: dict[str, str]
    args: list[str] = field(default_factory=list)
    #: the hub process's environment once the config file ran (PGPASSWORD, ...)
    final_environ: dict[str, str] = field(default_factory=dict)

    # z2jh.py's helpers, on this pod's files -------------------------------------------

    def get_config(self, key: str, default: Any = None) -> Any:
        value: Any = self.values
        for level in key.split("."):
            if not isinstance(value, dict) or level not in value:
                return default
            value = value[level]
        return value

    def get_secret_value(self, key: str, default: Any = ...) -> Any:
        for source in (self.existing_secret, self.secret):
            if key in source:
                return source[key]
        if default is not ...:
            return default
        raise KeyError(f"{key} not found in either k8s Secret!")

    def get_name(self, name: str) -> str:
        return self.names[name]

    def get_name_env(self, name: str, suffix: str = "") -> str:
        return os.environ[(self.names[name] + suffix).upper().replace("-", "_")]

    def set_config_if_not_none(self, section, name: str, key: str) -> None:
        value = self.get_config(key)
        if value is not None:
            setattr(section, name, value)


def _random_hex(length: int = 64) -> str:
    return secrets.token_hex(length // 2)


def chart_secret(values: dict) -> dict[str, str]:
    """The chart-managed hub Secret's keys (generated values as on a first install)."""
    hub = values["hub"]
    secret = {
        "hub.config.ConfigurableHTTPProxy.auth_token": values["proxy"].get("secretToken")
        or _random_hex(),
        "hub.config.JupyterHub.cookie_secret": _random_hex(),
        "hub.config.CryptKeeper.keys": _random_hex(),
    }
    if hub["db"].get("password"):
        secret["hub.db.password"] = hub["db"]["password"]
    for key, service in hub["services"].items():
        secret[f"hub.services.{key}.apiToken"] = (
            service.get("api_token") or service.get("apiToken") or _random_hex())
    return secret


def hub_args(values: dict) -> list[str]:
    """The hub container's arguments after ``jupyterhub --config ...``."""
    upgrade = values["hub"]["db"].get("upgrade")
    if upgrade is True or (upgrade is None and values["hub"]["db"]["type"] == "sqlite-pvc"):
        return ["--upgrade-db"]
    return []


def _env_entries(extra_env: Any) -> list[dict]:
    """``hub.extraEnv`` as the chart renders it: a list of EnvVar objects."""
    if isinstance(extra_env, list):
        return extra_env
    entries = []
    for key, value in extra_env.items():
        if isinstance(value, Mapping):
            entries.append({"name": key, **value})
        else:
            entries.append({"name": key, "value": str(value)})
    return entries


def hub_environment(values: dict, secret: dict[str, str],
                    k8s_secrets: Mapping[str, Mapping[str, str]]) -> dict[str, str]:
    """The hub container's environment, as the kubelet resolves it."""
    release = values["Release"]
    names = resource_names(values)
    environ = {
        "PYTHONUNBUFFERED": "1",
        "HELM_RELEASE_NAME": release["Name"],
        "POD_NAMESPACE": release["Namespace"],
        "CONFIGPROXY_AUTH_TOKEN": secret["hub.config.ConfigurableHTTPProxy.auth_token"],
        # Service links Kubernetes puts into every pod of the namespace
        f"{names['hub'].upper().replace('-', '_')}_SERVICE_PORT": str(HUB_PORT),
        f"{names['proxy-api'].upper().replace('-', '_')}_SERVICE_PORT": str(PROXY_API_PORT),
    }
    for entry in _env_entries(values["hub"]["extraEnv"]):
        name = entry["name"]
        if "value" in entry:
            environ[name] = re.sub(r"\$\((\w+)\)", lambda m: environ.get(m[1], m[0]),
                                   str(entry["value"]))
            continue
        source = entry.get("valueFrom") or {}
        if "secretKeyRef" in source:
            ref = source["secretKeyRef"]
            try:
                environ[name] = k8s_secrets[ref["name"]][ref["key"]]
            except KeyError:
                if not ref.get("optional"):
                    raise KeyError(f"hub.extraEnv.{name}: no secret {ref['name']} with key "
                                   f"{ref['key']} (the pod would not start)") from None
        elif source.get("fieldRef", {}).get("fieldPath") == "metadata.namespace":
            environ[name] = release["Namespace"]
        else:
            raise NotReproduced(f"hub.extraEnv.{name}: {entry}")
    return environ


def mount_hub_files(values: dict, root: Path) -> None:
    """Write ``hub.extraFiles`` under ``root`` and show the snippets where they are."""
    for key, details in values["hub"]["extraFiles"].items():
        if "stringData" not in details:
            raise NotReproduced(f"hub.extraFiles.{key} without stringData (data, binaryData)")
        mounted = root / details["mountPath"].lstrip("/")
        mounted.parent.mkdir(parents=True, exist_ok=True)
        mounted.write_text(details["stringData"])
        details["mountPath"] = str(mounted)


def hub_pod(values: dict, root: Path, *,
            k8s_secrets: Mapping[str, Mapping[str, str]] = ()) -> HubPod:
    """The hub pod the chart would run for ``values`` (``k8s_secrets``: the user's Secrets)."""
    k8s_secrets = dict(k8s_secrets)
    values = copy.deepcopy(values)
    secret = chart_secret(values)
    existing_name = values["hub"].get("existingSecret")
    if existing_name and existing_name not in k8s_secrets:
        raise KeyError(f"hub.existingSecret: no secret {existing_name} (the pod would not start)")
    existing = dict(k8s_secrets.get(existing_name, {})) if existing_name else {}
    mount_hub_files(values, root)
    return HubPod(values=values, root=root, secret=secret, existing_secret=existing,
                  environ=hub_environment(values, secret, k8s_secrets),
                  names=resource_names(values), args=hub_args(values))


@contextlib.contextmanager
def environment(environ: Mapping[str, str]) -> Iterator[None]:
    """``os.environ`` plus ``environ`` (the hub container's) for the block, restored after."""
    saved = dict(os.environ)
    os.environ.update(environ)
    try:
        yield
    finally:
        os.environ.clear()
        os.environ.update(saved)


# --------------------------------------------------------------------------- jupyterhub_config.py


def camel_case(name: str) -> str:
    """``start_timeout`` -> ``startTimeout``: how the chart names values after traits."""
    return re.sub(r"_([a-z])", lambda m: m[1].upper(), name)


#: KubeSpawner traits the chart sets from ``singleuser.<key>`` (None: the camelCased trait).
SINGLEUSER_TRAITS = {
    "pod_name_template": None, "start_timeout": None, "image_pull_policy": "image.pullPolicy",
    "events_enabled": "events", "extra_labels": None, "extra_annotations": None, "uid": None,
    "fs_gid": None, "service_account": "serviceAccountName",
    "storage_extra_labels": "storage.extraLabels", "node_selector": None,
    "node_affinity_required": "extraNodeAffinity.required",
    "node_affinity_preferred": "extraNodeAffinity.preferred",
    "pod_affinity_required": "extraPodAffinity.required",
    "pod_affinity_preferred": "extraPodAffinity.preferred",
    "pod_anti_affinity_required": "extraPodAntiAffinity.required",
    "pod_anti_affinity_preferred": "extraPodAntiAffinity.preferred",
    "lifecycle_hooks": None, "init_containers": None, "extra_containers": None,
    "mem_limit": "memory.limit", "mem_guarantee": "memory.guarantee",
    "cpu_limit": "cpu.limit", "cpu_guarantee": "cpu.guarantee",
    "extra_resource_limits": "extraResource.limits",
    "extra_resource_guarantees": "extraResource.guarantees",
    "environment": "extraEnv", "profile_list": None, "extra_pod_config": None,
}

#: JupyterHub traits the chart sets from ``hub.<camelCased trait>``.
HUB_TRAITS = ("concurrent_spawn_limit", "active_server_limit", "base_url",
              "allow_named_servers", "named_server_limit_per_user", "authenticate_prometheus",
              "redirect_to_server", "shutdown_on_logout", "template_paths", "template_vars")

#: What the chart's idle culler may do (its README's minimum).
CULLER_SCOPES = ("list:users", "read:users:activity", "read:servers", "delete:servers")


def load_hub_config(pod: HubPod, *, extra_config: bool = True) -> Config:
    """The ``Config`` the chart's jupyterhub_config.py builds in ``pod``.

    Runs inside the pod's environment (os.environ is restored afterwards). With
    ``extra_config=False`` the ``hub.extraConfig`` snippets are left out.
    """
    with environment(pod.environ):
        c = Config()
        _hub_settings(c, pod)
        _database(c, pod)
        _user_pods(c, pod)
        _services_and_roles(c, pod)
        _secrets_and_passthrough(c, pod)
        for arg in pod.args:
            if arg == "--upgrade-db":
                c.JupyterHub.upgrade_db = True
        if extra_config:
            _exec_extra_config(c, pod)
        pod.final_environ = dict(os.environ)
    return c


def _hub_settings(c: Config, pod: HubPod) -> None:
    c.JupyterHub.spawner_class = "kubespawner.KubeSpawner"
    c.ConfigurableHTTPProxy.api_url = (
        f"http://{pod.get_name('proxy-api')}:{pod.get_name_env('proxy-api', '_SERVICE_PORT')}")
    c.ConfigurableHTTPProxy.should_start = False
    c.JupyterHub.cleanup_servers = False
    c.JupyterHub.last_activity_interval = 60
    c.JupyterHub.tornado_settings = {"slow_spawn_timeout": 0}
    for trait in HUB_TRAITS:
        pod.set_config_if_not_none(c.JupyterHub, trait, f"hub.{camel_case(trait)}")
    c.JupyterHub.hub_bind_url = f"http://:{HUB_PORT}"
    c.JupyterHub.hub_connect_url = (
        f"http://{pod.get_name('hub')}:{pod.get_name_env('hub', '_SERVICE_PORT')}")


def _database(c: Config, pod: HubPod) -> None:
    db_type = pod.get_config("hub.db.type")
    if db_type == "sqlite-pvc":
        c.JupyterHub.db_url = "sqlite:///jupyterhub.sqlite"
    elif db_type == "sqlite-memory":
        c.JupyterHub.db_url = "sqlite://"
    else:
        pod.set_config_if_not_none(c.JupyterHub, "db_url", "hub.db.url")
    password = pod.get_secret_value("hub.db.password", None)
    if password is not None:
        variable = {"mysql": "MYSQL_PWD", "postgres": "PGPASSWORD"}.get(db_type)
        if variable:
            os.environ[variable] = password


def _user_pods(c: Config, pod: HubPod) -> None:
    values = pod.values
    labels = c.KubeSpawner.common_labels = {}
    labels["app.kubernetes.io/name"] = labels["app"] = "jupyterhub"
    labels["app.kubernetes.io/instance"] = labels["release"] = values["Release"]["Name"]
    labels["helm.sh/chart"] = labels["chart"] = f"jupyterhub-{CHART_VERSION}"
    labels["app.kubernetes.io/managed-by"] = "kubespawner"
    c.KubeSpawner.namespace = os.environ.get("POD_NAMESPACE", "default")
    pod.set_config_if_not_none(c.Spawner, "consecutive_failure_limit",
                               "hub.consecutiveFailureLimit")
    for trait, key in SINGLEUSER_TRAITS.items():
        pod.set_config_if_not_none(c.KubeSpawner, trait, f"singleuser.{key or camel_case(trait)}")

    image = pod.get_config("singleuser.image.name")
    if image:
        tag = pod.get_config("singleuser.image.tag")
        c.KubeSpawner.image = f"{image}:{tag}" if tag else image
    c.KubeSpawner.allow_privilege_escalation = pod.get_config(
        "singleuser.allowPrivilegeEscalation")
    pull_secrets = []
    if pod.get_config("imagePullSecret.automaticReferenceInjection") and pod.get_config(
            "imagePullSecret.create"):
        pull_secrets.append(pod.get_name("image-pull-secret"))
    pull_secrets += pod.get_config("imagePullSecrets") or []
    pull_secrets += pod.get_config("singleuser.image.pullSecrets") or []
    if pull_secrets:
        c.KubeSpawner.image_pull_secrets = pull_secrets

    if pod.get_config("scheduling.userScheduler.enabled"):
        c.KubeSpawner.scheduler_name = pod.get_name("user-scheduler")
    if pod.get_config("scheduling.podPriority.enabled"):
        c.KubeSpawner.priority_class_name = pod.get_name("priority")
    purpose = pod.get_config("scheduling.userPods.nodeAffinity.matchNodePurpose")
    if purpose in ("prefer", "require"):
        term = {"matchExpressions": [{"key": "hub.jupyter.org/node-purpose",
                                      "operator": "In", "values": ["user"]}]}
        if purpose == "prefer":
            c.KubeSpawner.node_affinity_preferred.append({"weight": 100, "preference": term})
        else:
            c.KubeSpawner.node_affinity_required.append(term)
    elif purpose and purpose != "ignore":
        raise ValueError(f"Unrecognized value for matchNodePurpose: {purpose}")
    tolerations = (pod.get_config("scheduling.userPods.tolerations", [])
                   + pod.get_config("singleuser.extraTolerations", []))
    if tolerations:
        c.KubeSpawner.tolerations = tolerations

    _home_storage(c, pod)
    if pod.get_config("singleuser.extraFiles"):
        raise NotReproduced("singleuser.extraFiles")

    unspecified = object()
    cmd = pod.get_config("singleuser.cmd", unspecified)
    if cmd is not unspecified:
        c.Spawner.cmd = cmd
    pod.set_config_if_not_none(c.Spawner, "default_url", "singleuser.defaultUrl")
    if pod.get_config("singleuser.cloudMetadata", {}).get("blockWithIptables") is True:
        c.KubeSpawner.init_containers.append(_metadata_blocker(pod))


def _home_storage(c: Config, pod: HubPod) -> None:
    volumes, mounts = {}, {}
    storage = pod.get_config("singleuser.storage")
    if storage["type"] == "dynamic":
        dynamic = storage["dynamic"]
        if dynamic.get("pvcNameTemplate"):
            c.KubeSpawner.pvc_name_template = dynamic["pvcNameTemplate"]
        c.KubeSpawner.storage_pvc_ensure = True
        pod.set_config_if_not_none(c.KubeSpawner, "storage_class",
                                   "singleuser.storage.dynamic.storageClass")
        pod.set_config_if_not_none(c.KubeSpawner, "storage_access_modes",
                                   "singleuser.storage.dynamic.storageAccessModes")
        pod.set_config_if_not_none(c.KubeSpawner, "storage_capacity",
                                   "singleuser.storage.capacity")
        name = dynamic["volumeNameTemplate"]
        volumes[name] = {"name": name, "persistentVolumeClaim": {"claimName": "{pvc_name}"}}
        mounts[name] = {"mountPath": storage["homeMountPath"], "name": name,
                        "subPath": dynamic.get("subPath")}
    elif storage["type"] == "static":
        volumes["home"] = {"name": "home",
                           "persistentVolumeClaim": {"claimName": storage["static"]["pvcName"]}}
        mounts["home"] = {"mountPath": storage["homeMountPath"], "name": "home",
                          "subPath": storage["static"]["subPath"]}
    for key, target in (("extraVolumes", volumes), ("extraVolumeMounts", mounts)):
        extra = storage.get(key)
        if isinstance(extra, dict):
            target.update(extra)
        elif isinstance(extra, list):
            for index, item in enumerate(extra):
                target[item["name"] if key == "extraVolumes" else f"{index}-{item['name']}"] = item
    c.KubeSpawner.volumes = volumes
    c.KubeSpawner.volume_mounts = mounts


def _metadata_blocker(pod: HubPod):
    """The privileged init container that drops traffic to the cloud metadata server."""
    from kubernetes_asyncio import client

    tools = pod.get_config("singleuser.networkTools")
    ip = pod.get_config("singleuser.cloudMetadata")["ip"]
    return client.V1Container(
        name="block-cloud-metadata",
        image=f"{tools['image']['name']}:{tools['image']['tag']}",
        command=["iptables", "--append", "OUTPUT", "--protocol", "tcp", "--destination", ip,
                 "--destination-port", "80", "--jump", "DROP"],
        security_context=client.V1SecurityContext(
            privileged=True, run_as_user=0,
            capabilities=client.V1Capabilities(add=["NET_ADMIN"])),
        resources=tools["resources"],
    )


def _services_and_roles(c: Config, pod: HubPod) -> None:
    from jupyterhub.utils import url_path_join

    c.JupyterHub.services = []
    c.JupyterHub.load_roles = []
    if pod.get_config("cull.enabled", False):
        role = {"name": "jupyterhub-idle-culler", "scopes": list(CULLER_SCOPES),
                "services": ["jupyterhub-idle-culler"]}
        base_url = c.JupyterHub.get("base_url", "/")
        command = ["python3", "-m", "jupyterhub_idle_culler",
                   f"--url=http://localhost:{HUB_PORT}" + url_path_join(base_url, "hub/api")]
        for key, flag in (("timeout", "--timeout"), ("every", "--cull-every"),
                          ("concurrency", "--concurrency")):
            if pod.get_config(f"cull.{key}"):
                command.append(f"{flag}={pod.get_config(f'cull.{key}')}")
        if pod.get_config("cull.users"):
            command.append("--cull-users")
            role["scopes"].append("admin:users")
        if not pod.get_config("cull.adminUsers"):
            command.append("--cull-admin-users=false")
        if pod.get_config("cull.removeNamedServers"):
            command.append("--remove-named-servers")
        if pod.get_config("cull.maxAge"):
            command.append(f"--max-age={pod.get_config('cull.maxAge')}")
        c.JupyterHub.services.append({"name": "jupyterhub-idle-culler", "command": command})
        c.JupyterHub.load_roles.append(role)
    for key, service in pod.get_config("hub.services", {}).items():
        service.setdefault("name", key)
        service.pop("apiToken", None)
        service["api_token"] = pod.get_secret_value(f"hub.services.{key}.apiToken")
        c.JupyterHub.services.append(service)
    for key, role in pod.get_config("hub.loadRoles", {}).items():
        role.setdefault("name", key)
        c.JupyterHub.load_roles.append(role)


def _secrets_and_passthrough(c: Config, pod: HubPod) -> None:
    if pod.get_config("debug.enabled", False):
        raise NotReproduced("debug.enabled")
    c.JupyterHub.cookie_secret = pod.get_secret_value("hub.config.JupyterHub.cookie_secret")
    c.CryptKeeper.keys = pod.get_secret_value("hub.config.CryptKeeper.keys").split(";")
    dropped = {"JupyterHub": ("proxy_auth_token", "cookie_secret", "services"),
               "ConfigurableHTTPProxy": ("auth_token",), "CryptKeeper": ("keys",)}
    for section, settings in pod.get_config("hub.config", {}).items():
        for name in dropped.get(section, ()):
            settings.pop(name, None)
        if not section[:1].isupper():
            raise SystemExit(f"FATAL: Invalid hub.config section name: {section}.")
        c[section].update(settings)


def _exec_extra_config(c: Config, pod: HubPod) -> None:
    from jupyterhub.utils import url_path_join
    from kubernetes_asyncio import client

    scope = {
        "c": c, "get_config": pod.get_config, "get_secret_value": pod.get_secret_value,
        "get_name": pod.get_name, "get_name_env": pod.get_name_env,
        "set_config_if_not_none": pod.set_config_if_not_none, "camelCaseify": camel_case,
        "os": os, "re": re, "sys": sys, "glob": glob, "url_path_join": url_path_join,
        "client": client,
    }
    for key, snippet in sorted(pod.get_config("hub.extraConfig", {}).items()):
        exec(compile(snippet, f"hub.extraConfig.{key}", "exec"), scope)  # noqa: S102


# --------------------------------------------------------------------------- image pullers


def image_puller_daemonset(values: dict, *, hook: bool = False) -> dict:
    """The chart's hook or continuous image-puller DaemonSet, for the parts tests check."""
    if values["singleuser"]["extraNodeAffinity"]["required"] or values["scheduling"][
            "userPods"]["nodeAffinity"]["matchNodePurpose"] == "require":
        raise NotReproduced("required user node affinity in the image pullers")
    names = resource_names(values)
    prefix = names["hub"][: -len("hub")]
    name = f"{prefix}{'hook' if hook else 'continuous'}-image-puller"
    pre_puller = values["prePuller"]
    security = pre_puller["containerSecurityContext"]

    def pull(container_name: str, image: str) -> dict:
        container = {"name": container_name, "image": image,
                     "command": ["/bin/sh", "-c", "echo \"Pulling complete\""],
                     "securityContext": security}
        if pre_puller["resources"]:
            container["resources"] = pre_puller["resources"]
        return container

    singleuser = values["singleuser"]
    init = []
    metadata = singleuser["cloudMetadata"]
    # an explicit cloudMetadata.enabled wins over blockWithIptables
    blocked = (not metadata["enabled"]) if "enabled" in metadata else metadata.get(
        "blockWithIptables")
    if blocked:
        tools = singleuser["networkTools"]["image"]
        init.append(pull("image-pull-metadata-block", f"{tools['name']}:{tools['tag']}"))
    init.append(pull("image-pull-singleuser",
                     f"{singleuser['image']['name']}:{singleuser['image']['tag']}"))
    for index, container in enumerate(singleuser["initContainers"]
                                      + singleuser["extraContainers"]):
        init.append(pull(f"image-pull-singleuser-init-and-extra-containers-{index}",
                         container["image"]))
    if pre_puller["pullProfileListImages"]:
        for index, profile in enumerate(singleuser["profileList"]):
            image = (profile.get("kubespawner_override") or {}).get("image")
            if image:
                init.append(pull(f"image-pull-singleuser-profilelist-{index}", image))
            if profile.get("profile_options"):
                raise NotReproduced("profile_options images in the image pullers")
    for key, image in sorted(pre_puller["extraImages"].items()):
        container = pull(f"image-pull-{key}", f"{image['name']}:{image['tag']}")
        if image.get("pullPolicy"):
            container["imagePullPolicy"] = image["pullPolicy"]
        init.append(container)

    tolerations = (values["scheduling"]["userPods"]["tolerations"]
                   + singleuser["extraTolerations"] + pre_puller["extraTolerations"])
    labels = {"app": "jupyterhub", "component": name.removeprefix(prefix),
              "release": values["Release"]["Name"]}
    spec: dict[str, Any] = {"terminationGracePeriodSeconds": 0,
                            "automountServiceAccountToken": False,
                            "initContainers": init,
                            "containers": [{
                                "name": "pause",
                                "image": f"{pre_puller['pause']['image']['name']}:"
                                         f"{pre_puller['pause']['image']['tag']}",
                                "securityContext": security}]}
    if singleuser["nodeSelector"]:
        spec["nodeSelector"] = singleuser["nodeSelector"]
    if tolerations:
        spec["tolerations"] = tolerations
    return {
        "apiVersion": "apps/v1", "kind": "DaemonSet",
        "metadata": {"name": name, "namespace": values["Release"]["Namespace"],
                     "labels": labels},
        "spec": {"selector": {"matchLabels": labels},
                 "updateStrategy": {"type": "RollingUpdate",
                                    "rollingUpdate": {"maxUnavailable": "100%"}},
                 "template": {"metadata": {"labels": labels}, "spec": spec}},
    }


def pulled_images(daemonset: dict) -> set[str]:
    spec = daemonset["spec"]["template"]["spec"]
    return {container["image"] for container in spec["initContainers"]}


# --------------------------------------------------------------------------- documented keys


def documented_key_paths(schema: dict) -> list[str]:
    """Every key path values.schema.yaml documents; ``*`` stands for any key of a map."""
    paths: list[str] = []

    def walk(node: dict, path: list[str]) -> None:
        for name, child in (node.get("properties") or {}).items():
            paths.append(".".join([*path, name]))
            walk(child, [*path, name])
        free = list((node.get("patternProperties") or {}).values())
        if node.get("additionalProperties") not in (None, False):
            free.append(node["additionalProperties"])
        if free:
            paths.append(".".join([*path, "*"]))
            for child in free:
                if isinstance(child, dict):
                    walk(child, [*path, "*"])

    walk(schema, [])
    return sorted(set(paths))


def read_documented_keys(path: Path = DOCUMENTED_KEYS) -> tuple[str, set[tuple[str, ...]]]:
    """(chart version, key paths) recorded in ``path``."""
    version, keys = None, set()
    for line in path.read_text().splitlines():
        if line.startswith("# chart version:"):
            version = line.split(":", 1)[1].strip()
        elif line and not line.startswith("#"):
            keys.add(tuple(line.split(".")))
    if version is None:
        raise ValueError(f"{path}: no '# chart version:' line")
    return version, keys


def undocumented_keys(values: Any, documented: set[tuple[str, ...]]) -> list[str]:
    """Key paths set in ``values`` that the recorded chart documentation does not have.

    A map the schema leaves open (``a.*`` with nothing documented below it, like
    ``hub.extraConfig``) is free-form: what is inside is not checked. Lists are values.
    """
    def matches(path: tuple[str, ...], pattern: tuple[str, ...]) -> bool:
        return len(path) == len(pattern) and all(
            p == "*" or p == k for k, p in zip(path, pattern))

    free = {pattern for pattern in documented if pattern[-1] == "*"
            and not any(len(other) > len(pattern) and other[:len(pattern)] == pattern
                        for other in documented)}
    found: list[str] = []

    def walk(node: Any, path: tuple[str, ...]) -> None:
        for key, value in node.items():
            here = (*path, str(key))
            if any(matches(here, pattern) for pattern in free):
                continue
            if not any(matches(here, pattern) for pattern in documented):
                found.append(".".join(here))
                continue
            if isinstance(value, Mapping):
                walk(value, here)

    walk(values, ())
    return found


def _write_documented_keys(schema_path: str) -> None:
    schema = yaml.safe_load(Path(schema_path).read_text())
    print(f"# Key paths documented by the Zero to JupyterHub chart's values.schema.yaml.\n"
          f"# chart version: {CHART_VERSION}\n"
          f"# source: jupyterhub/zero-to-jupyterhub-k8s tag {CHART_VERSION} "
          f"(commit {CHART_COMMIT}), jupyterhub/values.schema.yaml\n"
          f"# '*' is any key of a map; a '*' with nothing below it is a free-form map.\n"
          f"# Regenerate: python -m tests.z2jh_chart <values.schema.yaml> > {DOCUMENTED_KEYS.name}")
    for path in documented_key_paths(schema):
        print(path)


if __name__ == "__main__":
    _write_documented_keys(sys.argv[1])
