"""An in-process Kubernetes API server (core/v1 subset) plus a fake scheduler and kubelet.

Why: no API server or container engine runs on the test machines, yet the spawner's lifecycle
(create pod, reflectors' list + watch, poll, delete, events) must be exercised over real HTTP
by the real ``kubernetes_asyncio`` client that KubeSpawner uses.

Why not kmock: kmock is an early-stage generic HTTP mock. It needed patching for
``?watch=True``, had no resourceVersion/uid/creationTimestamp, no watch-from-resourceVersion,
no selectors, no validation and no kubelet, i.e. most of what matters here had to be written
anyway. This module is written directly on ``aiohttp.web`` (already a dependency of
``kubernetes_asyncio``), so every behaviour below is deliberate and visible in one file.

What is emulated (http://127.0.0.1:<random port>, no TLS, no auth):

- Resources ``pods``, ``events``, ``services``, ``secrets``, ``configmaps``,
  ``persistentvolumeclaims``, ``serviceaccounts`` (namespaced) and ``nodes``, ``namespaces``
  (cluster-scoped): list, watch, get, create, replace (PUT, with resourceVersion conflicts),
  patch (JSON patch, merge patch, strategic merge patch with the usual merge keys), delete,
  and the ``/status`` subresource (main-resource writes keep status; status writes keep the rest).
- Every write is validated by :func:`tests.kube.validation.validate_manifest` (strict schema +
  value rules). Invalid creates/updates answer **422** with a ``Status`` object listing every
  cause and are recorded in :attr:`KubeEmulator.rejected`. (A real API server answers 400 for
  unknown fields under ``fieldValidation=Strict`` and silently drops them by default; rejecting
  is deliberate so typos in dict-valued config fail tests.) Existing name: **409**
  AlreadyExists. Namespace in body != URL: 400.
- ``metadata.resourceVersion`` (one global counter, as etcd), ``uid``, ``creationTimestamp``,
  ``generateName``; pod defaulting of the fields code commonly reads (restartPolicy ``Always``,
  terminationGracePeriodSeconds 30, requests defaulted from limits, ``status.phase: Pending``,
  ``qosClass``).
- list returns ``metadata.resourceVersion``; watch (``watch=true``/``True``/``1``) without a
  resourceVersion (or ``0``) sends synthetic ADDED events for current objects, with one replays
  history after it (history is never compacted, so 410 Gone never happens), honours
  ``timeoutSeconds``, and emits DELETED/ADDED when an object leaves/enters a label selector.
- Label selectors (``=, ==, !=, in, notin, key, !key``) and field selectors (``=, ==, !=``)
  restricted to the fields the real API server supports for each kind (others: 400).
- Namespaces: by default any namespace exists (created on first use); pass
  ``namespaces=[...]`` to make writes into other namespaces fail with 404 like a real cluster.
- Events are core/v1 Events in the real servers' shapes: scheduler events carry ``eventTime``
  with ``firstTimestamp``/``lastTimestamp`` null, kubelet events the reverse. KubeSpawner
  reads ``event["lastTimestamp"] or event["eventTime"]``, so both keys are always present.

The fake scheduler + kubelet (:class:`FakeKubelet`) reacts to pods through the same watch
stream as any client:

- With no nodes registered every pod is bound to a virtual node ``emulated-node`` with
  unlimited capacity. Once :meth:`KubeEmulator.add_node` was called, pods are scheduled onto
  registered nodes: nodeSelector, NoSchedule/NoExecute taints vs tolerations, ``unschedulable``
  and resource requests (including ``nvidia.com/gpu``) vs ``status.allocatable`` minus the
  requests of non-terminated pods already bound there. The first node that fits (by name)
  wins: no scoring, no preemption, no affinity. A pod that fits nowhere gets a
  ``FailedScheduling`` Warning event with the real message format ("0/3 nodes are available:
  3 Insufficient nvidia.com/gpu. preemption: ...") and stays Pending; it is retried when a pod
  is deleted or a node added.
- A scheduled pod gets ``spec.nodeName`` then a complete Running status (phase, podIP,
  hostIP, conditions, containerStatuses with state.running, image, imageID, containerID,
  restartCount, ready, started) and Scheduled/Pulled/Created/Started events.
- Pod IPs are in the loopback range (127.244.0.x) so that a hub under test that waits for the
  "server" never sends traffic off the machine; a test can bind a tiny HTTP server there to
  play the notebook server.
- Deletion: ``gracePeriodSeconds=0``, or a pod that was never bound to a node, is removed at
  once (DELETED). Otherwise the pod first gets ``deletionTimestamp`` +
  ``deletionGracePeriodSeconds`` (MODIFIED), the kubelet records a ``Killing`` event and
  removes it right away (its containers are assumed to exit promptly on SIGTERM): the grace
  period is not waited out.
- Test controls: :meth:`~KubeEmulator.hold_pending`, :meth:`~KubeEmulator.fail_scheduling`,
  :meth:`~KubeEmulator.release`, :meth:`~KubeEmulator.crash` (which honours the pod's
  restartPolicy like a kubelet: a restartable exit gives CrashLoopBackOff, not a terminated
  container).

Not emulated: other API groups, pagination (``limit``/``continue``), server-side apply, pod
spec immutability, finalizers, owner-reference garbage collection, admission webhooks,
quota, logs/exec, the events.k8s.io API.

KubeSpawner specifics (it keeps process-wide state): use :func:`kubespawner_pointed_at`,
which points KubeSpawner's cached kubeconfig and API clients at an emulator and stops the
class-wide reflectors on exit (otherwise their watches linger for up to 60 s).
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import itertools
import json
import logging
import os
import re
import secrets
import shutil
import tempfile
import uuid
from collections.abc import AsyncIterator, Callable, Iterable
from dataclasses import dataclass
from datetime import datetime, timezone
from decimal import Decimal
from typing import Any
from unittest import mock

from aiohttp import web

from .validation import (
    DEFAULT_KUBERNETES_VERSION,
    FieldProblem,
    ManifestInvalid,
    parse_quantity,
    validate_manifest,
)

__all__ = [
    "CreatedObject",
    "KubeEmulator",
    "MockUser",
    "RejectedObject",
    "RequestRecord",
    "kubespawner_pointed_at",
]

_log = logging.getLogger(__name__)

GPU_RESOURCE = "nvidia.com/gpu"
# Label set by NVIDIA GPU feature discovery; pass gpu_label_key= to use e.g. GKE's label.
GPU_PRODUCT_LABEL = "nvidia.com/gpu.product"
VIRTUAL_NODE = "emulated-node"


# =========================================================================== resource table


@dataclass(frozen=True)
class ResourceType:
    plural: str
    kind: str
    namespaced: bool
    has_status: bool
    # fields the real API server accepts in fieldSelector, besides metadata.name/namespace
    selectable_fields: frozenset = frozenset()


RESOURCE_TYPES = {
    rt.plural: rt
    for rt in [
        ResourceType(
            "pods",
            "Pod",
            True,
            True,
            frozenset(
                {
                    "spec.nodeName",
                    "spec.restartPolicy",
                    "spec.schedulerName",
                    "spec.serviceAccountName",
                    "spec.hostNetwork",
                    "status.phase",
                    "status.podIP",
                    "status.nominatedNodeName",
                }
            ),
        ),
        ResourceType(
            "events",
            "Event",
            True,
            False,
            frozenset(
                {
                    "involvedObject.kind",
                    "involvedObject.namespace",
                    "involvedObject.name",
                    "involvedObject.uid",
                    "involvedObject.apiVersion",
                    "involvedObject.resourceVersion",
                    "involvedObject.fieldPath",
                    "reason",
                    "reportingComponent",
                    "source",
                    "type",
                }
            ),
        ),
        ResourceType("services", "Service", True, True),
        ResourceType("secrets", "Secret", True, False, frozenset({"type"})),
        ResourceType("configmaps", "ConfigMap", True, False),
        ResourceType("persistentvolumeclaims", "PersistentVolumeClaim", True, True),
        ResourceType("serviceaccounts", "ServiceAccount", True, False),
        ResourceType("nodes", "Node", False, True, frozenset({"spec.unschedulable"})),
        ResourceType("namespaces", "Namespace", False, True, frozenset({"status.phase"})),
    ]
}


# =========================================================================== errors


class ApiError(Exception):
    """An error answered as a ``Status`` object, as the API server does."""

    def __init__(self, code: int, reason: str, message: str, details: dict | None = None):
        super().__init__(message)
        self.code, self.reason, self.message, self.details = code, reason, message, details

    def status(self) -> dict:
        body = {
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Failure",
            "message": self.message,
            "reason": self.reason,
            "code": self.code,
        }
        if self.details:
            body["details"] = self.details
        return body


def _not_found(rt: ResourceType, name: str) -> ApiError:
    return ApiError(404, "NotFound", f'{rt.plural} "{name}" not found', {"name": name, "kind": rt.plural})


def _invalid(rt: ResourceType, name: str, problems: list[FieldProblem]) -> ApiError:
    return ApiError(
        422,
        "Invalid",
        f'{rt.kind} "{name}" is invalid: [' + ", ".join(map(str, problems)) + "]",
        {"name": name, "kind": rt.kind, "causes": [p.as_status_cause() for p in problems]},
    )


# =========================================================================== records


@dataclass(frozen=True)
class RejectedObject:
    """A write the emulator refused with 422, kept so tests can assert on *why*."""

    verb: str
    kind: str
    namespace: str | None
    name: str
    body: Any
    problems: tuple[FieldProblem, ...]


@dataclass(frozen=True)
class CreatedObject:
    """An accepted create, as stored (after server defaulting); kept after deletion."""

    kind: str
    namespace: str | None
    name: str
    object: dict


@dataclass
class RequestRecord:
    """One HTTP request; recorded on arrival (``status`` is None while a watch is open)."""

    method: str
    path: str
    query: str
    status: int | None = None


# =========================================================================== time, ids


def _now() -> datetime:
    return datetime.now(timezone.utc)


def _timestamp(when: datetime | None = None) -> str:
    return (when or _now()).strftime("%Y-%m-%dT%H:%M:%SZ")


def _micro_timestamp(when: datetime | None = None) -> str:
    return (when or _now()).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _deep(obj: Any) -> Any:
    return copy.deepcopy(obj)


# =========================================================================== selectors


@dataclass(frozen=True)
class _Requirement:
    key: str
    op: str  # "=", "!=", "in", "notin", "exists", "!exists"
    values: frozenset = frozenset()

    def matches(self, labels: dict) -> bool:
        present = self.key in labels
        value = labels.get(self.key)
        if self.op == "exists":
            return present
        if self.op == "!exists":
            return not present
        if self.op in ("=", "in"):
            return present and value in self.values
        return not present or value not in self.values  # "!=", "notin"


def _split_selector(text: str) -> list[str]:
    parts, depth, current = [], 0, ""
    for char in text:
        depth += {"(": 1, ")": -1}.get(char, 0)
        if char == "," and depth == 0:
            parts.append(current)
            current = ""
        else:
            current += char
    parts.append(current)
    return [p.strip() for p in parts if p.strip()]


def parse_label_selector(text: str | None) -> list[_Requirement]:
    requirements = []
    for part in _split_selector(text or ""):
        if m := re.fullmatch(r"(\S+)\s+(in|notin)\s+\(([^)]*)\)", part):
            values = frozenset(v.strip() for v in m[3].split(",") if v.strip())
            requirements.append(_Requirement(m[1], m[2], values))
        elif m := re.fullmatch(r"([^!=\s]+)\s*(==|=|!=)\s*(\S*)", part):
            requirements.append(_Requirement(m[1], "!=" if m[2] == "!=" else "=", frozenset({m[3]})))
        elif m := re.fullmatch(r"!\s*([^!=\s]+)", part):
            requirements.append(_Requirement(m[1], "!exists"))
        elif re.fullmatch(r"[^!=\s(),]+", part):
            requirements.append(_Requirement(part, "exists"))
        else:
            raise ApiError(400, "BadRequest", f"unable to parse requirement: {part!r}")
    return requirements


def _field_value(obj: dict, path: str) -> str:
    if path == "source":  # events: "source" selects source.component
        path = "source.component"
    value: Any = obj
    for part in path.split("."):
        value = value.get(part) if isinstance(value, dict) else None
    if isinstance(value, bool):
        return "true" if value else "false"
    return "" if value is None else str(value)


def parse_field_selector(text: str | None, rt: ResourceType) -> list[tuple[str, bool, str]]:
    """[(field path, must_equal, value)]; unsupported fields are a 400 as on a real server."""
    terms = []
    for part in _split_selector(text or ""):
        m = re.fullmatch(r"([^!=\s]+)\s*(==|=|!=)\s*(.*)", part)
        if not m:
            raise ApiError(400, "BadRequest", f"invalid selector: {part!r}")
        path = m[1]
        if path not in {"metadata.name", "metadata.namespace"} | rt.selectable_fields:
            raise ApiError(400, "BadRequest", f'field label not supported: "{path}"')
        terms.append((path, m[2] != "!=", m[3]))
    return terms


@dataclass(frozen=True)
class Selector:
    labels: tuple
    fields: tuple

    @classmethod
    def parse(cls, rt: ResourceType, label_selector: str | None, field_selector: str | None) -> "Selector":
        return cls(tuple(parse_label_selector(label_selector)), tuple(parse_field_selector(field_selector, rt)))

    def matches(self, obj: dict | None) -> bool:
        if obj is None:
            return False
        labels = (obj.get("metadata") or {}).get("labels") or {}
        if not all(r.matches(labels) for r in self.labels):
            return False
        return all((_field_value(obj, path) == value) == equal for path, equal, value in self.fields)


# =========================================================================== store


@dataclass(frozen=True)
class StoreEvent:
    """A change in the store; ``old`` is the previous state (None for ADDED)."""

    type: str  # ADDED, MODIFIED, DELETED
    rt: ResourceType
    namespace: str | None
    resource_version: int
    object: dict
    old: dict | None


class ObjectStore:
    """All objects, one resourceVersion counter, the full change history and subscribers.

    Methods are synchronous, so each write is atomic with respect to the event loop.
    Objects handed out are deep copies: callers cannot alias stored state.
    """

    def __init__(self, validate: Callable[[dict], None]):
        self._validate = validate
        self._objects: dict[tuple[str, str | None, str], dict] = {}
        self._resource_version = 0
        self.history: list[StoreEvent] = []
        self._subscribers: set[asyncio.Queue] = set()

    @property
    def resource_version(self) -> int:
        return self._resource_version

    # ----------------------------------------------------------- subscriptions

    def subscribe(self) -> asyncio.Queue:
        queue: asyncio.Queue = asyncio.Queue()
        self._subscribers.add(queue)
        return queue

    def unsubscribe(self, queue: asyncio.Queue) -> None:
        self._subscribers.discard(queue)

    def close_subscriptions(self) -> None:
        for queue in self._subscribers:
            queue.put_nowait(None)

    def _publish(self, kind: str, rt: ResourceType, namespace: str | None, obj: dict, old: dict | None) -> None:
        event = StoreEvent(kind, rt, namespace, self._resource_version, _deep(obj), _deep(old))
        self.history.append(event)
        for queue in self._subscribers:
            queue.put_nowait(event)

    def _next_version(self) -> str:
        self._resource_version += 1
        return str(self._resource_version)

    # ----------------------------------------------------------- reads

    def get(self, rt: ResourceType, namespace: str | None, name: str) -> dict:
        obj = self._objects.get((rt.plural, namespace, name))
        if obj is None:
            raise _not_found(rt, name)
        return _deep(obj)

    def exists(self, rt: ResourceType, namespace: str | None, name: str) -> bool:
        return (rt.plural, namespace, name) in self._objects

    def list(self, rt: ResourceType, namespace: str | None = None, selector: Selector | None = None) -> list[dict]:
        items = [
            obj
            for (plural, ns, _), obj in self._objects.items()
            if plural == rt.plural and (namespace is None or ns == namespace)
        ]
        items.sort(key=lambda o: (o["metadata"].get("namespace", ""), o["metadata"]["name"]))
        return [_deep(o) for o in items if selector is None or selector.matches(o)]

    # ----------------------------------------------------------- writes

    def create(self, rt: ResourceType, namespace: str | None, obj: dict) -> dict:
        obj = _deep(obj)
        metadata = obj.setdefault("metadata", {})
        if not metadata.get("name") and metadata.get("generateName"):
            metadata["name"] = metadata["generateName"] + secrets.token_hex(3)[:5]
        name = metadata.get("name") or ""
        if namespace is not None:
            metadata["namespace"] = namespace
        if self.exists(rt, namespace, name):
            raise ApiError(
                409,
                "AlreadyExists",
                f'{rt.plural} "{name}" already exists',
                {"name": name, "kind": rt.plural},
            )
        metadata["uid"] = str(uuid.uuid4())
        metadata["creationTimestamp"] = _timestamp()
        metadata["resourceVersion"] = str(self._resource_version + 1)
        self._validate(obj)
        self._next_version()
        self._objects[(rt.plural, namespace, name)] = obj
        self._publish("ADDED", rt, namespace, obj, None)
        return _deep(obj)

    def update(self, rt: ResourceType, namespace: str | None, name: str, new: dict) -> dict:
        """Replace an object; identity fields (uid, creationTimestamp, ...) are kept."""
        old = self._objects.get((rt.plural, namespace, name))
        if old is None:
            raise _not_found(rt, name)
        new = _deep(new)
        metadata = new.setdefault("metadata", {})
        for key in (
            "name",
            "namespace",
            "uid",
            "creationTimestamp",
            "deletionTimestamp",
            "deletionGracePeriodSeconds",
        ):
            if key in old["metadata"]:
                metadata[key] = old["metadata"][key]
            else:
                metadata.pop(key, None)
        new["kind"], new["apiVersion"] = old["kind"], old["apiVersion"]
        metadata["resourceVersion"] = str(self._resource_version + 1)
        self._validate(new)
        self._next_version()
        self._objects[(rt.plural, namespace, name)] = new
        self._publish("MODIFIED", rt, namespace, new, old)
        return _deep(new)

    def mark_deleting(self, rt: ResourceType, namespace: str | None, name: str, grace_seconds: int) -> dict:
        obj = self.get(rt, namespace, name)
        if "deletionTimestamp" not in obj["metadata"]:
            obj["metadata"]["deletionTimestamp"] = _timestamp()
        obj["metadata"]["deletionGracePeriodSeconds"] = grace_seconds
        old = self._objects[(rt.plural, namespace, name)]
        obj["metadata"]["resourceVersion"] = self._next_version()
        self._objects[(rt.plural, namespace, name)] = obj
        self._publish("MODIFIED", rt, namespace, obj, old)
        return _deep(obj)

    def delete(self, rt: ResourceType, namespace: str | None, name: str) -> dict:
        obj = self._objects.pop((rt.plural, namespace, name), None)
        if obj is None:
            raise _not_found(rt, name)
        old = _deep(obj)
        obj["metadata"]["resourceVersion"] = self._next_version()
        self._publish("DELETED", rt, namespace, obj, old)
        return _deep(obj)


# =========================================================================== patching

# strategic-merge-patch merge keys of the lists code usually patches; other lists are replaced
_MERGE_KEYS = {
    "containers": "name",
    "initContainers": "name",
    "ephemeralContainers": "name",
    "env": "name",
    "volumes": "name",
    "volumeMounts": "mountPath",
    "ports": "containerPort",
    "conditions": "type",
    "containerStatuses": "name",
    "initContainerStatuses": "name",
    "imagePullSecrets": "name",
    "ownerReferences": "uid",
    "tolerations": None,
    "taints": None,
}


def merge_patch(target: Any, patch: Any, strategic: bool = False) -> Any:
    """RFC 7386 merge patch; with ``strategic`` lists with a known merge key merge by it."""
    if not isinstance(patch, dict):
        return _deep(patch)
    result = _deep(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if key.startswith("$"):
            raise ApiError(400, "BadRequest", f"strategic merge directive {key} is not supported by the emulator")
        if value is None:
            result.pop(key, None)
        elif strategic and isinstance(value, list) and _MERGE_KEYS.get(key) and isinstance(result.get(key), list):
            merge_key = _MERGE_KEYS[key]
            merged = [_deep(item) for item in result[key]]
            for item in value:
                index = next(
                    (
                        i
                        for i, old in enumerate(merged)
                        if isinstance(old, dict)
                        and isinstance(item, dict)
                        and old.get(merge_key) == item.get(merge_key)
                    ),
                    None,
                )
                if index is None:
                    merged.append(_deep(item))
                else:
                    merged[index] = merge_patch(merged[index], item, strategic)
            result[key] = merged
        else:
            result[key] = merge_patch(result.get(key), value, strategic)
    return result


def json_patch(target: dict, operations: list) -> dict:
    """RFC 6902 add/remove/replace/test."""
    doc = _deep(target)
    for op in operations:
        if not isinstance(op, dict) or "path" not in op or "op" not in op:
            raise ApiError(400, "BadRequest", f"invalid JSON patch operation: {op!r}")
        parts = [p.replace("~1", "/").replace("~0", "~") for p in op["path"].lstrip("/").split("/")]
        parent = doc
        for part in parts[:-1]:
            parent = parent[int(part)] if isinstance(parent, list) else parent.setdefault(part, {})
        last = parts[-1]
        try:
            if op["op"] in ("add", "replace"):
                if isinstance(parent, list):
                    index = len(parent) if last == "-" else int(last)
                    if op["op"] == "add":
                        parent.insert(index, _deep(op["value"]))
                    else:
                        parent[index] = _deep(op["value"])
                else:
                    if op["op"] == "replace" and last not in parent:
                        raise KeyError(last)
                    parent[last] = _deep(op["value"])
            elif op["op"] == "remove":
                del parent[int(last) if isinstance(parent, list) else last]
            elif op["op"] == "test":
                current = parent[int(last)] if isinstance(parent, list) else parent[last]
                if current != op.get("value"):
                    raise ApiError(422, "Invalid", f"test failed at {op['path']}")
            else:
                raise ApiError(400, "BadRequest", f"unsupported JSON patch op {op['op']!r}")
        except (KeyError, IndexError, ValueError) as exc:
            raise ApiError(422, "Invalid", f"JSON patch could not be applied at {op['path']}: {exc!r}") from exc
    return doc


# =========================================================================== pod defaulting


def _effective_requests(pod: dict) -> dict[str, Decimal]:
    """What the scheduler counts: max(sum of containers, each init container), plus 1 pod."""
    spec = pod.get("spec") or {}
    total: dict[str, Decimal] = {}
    for container in spec.get("containers") or []:
        for name, value in ((container.get("resources") or {}).get("requests") or {}).items():
            total[name] = total.get(name, Decimal(0)) + parse_quantity(value)
    for container in spec.get("initContainers") or []:
        for name, value in ((container.get("resources") or {}).get("requests") or {}).items():
            total[name] = max(total.get(name, Decimal(0)), parse_quantity(value))
    total["pods"] = Decimal(1)
    return total


def _qos_class(pod: dict) -> str:
    containers = list((pod.get("spec") or {}).get("containers") or []) + list(
        (pod.get("spec") or {}).get("initContainers") or []
    )
    resources = [c.get("resources") or {} for c in containers]
    if not any(r.get("requests") or r.get("limits") for r in resources):
        return "BestEffort"
    guaranteed = all(
        all(name in (r.get("limits") or {}) for name in ("cpu", "memory"))
        and all(
            parse_quantity((r.get("requests") or {}).get(n, r["limits"][n])) == parse_quantity(r["limits"][n])
            for n in ("cpu", "memory")
        )
        for r in resources
    )
    return "Guaranteed" if guaranteed else "Burstable"


def default_pod(pod: dict) -> dict:
    """The subset of API-server defaulting that code reading pods relies on."""
    pod = _deep(pod)
    spec = pod.setdefault("spec", {})
    spec.setdefault("restartPolicy", "Always")
    spec.setdefault("terminationGracePeriodSeconds", 30)
    spec.setdefault("dnsPolicy", "ClusterFirst")
    spec.setdefault("schedulerName", "default-scheduler")
    for container in list(spec.get("containers") or []) + list(spec.get("initContainers") or []):
        image = container.get("image") or ""
        tagged = ":" in image.rsplit("/", 1)[-1] or "@" in image
        latest = image.endswith(":latest") or not tagged
        container.setdefault("imagePullPolicy", "Always" if latest else "IfNotPresent")
        container.setdefault("terminationMessagePath", "/dev/termination-log")
        container.setdefault("terminationMessagePolicy", "File")
        resources = container.get("resources")
        if resources and resources.get("limits"):
            requests = resources.setdefault("requests", {})
            for name, value in resources["limits"].items():
                requests.setdefault(name, value)
    pod["status"] = {"phase": "Pending", "qosClass": _qos_class(pod)}
    return pod


# =========================================================================== scheduler + kubelet


@dataclass
class _PodRule:
    pod_name: str | None
    namespace: str | None
    message: str | None = None

    def matches(self, pod: dict) -> bool:
        metadata = pod["metadata"]
        return (self.pod_name is None or self.pod_name == metadata["name"]) and (
            self.namespace is None or self.namespace == metadata.get("namespace")
        )


def _tolerates(tolerations: list, taint: dict) -> bool:
    for toleration in tolerations or []:
        if toleration.get("effect") and toleration["effect"] != taint.get("effect"):
            continue
        if toleration.get("operator") == "Exists":
            if not toleration.get("key") or toleration["key"] == taint.get("key"):
                return True
        elif toleration.get("key") == taint.get("key") and toleration.get("value", "") == taint.get("value", ""):
            return True
    return False


class FakeKubelet:
    """Plays kube-scheduler and every node's kubelet for pods in the store.

    It consumes the store's change stream like any controller, so a test sees the same
    sequence of watch events (ADDED Pending -> MODIFIED bound -> MODIFIED Running) a cluster
    would produce, and failures in here surface as validation errors of its own writes.
    """

    def __init__(self, store: ObjectStore, pod_ip_prefix: str):
        self._store = store
        self._pods_rt = RESOURCE_TYPES["pods"]
        self._events_rt = RESOURCE_TYPES["events"]
        self._nodes_rt = RESOURCE_TYPES["nodes"]
        self._pod_ips = (f"{pod_ip_prefix}{n}" for n in itertools.cycle(range(2, 255)))
        self.hold_rules: list[_PodRule] = []
        self.fail_rules: list[_PodRule] = []
        # (namespace, name) -> "held" | "forced" | "unschedulable"
        self.waiting: dict[tuple[str, str], str] = {}
        self._last_failure_message: dict[tuple[str, str], str] = {}
        self._queue = store.subscribe()
        self._task: asyncio.Task | None = None
        # exceptions raised while reacting (e.g. its own write failing validation): a bug in
        # the emulator or an object it cannot handle; tests should assert this stays empty
        self.errors: list[Exception] = []

    def start(self) -> None:
        self._task = asyncio.create_task(self._run_forever(), name="kube-emulator-kubelet")

    async def stop(self) -> None:
        self._store.unsubscribe(self._queue)
        if self._task:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _run_forever(self) -> None:
        while True:
            event = await self._queue.get()
            if event is None:
                return
            try:
                self.handle(event)
            except Exception as error:  # keep serving; the test decides whether it matters
                _log.exception("fake kubelet failed on %s %s", event.type, event.rt.kind)
                self.errors.append(error)

    # ----------------------------------------------------------- reactions

    def handle(self, event: StoreEvent) -> None:
        if event.rt.plural == "nodes" and event.type == "ADDED":
            self.retry_waiting()
        if event.rt.plural != "pods":
            return
        pod = event.object
        key = (pod["metadata"]["namespace"], pod["metadata"]["name"])
        if event.type == "ADDED":
            self.try_schedule(*key)
        elif (
            event.type == "MODIFIED"
            and "deletionTimestamp" in pod["metadata"]
            and "deletionTimestamp" not in event.old["metadata"]
        ):
            self._finish_termination(pod)
        elif event.type == "DELETED":
            self.waiting.pop(key, None)
            self._last_failure_message.pop(key, None)
            self.retry_waiting()

    def retry_waiting(self) -> None:
        for (namespace, name), why in list(self.waiting.items()):
            if why == "unschedulable":
                self.try_schedule(namespace, name)

    def release(self, pod_name: str | None, namespace: str | None) -> None:
        probe = _PodRule(pod_name, namespace)
        self.hold_rules = [r for r in self.hold_rules if not (r.pod_name == pod_name and r.namespace == namespace)]
        self.fail_rules = [r for r in self.fail_rules if not (r.pod_name == pod_name and r.namespace == namespace)]
        for ns, name in list(self.waiting):
            if self._store.exists(self._pods_rt, ns, name):
                if probe.matches(self._store.get(self._pods_rt, ns, name)):
                    self.waiting.pop((ns, name))
                    self.try_schedule(ns, name)

    def try_schedule(self, namespace: str, name: str) -> None:
        """Bind the pod to a node and run it, or leave it Pending (held / unschedulable).

        Always works on the stored pod, never on an event's snapshot, so concurrent
        changes (labels patched by a test, a delete) are not overwritten."""
        key = (namespace, name)
        if not self._store.exists(self._pods_rt, namespace, name):
            return
        pod = self._store.get(self._pods_rt, namespace, name)
        if "deletionTimestamp" in pod["metadata"]:
            return
        if pod["spec"].get("nodeName"):  # created already bound: the kubelet just runs it
            if pod["status"].get("phase") == "Pending" and not pod["status"].get("containerStatuses"):
                self._run(pod, pod["spec"]["nodeName"])
            return
        if any(rule.matches(pod) for rule in self.hold_rules):
            self.waiting[key] = "held"
            return
        forced = next((rule for rule in self.fail_rules if rule.matches(pod)), None)
        if forced:
            self.waiting[key] = "forced"
            self._unschedulable(pod, forced.message or self._no_fit_message(pod))
            return
        node = self._pick_node(pod)
        if node is None:
            self.waiting[key] = "unschedulable"
            self._unschedulable(pod, self._no_fit_message(pod))
            return
        self.waiting.pop(key, None)
        self._bind_and_run(pod, node)

    # ----------------------------------------------------------- scheduling

    def _nodes(self) -> list[dict]:
        return self._store.list(self._nodes_rt)

    def _node_failures(self, pod: dict, node: dict) -> list[str]:
        """Reasons (in the scheduler's words) why ``pod`` does not fit on ``node``."""
        reasons = []
        if (node.get("spec") or {}).get("unschedulable"):
            reasons.append("node(s) were unschedulable")
        labels = node["metadata"].get("labels") or {}
        selector = pod["spec"].get("nodeSelector") or {}
        if any(labels.get(k) != v for k, v in selector.items()):
            reasons.append("node(s) didn't match Pod's node affinity/selector")
        for taint in (node.get("spec") or {}).get("taints") or []:
            if taint.get("effect") in ("NoSchedule", "NoExecute") and not _tolerates(
                pod["spec"].get("tolerations"), taint
            ):
                shown = f"{taint['key']}: {taint['value']}" if taint.get("value") else taint["key"]
                reasons.append(f"node(s) had untolerated taint {{{shown}}}")
        allocatable = {k: parse_quantity(v) for k, v in ((node.get("status") or {}).get("allocatable") or {}).items()}
        used: dict[str, Decimal] = {}
        for other in self._store.list(self._pods_rt):
            if other["spec"].get("nodeName") == node["metadata"]["name"] and other["status"].get("phase") not in (
                "Succeeded",
                "Failed",
            ):
                for name, value in _effective_requests(other).items():
                    used[name] = used.get(name, Decimal(0)) + value
        for name, value in sorted(_effective_requests(pod).items()):
            if value > 0 and value > allocatable.get(name, Decimal(0)) - used.get(name, Decimal(0)):
                reasons.append("Too many pods" if name == "pods" else f"Insufficient {name}")
        return reasons

    def _pick_node(self, pod: dict) -> str | None:
        nodes = self._nodes()
        if not nodes:
            return VIRTUAL_NODE
        for node in nodes:
            if not self._node_failures(pod, node):
                return node["metadata"]["name"]
        return None

    def _no_fit_message(self, pod: dict) -> str:
        nodes = self._nodes()
        if not nodes:  # forced failure without registered nodes: the classic GPU message
            return (
                f"0/1 nodes are available: 1 Insufficient {GPU_RESOURCE}. preemption: "
                "0/1 nodes are available: 1 No preemption victims found for incoming pod."
            )
        counts: dict[str, int] = {}
        only_resources = 0
        for node in nodes:
            reasons = self._node_failures(pod, node)
            for reason in reasons:
                counts[reason] = counts.get(reason, 0) + 1
            if reasons and all(r.startswith("Insufficient") or r == "Too many pods" for r in reasons):
                only_resources += 1
        n = len(nodes)
        summary = ", ".join(f"{count} {reason}" for reason, count in sorted(counts.items()))
        preemption = []
        if n - only_resources:
            preemption.append(f"{n - only_resources} Preemption is not helpful for scheduling")
        if only_resources:
            preemption.append(f"{only_resources} No preemption victims found for incoming pod")
        return f"0/{n} nodes are available: {summary}. preemption: 0/{n} nodes are available: {', '.join(preemption)}."

    def _unschedulable(self, pod: dict, message: str) -> None:
        key = (pod["metadata"]["namespace"], pod["metadata"]["name"])
        if self._last_failure_message.get(key) == message:
            return
        self._last_failure_message[key] = message
        status = _deep(pod["status"])
        status["conditions"] = [
            {
                "type": "PodScheduled",
                "status": "False",
                "reason": "Unschedulable",
                "message": message,
                "lastProbeTime": None,
                "lastTransitionTime": _timestamp(),
            }
        ]
        pod = self._store.update(self._pods_rt, key[0], key[1], {**pod, "status": status})
        self.record_event(pod, "FailedScheduling", message, "Warning", component="default-scheduler")

    # ----------------------------------------------------------- running

    def _node_ip(self, node_name: str) -> str:
        if not self._store.exists(self._nodes_rt, None, node_name):
            return "127.245.0.1"
        node = self._store.get(self._nodes_rt, None, node_name)
        return next(
            (a["address"] for a in node["status"].get("addresses", []) if a["type"] == "InternalIP"),
            "127.245.0.1",
        )

    def _bind_and_run(self, pod: dict, node_name: str) -> None:
        namespace, name = pod["metadata"]["namespace"], pod["metadata"]["name"]
        bound = _deep(pod)
        bound["spec"]["nodeName"] = node_name
        bound["status"]["conditions"] = [
            {
                "type": "PodScheduled",
                "status": "True",
                "lastProbeTime": None,
                "lastTransitionTime": _timestamp(),
            }
        ]
        bound = self._store.update(self._pods_rt, namespace, name, bound)
        self.record_event(
            bound,
            "Scheduled",
            f"Successfully assigned {namespace}/{name} to {node_name}",
            component="default-scheduler",
        )
        self._run(bound, node_name)

    def _run(self, bound: dict, node_name: str) -> None:
        """What the kubelet reports once the containers started: a complete Running status."""
        namespace, name = bound["metadata"]["namespace"], bound["metadata"]["name"]
        now = _timestamp()
        pod_ip, host_ip = next(self._pod_ips), self._node_ip(node_name)
        running = _deep(bound)
        spec = running["spec"]
        conditions = ["PodReadyToStartContainers", "Initialized", "Ready", "ContainersReady", "PodScheduled"]
        running["status"].update(
            {
                "phase": "Running",
                "hostIP": host_ip,
                "hostIPs": [{"ip": host_ip}],
                "podIP": pod_ip,
                "podIPs": [{"ip": pod_ip}],
                "startTime": now,
                "conditions": [
                    {"type": t, "status": "True", "lastProbeTime": None, "lastTransitionTime": now} for t in conditions
                ],
                "containerStatuses": [self._running_container_status(c, now) for c in spec["containers"]],
            }
        )
        if spec.get("initContainers"):
            running["status"]["initContainerStatuses"] = [
                {
                    **self._running_container_status(c, now),
                    "ready": True,
                    "started": False,
                    "state": {
                        "terminated": {
                            "exitCode": 0,
                            "reason": "Completed",
                            "startedAt": now,
                            "finishedAt": now,
                        }
                    },
                }
                for c in spec["initContainers"]
            ]
        running = self._store.update(self._pods_rt, namespace, name, running)
        for container in spec["containers"]:
            field_path = f"spec.containers{{{container['name']}}}"
            self.record_event(
                running,
                "Pulled",
                f'Container image "{container.get("image")}" already present on machine',
                field_path=field_path,
            )
            self.record_event(running, "Created", f"Created container {container['name']}", field_path=field_path)
            self.record_event(running, "Started", f"Started container {container['name']}", field_path=field_path)

    @staticmethod
    def _running_container_status(container: dict, now: str) -> dict:
        image = container.get("image") or ""
        repository = image.split("@")[0]
        if ":" in repository.rsplit("/", 1)[-1]:
            repository = repository.rsplit(":", 1)[0]
        return {
            "name": container["name"],
            "state": {"running": {"startedAt": now}},
            "lastState": {},
            "ready": True,
            "started": True,
            "restartCount": 0,
            "image": image,
            "imageID": f"{repository}@sha256:{secrets.token_hex(32)}",
            "containerID": f"containerd://{secrets.token_hex(32)}",
        }

    def crash(self, pod: dict, container: str | None, exit_code: int, reason: str) -> dict:
        """A container exits; restartable exits become CrashLoopBackOff, as on a kubelet."""
        namespace, name = pod["metadata"]["namespace"], pod["metadata"]["name"]
        pod_ref = f"{name}_{namespace}({pod['metadata']['uid']})"  # how the kubelet names pods
        statuses = pod["status"].get("containerStatuses") or []
        target = next((s for s in statuses if container in (None, s["name"])), None)
        if target is None or pod["status"].get("phase") != "Running":
            raise ValueError(f"pod {namespace}/{name} has no running container {container or ''} to crash")
        now = _timestamp()
        started = (target["state"].get("running") or {}).get("startedAt", now)
        terminated = {
            "exitCode": exit_code,
            "reason": reason,
            "startedAt": started,
            "finishedAt": now,
            "containerID": target["containerID"],
        }
        policy = pod["spec"].get("restartPolicy", "Always")
        restarts = policy == "Always" or (policy == "OnFailure" and exit_code != 0)
        target["ready"], target["started"] = False, False
        if restarts:
            target["lastState"] = {"terminated": terminated}
            target["restartCount"] += 1
            target["state"] = {
                "waiting": {
                    "reason": "CrashLoopBackOff",
                    "message": f"back-off 10s restarting failed container={target['name']} pod={pod_ref}",
                }
            }
        else:
            target["state"] = {"terminated": terminated}
        if not restarts and all("terminated" in s["state"] for s in statuses):
            pod["status"]["phase"] = (
                "Succeeded" if all(s["state"]["terminated"]["exitCode"] == 0 for s in statuses) else "Failed"
            )
        for condition in pod["status"].get("conditions") or []:
            if condition["type"] in ("Ready", "ContainersReady"):
                condition.update(
                    status="False",
                    lastTransitionTime=now,
                    reason="PodCompleted" if not restarts else "ContainersNotReady",
                )
                if restarts:
                    condition["message"] = f"containers with unready status: [{target['name']}]"
        pod = self._store.update(self._pods_rt, namespace, name, pod)
        if restarts:
            self.record_event(
                pod,
                "BackOff",
                f"Back-off restarting failed container {target['name']} in pod {pod_ref}",
                "Warning",
                field_path=f"spec.containers{{{target['name']}}}",
            )
        return pod

    def _finish_termination(self, pod: dict) -> None:
        namespace, name = pod["metadata"]["namespace"], pod["metadata"]["name"]
        for container in pod["spec"].get("containers") or []:
            self.record_event(
                pod,
                "Killing",
                f"Stopping container {container['name']}",
                field_path=f"spec.containers{{{container['name']}}}",
            )
        if self._store.exists(self._pods_rt, namespace, name):
            self._store.delete(self._pods_rt, namespace, name)

    # ----------------------------------------------------------- events

    def record_event(
        self,
        pod: dict,
        reason: str,
        message: str,
        type_: str = "Normal",
        *,
        component: str = "kubelet",
        field_path: str | None = None,
    ) -> dict:
        """Create a core/v1 Event the way the scheduler (eventTime) or kubelet (timestamps) do."""
        metadata = pod["metadata"]
        involved = {
            "kind": "Pod",
            "namespace": metadata["namespace"],
            "name": metadata["name"],
            "uid": metadata["uid"],
            "apiVersion": "v1",
            "resourceVersion": metadata["resourceVersion"],
        }
        if field_path:
            involved["fieldPath"] = field_path
        event = {
            "apiVersion": "v1",
            "kind": "Event",
            "metadata": {
                "name": f"{metadata['name']}.{secrets.token_hex(8)}",
                "namespace": metadata["namespace"],
            },
            "involvedObject": involved,
            "reason": reason,
            "message": message,
            "type": type_,
            "reportingComponent": component,
        }
        if component == "default-scheduler":
            event.update(
                source={},
                firstTimestamp=None,
                lastTimestamp=None,
                eventTime=_micro_timestamp(),
                action="Scheduling",
                reportingInstance="default-scheduler-emulated",
            )
        else:
            node = pod["spec"].get("nodeName") or ""
            now = _timestamp()
            event.update(
                source={"component": component, "host": node},
                firstTimestamp=now,
                lastTimestamp=now,
                eventTime=None,
                count=1,
                reportingInstance=node,
            )
        return self._store.create(self._events_rt, metadata["namespace"], event)


# =========================================================================== HTTP layer


@dataclass(frozen=True)
class _Route:
    rt: ResourceType
    namespace: str | None
    name: str | None
    subresource: str | None


def _parse_route(path: str) -> _Route:
    parts = [p for p in path.split("/") if p]
    namespace = None
    if len(parts) >= 3 and parts[0] == "namespaces":
        namespace, parts = parts[1], parts[2:]
    if not parts or parts[0] not in RESOURCE_TYPES or len(parts) > 3:
        raise ApiError(404, "NotFound", "the server could not find the requested resource")
    rt = RESOURCE_TYPES[parts[0]]
    if namespace is not None and not rt.namespaced:
        raise ApiError(404, "NotFound", "the server could not find the requested resource")
    name = parts[1] if len(parts) > 1 else None
    subresource = parts[2] if len(parts) > 2 else None
    if subresource not in (None, "status"):
        raise ApiError(404, "NotFound", f"the emulator does not serve the {subresource} subresource")
    if rt.namespaced and name is not None and namespace is None:
        raise ApiError(404, "NotFound", "the server could not find the requested resource")
    return _Route(rt, namespace, name, subresource)


def _truthy(value: str | None) -> bool:
    return (value or "").lower() in ("true", "1")


class _ApiHandlers:
    """HTTP verbs -> store operations, with the API server's status codes."""

    def __init__(self, emulator: "KubeEmulator"):
        self.emulator = emulator
        self.store = emulator.store
        self.watch_timeouts: set[asyncio.Task] = set()

    # ----------------------------------------------------------- plumbing

    @web.middleware
    async def middleware(self, request: web.Request, handler):
        record = RequestRecord(request.method, request.path, request.query_string)
        self.emulator.requests.append(record)
        try:
            response = await handler(request)
        except ApiError as error:
            response = web.json_response(error.status(), status=error.code)
        record.status = response.status
        return response

    async def _body(self, request: web.Request) -> Any:
        try:
            return json.loads(await request.read() or b"null")
        except json.JSONDecodeError as exc:
            raise ApiError(400, "BadRequest", f"request body is not JSON: {exc}") from exc

    def _ensure_namespace(self, namespace: str | None) -> None:
        if namespace is None or self.store.exists(RESOURCE_TYPES["namespaces"], None, namespace):
            return
        if self.emulator.namespaces_are_implicit:
            self.emulator.create_namespace(namespace)
        else:
            raise ApiError(
                404,
                "NotFound",
                f'namespaces "{namespace}" not found',
                {"name": namespace, "kind": "namespaces"},
            )

    def _validated_write(self, verb: str, route: _Route, name: str, body: Any, write: Callable[[], dict]) -> dict:
        try:
            return write()
        except ManifestInvalid as invalid:
            self.emulator.rejected.append(
                RejectedObject(verb, route.rt.kind, route.namespace, name, _deep(body), tuple(invalid.problems))
            )
            raise _invalid(route.rt, name, invalid.problems) from invalid

    # ----------------------------------------------------------- dispatch

    async def api_versions(self, request: web.Request) -> web.Response:
        return web.json_response({"kind": "APIVersions", "versions": ["v1"], "serverAddressByClientCIDRs": []})

    async def version(self, request: web.Request) -> web.Response:
        major, minor = self.emulator.kubernetes_version.split(".")[:2]
        return web.json_response(
            {
                "major": major,
                "minor": minor,
                "gitVersion": f"v{major}.{minor}.0-emulated",
                "platform": "linux/amd64",
            }
        )

    async def dispatch(self, request: web.Request) -> web.StreamResponse:
        route = _parse_route(request.match_info["path"])
        method = request.method
        if route.name is None:
            if method == "GET":
                if _truthy(request.query.get("watch")):
                    return await self.watch(request, route)
                return self.list(request, route)
            if method == "POST":
                return await self.create(request, route)
        else:
            if method == "GET":
                return web.json_response(self.store.get(route.rt, route.namespace, route.name))
            if method == "PUT":
                return await self.replace(request, route)
            if method == "PATCH":
                return await self.patch(request, route)
            if method == "DELETE" and route.subresource is None:
                return await self.delete(request, route)
        raise ApiError(405, "MethodNotAllowed", f"{method} is not supported on this path by the emulator")

    # ----------------------------------------------------------- verbs

    def list(self, request: web.Request, route: _Route) -> web.Response:
        selector = Selector.parse(route.rt, request.query.get("labelSelector"), request.query.get("fieldSelector"))
        items = self.store.list(route.rt, route.namespace, selector)
        for item in items:  # list items carry no kind/apiVersion on a real server
            item.pop("kind", None)
            item.pop("apiVersion", None)
        return web.json_response(
            {
                "kind": f"{route.rt.kind}List",
                "apiVersion": "v1",
                "metadata": {"resourceVersion": str(self.store.resource_version)},
                "items": items,
            }
        )

    async def create(self, request: web.Request, route: _Route) -> web.Response:
        body = await self._body(request)
        if not isinstance(body, dict):
            raise ApiError(400, "BadRequest", "the body of a create must be a JSON object")
        body = _deep(body)
        body.setdefault("apiVersion", "v1")
        body.setdefault("kind", route.rt.kind)
        if body["kind"] != route.rt.kind or body["apiVersion"] != "v1":
            raise ApiError(400, "BadRequest", f"expected v1/{route.rt.kind}, got {body['apiVersion']}/{body['kind']}")
        metadata = body.setdefault("metadata", {})
        if route.namespace and metadata.get("namespace") not in (None, route.namespace):
            raise ApiError(
                400,
                "BadRequest",
                "the namespace of the provided object does not match the namespace sent on the request",
            )
        name = metadata.get("name") or metadata.get("generateName") or ""

        def write() -> dict:
            candidate = _deep(body)
            if route.namespace:
                candidate["metadata"]["namespace"] = route.namespace
            validate_manifest(candidate, self.emulator.kubernetes_version)  # the client's input
            if route.rt.plural == "pods":
                candidate = default_pod(candidate)
            elif route.rt.plural == "events":
                for key in ("firstTimestamp", "lastTimestamp", "eventTime"):
                    candidate.setdefault(key, None)
            elif route.rt.plural == "namespaces":
                candidate["status"] = {"phase": "Active"}
            return self.store.create(route.rt, route.namespace, candidate)

        self._ensure_namespace(route.namespace)
        created = self._validated_write("create", route, name, body, write)
        self.emulator.created.append(
            CreatedObject(route.rt.kind, route.namespace, created["metadata"]["name"], created)
        )
        return web.json_response(created, status=201)

    def _merge_into_current(self, route: _Route, current: dict, proposed: dict) -> dict:
        """Status subresource rules: main writes keep status, status writes keep the rest."""
        if not route.rt.has_status:
            return proposed
        if route.subresource == "status":
            return {**current, "status": proposed.get("status")}
        merged = dict(proposed)
        if "status" in current:
            merged["status"] = current["status"]
        else:
            merged.pop("status", None)
        return merged

    async def replace(self, request: web.Request, route: _Route) -> web.Response:
        body = await self._body(request)
        if not isinstance(body, dict):
            raise ApiError(400, "BadRequest", "the body of a replace must be a JSON object")
        current = self.store.get(route.rt, route.namespace, route.name)
        expected = (body.get("metadata") or {}).get("resourceVersion")
        if expected and expected != current["metadata"]["resourceVersion"]:
            raise ApiError(
                409,
                "Conflict",
                f'Operation cannot be fulfilled on {route.rt.plural} "{route.name}": the object has been modified; '
                "please apply your changes to the latest version and try again",
            )
        proposed = self._merge_into_current(route, current, body)
        updated = self._validated_write(
            "replace",
            route,
            route.name,
            body,
            lambda: self.store.update(route.rt, route.namespace, route.name, proposed),
        )
        return web.json_response(updated)

    async def patch(self, request: web.Request, route: _Route) -> web.Response:
        body = await self._body(request)
        content_type = request.headers.get("Content-Type", "").split(";")[0].strip()
        current = self.store.get(route.rt, route.namespace, route.name)
        if content_type == "application/json-patch+json":
            if not isinstance(body, list):
                raise ApiError(400, "BadRequest", "a JSON patch must be a list of operations")
            patched = json_patch(current, body)
        elif content_type in ("application/merge-patch+json", "application/strategic-merge-patch+json"):
            if not isinstance(body, dict):
                raise ApiError(400, "BadRequest", "a merge patch must be a JSON object")
            patched = merge_patch(current, body, strategic=content_type.startswith("application/strategic"))
        else:
            raise ApiError(415, "UnsupportedMediaType", f"the emulator does not support patch type {content_type!r}")
        proposed = self._merge_into_current(route, current, patched)
        updated = self._validated_write(
            "patch",
            route,
            route.name,
            body,
            lambda: self.store.update(route.rt, route.namespace, route.name, proposed),
        )
        return web.json_response(updated)

    async def delete(self, request: web.Request, route: _Route) -> web.Response:
        body = await self._body(request) or {}
        current = self.store.get(route.rt, route.namespace, route.name)
        grace = request.query.get("gracePeriodSeconds")
        if grace is None and isinstance(body, dict):
            grace = body.get("gracePeriodSeconds")
        if grace is None:
            grace = (current.get("spec") or {}).get("terminationGracePeriodSeconds", 30)
        grace = int(grace)
        if route.rt.plural == "pods" and grace > 0 and (current.get("spec") or {}).get("nodeName"):
            return web.json_response(self.store.mark_deleting(route.rt, route.namespace, route.name, grace))
        return web.json_response(self.store.delete(route.rt, route.namespace, route.name))

    async def watch(self, request: web.Request, route: _Route) -> web.StreamResponse:
        selector = Selector.parse(route.rt, request.query.get("labelSelector"), request.query.get("fieldSelector"))
        since = request.query.get("resourceVersion") or "0"
        timeout = request.query.get("timeoutSeconds")
        if not since.isdigit():
            raise ApiError(400, "BadRequest", f"invalid resourceVersion {since!r}")
        since_version = int(since)
        if since_version > self.store.resource_version:
            raise ApiError(504, "Timeout", "Too large resource version")

        # Subscribe and take the snapshot with no await in between: nothing can slip through.
        queue = self.store.subscribe()
        if since_version == 0:
            start_version = self.store.resource_version
            backlog = [("ADDED", obj) for obj in self.store.list(route.rt, route.namespace, selector)]
        else:
            start_version = since_version
            backlog = []
            for event in self.store.history:
                if event.resource_version > since_version and event.rt is route.rt:
                    backlog += self._watch_lines(event, route, selector)
        response = web.StreamResponse(headers={"Content-Type": "application/json"})
        response.enable_chunked_encoding()
        await response.prepare(request)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + int(timeout) if timeout else None
        try:  # a cancellation (client disconnected) propagates; the finally unsubscribes
            for kind, obj in backlog:
                await self._write_event(response, route.rt, kind, obj)
            while True:
                remaining = None if deadline is None else deadline - loop.time()
                if remaining is not None and remaining <= 0:
                    break
                try:
                    event = await asyncio.wait_for(queue.get(), remaining)
                except asyncio.TimeoutError:
                    break
                if event is None:  # emulator shutting down
                    break
                if event.rt is not route.rt or event.resource_version <= start_version:
                    continue
                for kind, obj in self._watch_lines(event, route, selector):
                    await self._write_event(response, route.rt, kind, obj)
            await response.write_eof()
        except ConnectionResetError:
            pass  # client went away mid-write
        finally:
            self.store.unsubscribe(queue)
        return response

    @staticmethod
    def _watch_lines(event: StoreEvent, route: _Route, selector: Selector) -> list[tuple[str, dict]]:
        if route.namespace is not None and event.namespace != route.namespace:
            return []
        matches_now, matched_before = selector.matches(event.object), selector.matches(event.old)
        if event.type == "DELETED":
            return [("DELETED", event.object)] if matched_before else []
        if event.type == "ADDED":
            return [("ADDED", event.object)] if matches_now else []
        if matches_now and matched_before:
            return [("MODIFIED", event.object)]
        if matches_now:
            return [("ADDED", event.object)]
        if matched_before:  # left the selector: watchers see it disappear
            return [("DELETED", event.object)]
        return []

    @staticmethod
    async def _write_event(response: web.StreamResponse, rt: ResourceType, kind: str, obj: dict) -> None:
        obj = {
            "kind": rt.kind,
            "apiVersion": "v1",
            **{k: v for k, v in obj.items() if k not in ("kind", "apiVersion")},
        }
        await response.write(json.dumps({"type": kind, "object": obj}).encode() + b"\n")


# =========================================================================== public API


class KubeEmulator:
    """An in-process Kubernetes API server with a fake scheduler/kubelet. See the module doc.

    Use as ``async with KubeEmulator() as kube:``; then ``kube.url``, ``kube.kubeconfig_path``.
    """

    def __init__(
        self,
        *,
        kubernetes_version: str = DEFAULT_KUBERNETES_VERSION,
        namespaces: Iterable[str] | None = None,
        pod_ip_prefix: str = "127.244.0.",
    ):
        self.kubernetes_version = kubernetes_version
        self.namespaces_are_implicit = namespaces is None
        self._initial_namespaces = list(namespaces or [])
        self._pod_ip_prefix = pod_ip_prefix
        self.store = ObjectStore(lambda obj: validate_manifest(obj, kubernetes_version))
        self.rejected: list[RejectedObject] = []
        self.created: list[CreatedObject] = []
        self.requests: list[RequestRecord] = []
        self.kubelet: FakeKubelet | None = None
        self._runner: web.AppRunner | None = None
        self._tmpdir: str | None = None
        self.url = ""
        self.kubeconfig_path = ""

    # ----------------------------------------------------------- lifecycle

    async def __aenter__(self) -> "KubeEmulator":
        await self.start()
        return self

    async def __aexit__(self, *exc_info) -> None:
        await self.close()

    async def start(self) -> None:
        handlers = _ApiHandlers(self)
        app = web.Application(middlewares=[handlers.middleware])
        app.router.add_get("/api", handlers.api_versions)
        app.router.add_get("/version", handlers.version)
        app.router.add_route("*", "/api/v1/{path:.*}", handlers.dispatch)
        # handler_cancellation: a watch whose client disconnected ends at once
        self._runner = web.AppRunner(app, handler_cancellation=True, shutdown_timeout=1.0, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        host, port = self._runner.addresses[0][:2]
        self.url = f"http://{host}:{port}"
        self._tmpdir = tempfile.mkdtemp(prefix="kube-emulator-")
        self.kubeconfig_path = os.path.join(self._tmpdir, "kubeconfig")
        with open(self.kubeconfig_path, "w") as f:
            json.dump(self.kubeconfig(), f, indent=1)
        for namespace in self._initial_namespaces:
            self.create_namespace(namespace)
        self.kubelet = FakeKubelet(self.store, self._pod_ip_prefix)
        self.kubelet.start()

    async def close(self) -> None:
        self.store.close_subscriptions()  # ends every open watch
        if self.kubelet:
            await self.kubelet.stop()
        if self._runner:
            await self._runner.cleanup()
            self._runner = None
        if self._tmpdir:
            shutil.rmtree(self._tmpdir, ignore_errors=True)
            self._tmpdir = None

    def kubeconfig(self, namespace: str = "default") -> dict:
        """A kubeconfig (JSON is valid YAML) for this server: plain http, no credentials."""
        return {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [{"name": "emulator", "cluster": {"server": self.url}}],
            "users": [{"name": "emulator", "user": {}}],
            "contexts": [
                {
                    "name": "emulator",
                    "context": {"cluster": "emulator", "user": "emulator", "namespace": namespace},
                }
            ],
            "current-context": "emulator",
        }

    # ----------------------------------------------------------- reading state

    def objects(self, plural: str, namespace: str | None = None) -> list[dict]:
        """Stored objects of one resource type (``"pods"``, ``"events"``, ...), copies."""
        return self.store.list(RESOURCE_TYPES[plural], namespace)

    def pods(self, namespace: str | None = None) -> list[dict]:
        return self.objects("pods", namespace)

    def pod(self, name: str, namespace: str | None = None) -> dict:
        """The one pod called ``name`` (in ``namespace``, or the only namespace that has one)."""
        matches = [p for p in self.pods(namespace) if p["metadata"]["name"] == name]
        if len(matches) != 1:
            raise LookupError(f"{len(matches)} pods called {name!r} in {namespace or 'any namespace'}")
        return matches[0]

    def events(self, namespace: str | None = None, involved_name: str | None = None) -> list[dict]:
        """Events in the order they were recorded (optionally only those about one object)."""
        events = [e for e in self.objects("events", namespace) if involved_name in (None, e["involvedObject"]["name"])]
        return sorted(events, key=lambda e: int(e["metadata"]["resourceVersion"]))

    def nodes(self) -> list[dict]:
        return self.objects("nodes")

    # ----------------------------------------------------------- arranging state

    def create_namespace(self, name: str) -> dict:
        return self.store.create(
            RESOURCE_TYPES["namespaces"],
            None,
            {
                "apiVersion": "v1",
                "kind": "Namespace",
                "metadata": {"name": name},
                "status": {"phase": "Active"},
            },
        )

    def add_node(
        self,
        name: str,
        gpu_type_label: str | None = None,
        gpus: int = 0,
        *,
        gpu_label_key: str = GPU_PRODUCT_LABEL,
        labels: dict | None = None,
        taints: list[dict] | None = None,
        cpu: str = "64",
        memory: str = "256Gi",
        max_pods: int = 110,
        unschedulable: bool = False,
    ) -> dict:
        """Register a Ready node; ``gpus`` sets capacity/allocatable ``nvidia.com/gpu`` and
        ``gpu_type_label`` the ``gpu_label_key`` label (e.g. "NVIDIA-A100-SXM4-80GB")."""
        index = len(self.nodes()) + 2
        node_labels = {
            "kubernetes.io/hostname": name,
            "kubernetes.io/os": "linux",
            "kubernetes.io/arch": "amd64",
        }
        if gpu_type_label:
            node_labels[gpu_label_key] = gpu_type_label
        node_labels.update(labels or {})
        resources = {"cpu": cpu, "memory": memory, "pods": str(max_pods), "ephemeral-storage": "100Gi"}
        if gpus:
            resources[GPU_RESOURCE] = str(gpus)
        now = _timestamp()
        node = {
            "apiVersion": "v1",
            "kind": "Node",
            "metadata": {"name": name, "labels": node_labels},
            "spec": {"taints": list(taints or []), "unschedulable": unschedulable},
            "status": {
                "capacity": dict(resources),
                "allocatable": dict(resources),
                "conditions": [
                    {
                        "type": "Ready",
                        "status": "True",
                        "reason": "KubeletReady",
                        "message": "kubelet is posting ready status",
                        "lastHeartbeatTime": now,
                        "lastTransitionTime": now,
                    }
                ],
                "addresses": [
                    {"type": "InternalIP", "address": f"127.245.0.{index}"},
                    {"type": "Hostname", "address": name},
                ],
                "nodeInfo": {
                    "architecture": "amd64",
                    "bootID": str(uuid.uuid4()),
                    "containerRuntimeVersion": "containerd://emulated",
                    "kernelVersion": "emulated",
                    "kubeProxyVersion": "",
                    "kubeletVersion": f"v{self.kubernetes_version}.0",
                    "machineID": secrets.token_hex(16),
                    "operatingSystem": "linux",
                    "osImage": "emulated",
                    "systemUUID": str(uuid.uuid4()),
                },
            },
        }
        if not node["spec"]["taints"]:
            del node["spec"]["taints"]
        return self.store.create(RESOURCE_TYPES["nodes"], None, node)

    def hold_pending(self, pod_name: str | None = None, namespace: str | None = None) -> None:
        """Keep matching pods (``None`` = all) Pending and unbound, with no events, until
        :meth:`release` — like a slow image pull or a cluster autoscaler still working."""
        self._require_kubelet().hold_rules.append(_PodRule(pod_name, namespace))

    def fail_scheduling(
        self, pod_name: str | None = None, message: str | None = None, namespace: str | None = None
    ) -> None:
        """Make the scheduler refuse matching pods with a ``FailedScheduling`` Warning event.
        ``message`` defaults to the one computed from the registered nodes, e.g. "0/3 nodes are
        available: 3 Insufficient nvidia.com/gpu. preemption: ..."."""
        self._require_kubelet().fail_rules.append(_PodRule(pod_name, namespace, message))

    def release(self, pod_name: str | None = None, namespace: str | None = None) -> None:
        """Drop the hold/fail rules given with the same arguments and schedule matching
        waiting pods now."""
        self._require_kubelet().release(pod_name, namespace)

    def crash(
        self,
        pod_name: str,
        *,
        namespace: str | None = None,
        exit_code: int = 1,
        reason: str = "Error",
        container: str | None = None,
    ) -> dict:
        """A running container exits with ``exit_code`` (137 + "OOMKilled" for an OOM kill).

        As on a kubelet, the pod's restartPolicy decides: ``Always``, or ``OnFailure`` with a
        non-zero code, gives CrashLoopBackOff (``state.waiting``, ``lastState.terminated``,
        restartCount+1, phase still Running); otherwise ``state.terminated`` and phase
        Succeeded/Failed. Returns the updated pod.
        """
        pod = self.pod(pod_name, namespace)
        return self._require_kubelet().crash(pod, container, exit_code, reason)

    def record_event(
        self,
        pod_name: str,
        reason: str,
        message: str,
        type_: str = "Normal",
        *,
        namespace: str | None = None,
        component: str = "kubelet",
    ) -> dict:
        """Emit an arbitrary event about a pod (e.g. "Failed" image pulls)."""
        return self._require_kubelet().record_event(
            self.pod(pod_name, namespace), reason, message, type_, component=component
        )

    def _require_kubelet(self) -> FakeKubelet:
        if self.kubelet is None:
            raise RuntimeError("start the emulator first (async with KubeEmulator() as kube)")
        return self.kubelet


# =========================================================================== KubeSpawner glue


@contextlib.asynccontextmanager
async def kubespawner_pointed_at(emulator: KubeEmulator) -> AsyncIterator[KubeEmulator]:
    """Make every KubeSpawner created inside the block talk to ``emulator``.

    KubeSpawner keeps process-wide state that would otherwise keep talking to a previous
    emulator (or a real cluster):

    - ``kubespawner.clients.load_config`` is ``lru_cache``d, and ``kubernetes_asyncio`` reads
      ``$KUBECONFIG`` once at import (``KUBE_CONFIG_DEFAULT_LOCATION``): both are repointed;
    - ``shared_client`` caches one API client per event loop: the cache is emptied;
    - in-cluster config wins over kubeconfig: ``KUBERNETES_SERVICE_HOST/PORT`` are hidden so
      a test run inside a pod cannot reach the real cluster;
    - reflectors are class-wide singletons (``KubeSpawner.reflectors``) whose watches would
      outlive the test: they are stopped on exit.
    """
    from kubernetes_asyncio.client import Configuration
    from kubernetes_asyncio.config import kube_config
    from kubespawner import KubeSpawner, clients

    def forget_cached_clients() -> None:
        clients.load_config.cache_clear()
        clients._client_cache.clear()

    saved_configuration = Configuration.get_default_copy()
    env = {"KUBECONFIG": emulator.kubeconfig_path}
    with mock.patch.dict(os.environ, env), mock.patch.object(
        kube_config, "KUBE_CONFIG_DEFAULT_LOCATION", emulator.kubeconfig_path
    ):
        for variable in ("KUBERNETES_SERVICE_HOST", "KUBERNETES_SERVICE_PORT"):
            os.environ.pop(variable, None)
        forget_cached_clients()
        try:
            yield emulator
        finally:
            await KubeSpawner._stop_all_reflectors()
            forget_cached_clients()
            Configuration.set_default(saved_configuration)


class MockUser(mock.Mock):
    """The user object KubeSpawner reads (as in kubespawner's own tests): ``name``, ``id``,
    ``url``, ``escaped_name``, ``server``. Pass ``name=``; pair it with
    ``jupyterhub.objects.Hub()`` as ``hub=`` and give the spawner ``api_token`` and
    ``oauth_client_id``."""

    def __init__(self, name: str = "user", **kwargs: Any):
        from jupyterhub.objects import Server

        super().__init__()
        self.name = name
        self.id = abs(hash(name)) % 10_000
        self.server = Server(base_url=f"/user/{name}/")
        for key, value in kwargs.items():
            setattr(self, key, value)

    @property
    def escaped_name(self) -> str:
        return self.name

    @property
    def url(self) -> str:
        return self.server.url
