"""Credits on Kubernetes: KubeSpawner pods on the GPUs a user paid for.

``CreditsKubeSpawner`` puts the credits mixin (admission, hold, billing from
ready, settlement) in front of ``kubespawner.KubeSpawner`` and adds what only
Kubernetes knows:

- placement: the catalog's image, the GPU type's extended resource (limits ==
  requests), node selector and tolerations, and labels naming the session;
- capacity: free GPUs per GPU type, counted from nodes and pods through
  KubeSpawner's own API client, cached briefly and re-checked under a lock
  when a session is placed, so two concurrent spawns cannot both take the
  last free GPU;
- fast failure: a pod the scheduler cannot place (``FailedScheduling`` for
  want of GPUs or a matching node) ends the start at once with a clear message
  and costs nothing, instead of waiting out ``start_timeout``;
- crash visibility: credits pods run with ``restartPolicy: Never`` so that a
  crashed notebook is seen by ``poll()`` (see ``credits_restart_policy``).

Configure it as ``c.JupyterHub.spawner_class =
"jupyterhub_credits.spawner.kube.CreditsKubeSpawner"``; its own options are
``c.CreditsKubeSpawner.…``, the credits ones ``c.CreditsSpawner.…`` and
KubeSpawner's ``c.KubeSpawner.…``.

RBAC: counting capacity needs ``list`` on ``nodes`` and, with
``capacity_all_namespaces`` (the default), on ``pods`` in all namespaces — a
ClusterRole bound to the hub's service account, beyond what Zero to JupyterHub
grants. Without it the spawner logs a warning and capacity is "unknown"
(admission then skips the capacity check; fast failure still applies).
"""

from __future__ import annotations

import asyncio
import copy
import json
import sys
import time
import weakref
from collections.abc import Mapping
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from typing import Any

from kubespawner import KubeSpawner
from traitlets import Bool, Enum, Float

from ..catalog import CPU_ONLY, admit, effective_quotas
from .mixin import CreditsSpawner, refuse

#: Labels on every credits pod (values are label-safe), so that capacity and
#: the admin side can tell which session a pod belongs to.
SESSION_LABEL = "jupyterhub-credits/session"
GPU_TYPE_LABEL = "jupyterhub-credits/gpu-type"
GPUS_LABEL = "jupyterhub-credits/gpus"
#: Annotations carrying what labels cannot (the full session key, the image id).
SESSION_ANNOTATION = "jupyterhub-credits/session-key"
IMAGE_ANNOTATION = "jupyterhub-credits/image"

#: Pod phases that no longer hold resources.
_TERMINATED_PHASES = ("Succeeded", "Failed")

def session_label(session_key: str) -> str:
    """The label value naming a session: its key without the ``session:`` prefix."""
    return session_key.rpartition(":")[2]


@dataclass(frozen=True)
class KubePlacement:
    """Where and how one session's pod runs, derived from the catalog."""

    session_key: str
    image_id: str
    image: str
    gpu_type: str
    gpu_label: str
    gpus: int
    resource: str | None
    node_selector: Mapping[str, str]
    tolerations: tuple[dict, ...]


@dataclass(frozen=True)
class GpuView:
    """GPUs per GPU type as read from the cluster at one moment."""

    totals: dict[str, int]
    used: dict[str, int]
    #: session labels of the credits pods counted in ``used``
    sessions: frozenset[str]
    read_at: float


# Process-wide state, keyed by (API server URL, catalog path): every spawner of
# the hub shares one view of the cluster and one table of placements whose pods
# may not be visible in the API yet.
_views: dict[tuple[str, str], GpuView] = {}
_reservations: dict[tuple[str, str], dict[str, tuple[str, int]]] = {}
_locks: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _capacity_lock() -> asyncio.Lock:
    loop = asyncio.get_running_loop()
    lock = _locks.get(loop)
    if lock is None:
        lock = _locks[loop] = asyncio.Lock()
    return lock


def _plain(value: Any) -> Any:
    """Catalog values are read-only mappings; traits and manifests want plain data."""
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def _count(value: Any) -> int:
    """An extended-resource quantity ("2") as an int; anything unparsable counts as 0."""
    try:
        return int(Decimal(str(value)))
    except (InvalidOperation, ValueError):
        return 0


def _pod_gpus(pod: dict, resource: str) -> int:
    """GPUs a pod takes: per container max(request, limit), init containers at most one at a time."""
    spec = pod.get("spec") or {}

    def of(container: dict) -> int:
        resources = container.get("resources") or {}
        return max(_count((resources.get("requests") or {}).get(resource, 0)),
                   _count((resources.get("limits") or {}).get(resource, 0)))

    main = sum(of(c) for c in spec.get("containers") or [])
    init = max((of(c) for c in spec.get("initContainers") or []), default=0)
    return max(main, init)


def _node_usable(node: dict) -> bool:
    """Ready and not cordoned: the scheduler may place pods there."""
    if (node.get("spec") or {}).get("unschedulable"):
        return False
    conditions = (node.get("status") or {}).get("conditions") or []
    return any(c.get("type") == "Ready" and c.get("status") == "True" for c in conditions)


def _matches(labels: Mapping[str, str], selector: Mapping[str, str]) -> bool:
    return all(labels.get(key) == value for key, value in selector.items())


class CreditsKubeSpawner(CreditsSpawner, KubeSpawner):
    """KubeSpawner pods paid for with credits, on the GPU type and count the user chose.

    ``user_options`` follow the credits contract (``image``, ``gpu_type``,
    ``gpus``, ``hours``), never KubeSpawner profile slugs: a configured
    ``profile_list`` still applies its default profile (resources, volumes...),
    but the image, GPU resources, GPU node selector and tolerations always come
    from the catalog.
    """

    capacity_check = Bool(
        True,
        config=True,
        help="""Count free GPUs per GPU type from the cluster's nodes and pods before
        admitting a GPU session, and again when placing it.

        Needs list access to nodes (and to pods in all namespaces, see
        capacity_all_namespaces). Turn off on clusters whose GPU node pools scale up
        from zero on demand: capacity is then unknown, the spawn form says so and
        admission does not check it.""",
    )

    capacity_cache_seconds = Float(
        5,
        config=True,
        help="""How long a count of free GPUs is reused (by the spawn form and admission)
        before the nodes and pods are listed again. Placing a session always counts
        afresh; this hub's own placements and stops are reflected at once.""",
    )

    capacity_all_namespaces = Bool(
        True,
        config=True,
        help="""Count GPU pods of every namespace (other workloads take GPUs too), which
        needs a ClusterRole with list on pods. When False, or when that list is
        forbidden, only pods in the spawner's namespace are counted.""",
    )

    fail_fast_unschedulable = Bool(
        True,
        config=True,
        help="""End a start at once, with nothing charged, when the scheduler reports
        FailedScheduling for want of the GPU resource or of a node matching the GPU
        type's node selector, instead of waiting for start_timeout.

        Turn off where a cluster autoscaler adds GPU nodes on demand, so that pods
        may wait for a node to appear.""",
    )

    scheduling_check_interval = Float(
        0.5,
        config=True,
        help="""Seconds between looks at the pod's events for FailedScheduling while a
        server starts (the events come from KubeSpawner's shared event reflector, so a
        look costs no API call).""",
    )

    credits_restart_policy = Enum(
        ["Never", "OnFailure", "Always", ""],
        default_value="Never",
        config=True,
        help="""restartPolicy of credits pods. Default "Never".

        KubeSpawner's own default, OnFailure, restarts a crashed notebook container in
        place: the pod sits in CrashLoopBackOff, poll() keeps answering "running", the
        pod keeps its GPUs and the session keeps being billed, while the user's kernels
        are gone anyway. With "Never" a crash (an error, an OOM kill) leaves the
        container terminated and the pod Failed; poll() returns its exit code,
        KubeSpawner deletes the pod (delete_stopped_pods), the GPUs are free again and
        the session is settled up to the last billed tick. "" keeps KubeSpawner's
        policy (or extra_pod_config's).""",
    )

    # --- placement -----------------------------------------------------------------

    _credits_placement: KubePlacement | None = None
    #: what the last placement added to operator-configured traits, to take back
    _credits_added_selector: dict | None = None
    _credits_added_tolerations: list | None = None

    async def place_on_gpus(self, session, request):
        catalog = self.credits.catalog
        image = catalog.images[request.image]
        gpu = catalog.gpu_types.get(request.gpu_type) if request.uses_gpus else None
        placement_spec = gpu.kubernetes if gpu is not None else None
        if request.uses_gpus and placement_spec is None:
            raise refuse(
                f"{request.gpu_label} GPUs are not offered on this cluster "
                f"(the catalog says nothing about placing {request.gpu_type} on Kubernetes).",
                "invalid")
        placement = KubePlacement(
            session_key=session.key,
            image_id=request.image,
            image=image.image,
            gpu_type=request.gpu_type if request.uses_gpus else CPU_ONLY,
            gpu_label=request.gpu_label,
            gpus=request.gpus,
            resource=placement_spec.resource if placement_spec else None,
            node_selector=_plain(placement_spec.node_selector) if placement_spec else {},
            tolerations=tuple(_plain(t) for t in placement_spec.tolerations) if placement_spec else (),
        )
        if request.uses_gpus and self.capacity_check:
            await self._reserve_gpus(session, request)
        self._credits_placement = placement
        self._apply_placement()
        self.log.info("credits: %s gets %s (%s)", self._log_name,
                      f"{request.gpus} × {request.gpu_type}" if request.uses_gpus else "no GPU",
                      placement.image)

    async def load_user_options(self):
        """KubeSpawner's profile overrides, then the credits placement on top.

        KubeSpawner reads ``user_options`` as profile choices; here they are the
        credits contract, so its profile logic sees none (and applies the default
        profile, if any) and the placement wins over whatever a profile set.
        """
        options = self.user_options
        self.user_options = {}
        try:
            await super().load_user_options()
        finally:
            self.user_options = options
        self._apply_placement()

    def _apply_placement(self) -> None:
        """Set the traits that make the pod; safe to repeat (takes back what it added)."""
        placement = self._credits_placement
        if placement is None:
            return
        catalog = self.credits.catalog
        gpu_resources = {gpu.kubernetes.resource for gpu in catalog.gpu_types.values()
                         if gpu.kubernetes is not None}

        self.image = placement.image

        # GPUs: only what was paid for; limits == requests (extended resources cannot
        # be overcommitted and the API server refuses requests != limits).
        limits = {k: v for k, v in self.extra_resource_limits.items() if k not in gpu_resources}
        requests = {k: v for k, v in self.extra_resource_guarantees.items()
                    if k not in gpu_resources}
        if placement.gpus and placement.resource:
            limits[placement.resource] = requests[placement.resource] = str(placement.gpus)
        self.extra_resource_limits = limits
        self.extra_resource_guarantees = requests

        selector = dict(self.node_selector)
        for key, value in (self._credits_added_selector or {}).items():
            if selector.get(key) == value:
                del selector[key]
        added_selector = {k: v for k, v in placement.node_selector.items() if selector.get(k) != v}
        selector.update(placement.node_selector)
        self.node_selector = selector
        self._credits_added_selector = added_selector

        self.tolerations, self._credits_added_tolerations = _with_tolerations(
            self.tolerations, self._credits_added_tolerations or [], placement.tolerations)

        self.extra_labels = {
            **self.extra_labels,
            SESSION_LABEL: session_label(placement.session_key),
            GPU_TYPE_LABEL: placement.gpu_type,
            GPUS_LABEL: str(placement.gpus),
        }
        self.extra_annotations = {
            **self.extra_annotations,
            SESSION_ANNOTATION: placement.session_key,
            IMAGE_ANNOTATION: placement.image_id,
        }

    async def get_pod_manifest(self):
        pod = await super().get_pod_manifest()
        if self.credits_restart_policy:
            pod.spec.restart_policy = self.credits_restart_policy
        return pod

    def get_env(self):
        env = super().get_env()
        placement = self._credits_placement
        if placement is not None:
            env["JUPYTERHUB_CREDITS_SESSION"] = placement.session_key
            if not placement.gpus:
                # CUDA images set NVIDIA_VISIBLE_DEVICES=all; on a GPU node a pod without
                # a GPU limit would then see every GPU. A CPU session uses none it did not pay for.
                env["NVIDIA_VISIBLE_DEVICES"] = "void"
                env["CUDA_VISIBLE_DEVICES"] = ""
        elif self.credits_session_key:
            env["JUPYTERHUB_CREDITS_SESSION"] = self.credits_session_key
        return env

    # --- capacity ------------------------------------------------------------------

    @property
    def _capacity_key(self) -> tuple[str, str]:
        return (self.api.api_client.configuration.host, self.catalog_path)

    async def free_gpus(self):
        if not self.capacity_check:
            return None
        view = await self._gpu_view()
        return None if view is None else self._free(view)

    def gpu_totals(self):
        """GPUs per GPU type on usable nodes, from the last count (for "2 of 8 free")."""
        if not self.capacity_check:
            return None
        view = _views.get(self._capacity_key)
        return None if view is None else dict(view.totals)

    def _free(self, view: GpuView) -> dict[str, int]:
        free = {gpu_type: view.totals.get(gpu_type, 0) - view.used.get(gpu_type, 0)
                for gpu_type in self.credits.catalog.gpu_types}
        # Placements of this hub whose pods the view does not show yet.
        for key, (gpu_type, gpus) in _reservations.get(self._capacity_key, {}).items():
            if session_label(key) not in view.sessions and gpu_type in free:
                free[gpu_type] -= gpus
        return {gpu_type: max(count, 0) for gpu_type, count in free.items()}

    async def _gpu_view(self, *, fresh: bool = False) -> GpuView | None:
        key = self._capacity_key
        view = _views.get(key)
        if not fresh and view is not None and (
                time.monotonic() - view.read_at < self.capacity_cache_seconds):
            return view
        try:
            view = await self._read_gpu_view()
        except Exception as error:  # noqa: BLE001 - capacity unknown, not a failed spawn
            self.log.warning("credits: cannot count free GPUs (%s); capacity is unknown", error)
            return None
        _views[key] = view
        return view

    def _forget_view(self) -> None:
        _views.pop(self._capacity_key, None)

    async def _read_gpu_view(self) -> GpuView:
        catalog = self.credits.catalog
        placed = {gpu_id: gpu.kubernetes for gpu_id, gpu in catalog.gpu_types.items()
                  if gpu.kubernetes is not None}
        nodes = await self._list("list_node")
        not_done = ",".join(f"status.phase!={phase}" for phase in _TERMINATED_PHASES)
        pods = None
        if self.capacity_all_namespaces:
            pods = await self._list("list_pod_for_all_namespaces", field_selector=not_done,
                                    forbidden_ok=True)
        if pods is None:
            pods = await self._list("list_namespaced_pod", namespace=self.namespace,
                                    field_selector=not_done)

        totals = dict.fromkeys(placed, 0)
        node_types: dict[str, list[str]] = {}
        for node in nodes:
            if not _node_usable(node):
                continue
            labels = node["metadata"].get("labels") or {}
            allocatable = (node.get("status") or {}).get("allocatable") or {}
            for gpu_id, spec in placed.items():
                if _matches(labels, spec.node_selector):
                    totals[gpu_id] += _count(allocatable.get(spec.resource, 0))
                    node_types.setdefault(node["metadata"]["name"], []).append(gpu_id)

        used = dict.fromkeys(placed, 0)
        sessions = set()
        for pod in pods:
            if (pod.get("status") or {}).get("phase") in _TERMINATED_PHASES:
                continue
            spec = pod.get("spec") or {}
            labels = pod["metadata"].get("labels") or {}
            node_name = spec.get("nodeName")
            if node_name:
                types = node_types.get(node_name, [])
            else:  # pending: it will take GPUs of whichever type its selector asks for
                selector = spec.get("nodeSelector") or {}
                types = [gpu_id for gpu_id, placement in placed.items()
                         if (placement.node_selector and _matches(selector, placement.node_selector))
                         or labels.get(GPU_TYPE_LABEL) == gpu_id]
            counted = False
            for gpu_id in types:
                gpus = _pod_gpus(pod, placed[gpu_id].resource)
                used[gpu_id] += gpus
                counted = counted or gpus > 0
            if counted and labels.get(SESSION_LABEL):
                sessions.add(labels[SESSION_LABEL])
        return GpuView(totals, used, frozenset(sessions), time.monotonic())

    async def _list(self, method: str, *, forbidden_ok: bool = False, **kwargs) -> list[dict] | None:
        """Items of one list call as plain dicts (no model objects: cheap for big clusters)."""
        response = await getattr(self.api, method)(
            _preload_content=False, _request_timeout=self.k8s_api_request_timeout, **kwargs)
        body = await response.read()
        if response.status == 403 and forbidden_ok:
            self.log.warning("credits: %s is forbidden; counting GPU pods of namespace %s only",
                             method, self.namespace)
            return None
        if not 200 <= response.status < 300:
            raise RuntimeError(f"{method}: {response.status} {response.reason}: {body[:200]!r}")
        return json.loads(body)["items"]

    async def _reserve_gpus(self, session, request) -> None:
        """Re-count afresh and hold the GPUs for this session until its pod shows up.

        Admission may have used a cached count; two spawns admitted on the same
        count are serialised here, and the second sees the first's reservation.
        """
        async with _capacity_lock():
            view = await self._gpu_view(fresh=True)
            if view is not None:
                free = self._free(view).get(request.gpu_type, 0)
                if free < request.gpus:
                    raise refuse(self._capacity_message(request, free), "capacity")
            _reservations.setdefault(self._capacity_key, {})[session.key] = (
                request.gpu_type, request.gpus)

    def _capacity_message(self, request, free: int) -> str:
        """Admission's own wording for "not enough free GPUs" (quota and balance already passed)."""
        catalog = self.credits.catalog
        decision = admit(request, quotas=effective_quotas(catalog, self._group_names()),
                         running_gpu_sessions=0, free_gpus={request.gpu_type: free},
                         available_units=sys.maxsize)
        if decision.reason == "capacity":
            return decision.message
        return f"{request.gpu_label}: only {free} GPU(s) free right now. Try again later."

    def _drop_reservation(self, session_key: str | None) -> None:
        if session_key and _reservations.get(self._capacity_key, {}).pop(session_key, None):
            self._forget_view()

    async def release_gpus(self, session):
        self._drop_reservation(session.key)
        self._forget_view()

    # --- start: fail fast when the scheduler cannot place the pod ----------------------

    async def _start(self):
        placement = self._credits_placement
        try:
            if not (self.fail_fast_unschedulable and self.events_enabled):
                return await super()._start()
            start = asyncio.ensure_future(super()._start())
            try:
                while True:
                    await asyncio.wait({start}, timeout=self.scheduling_check_interval)
                    if start.done():
                        return start.result()
                    reason = self._unschedulable_reason()
                    if reason is not None:
                        break
            finally:
                if not start.done():
                    start.cancel()
                    await asyncio.gather(start, return_exceptions=True)
            message = self._unschedulable_message(reason)
            self.log.info("credits: %s cannot be scheduled: %s", self._log_name, reason)
            await self._delete_pod()
            raise refuse(message, "capacity")
        finally:
            # The pod is running (and so counted from the API) or gone: either way
            # the reservation has done its job, and the last count is out of date.
            if placement is not None:
                self._drop_reservation(placement.session_key)
            self._forget_view()

    def _unschedulable_reason(self) -> str | None:
        """The message of a FailedScheduling event for want of GPUs or a matching node."""
        reflector = self.pod_reflector
        pod = reflector.pods.get(f"{self.namespace}/{self.pod_name}") if reflector else None
        uid = (pod or {}).get("metadata", {}).get("uid")
        if not uid:  # not created yet: older events with this pod name are not ours
            return None
        placement = self._credits_placement
        resource = placement.resource if placement and placement.gpus else None
        for event in reversed(self.events):
            if event.get("reason") != "FailedScheduling":
                continue
            if (event.get("involvedObject") or {}).get("uid") != uid:
                continue
            message = event.get("message") or ""
            if (resource and f"Insufficient {resource}" in message) \
                    or "node affinity/selector" in message or "match node selector" in message:
                return message
        return None

    def _unschedulable_message(self, reason: str) -> str:
        detail = reason.split(" preemption:")[0].strip().rstrip(".")
        placement = self._credits_placement
        if placement is not None and placement.gpus == 1:
            what = f"No {placement.gpu_label} GPU is free right now"
        elif placement is not None and placement.gpus:
            what = f"No node has {placement.gpus} {placement.gpu_label} GPUs free right now"
        else:
            what = "No node can run this server right now"
        return f"{what}: {detail}. Nothing was charged."

    async def _delete_pod(self) -> None:
        """Delete the pod of a failed start (KubeSpawner's stop; not a hub stop)."""
        try:
            await super(CreditsSpawner, self).stop(now=True)
        except Exception:
            self.log.exception("credits: deleting the unschedulable pod of %s failed",
                               self._log_name)

    def clear_state(self):
        super().clear_state()
        self._credits_placement = None


def _with_tolerations(current, added_before: list, wanted: tuple[dict, ...]):
    """``current`` (a list, or a dict of name → toleration) without what credits added
    before, plus ``wanted`` where not already there; returns (value, what was added)."""
    if isinstance(current, Mapping):
        kept = {k: v for k, v in current.items() if k not in added_before}
        added = []
        for index, toleration in enumerate(wanted):
            if toleration not in kept.values():
                name = f"jupyterhub-credits-{index}"
                kept[name] = copy.deepcopy(toleration)
                added.append(name)
        return kept, added
    kept = list(current or [])
    for toleration in added_before:
        if toleration in kept:
            kept.remove(toleration)
    added = []
    for toleration in wanted:
        if toleration not in kept:
            kept.append(copy.deepcopy(toleration))
            added.append(copy.deepcopy(toleration))
    return kept, added


__all__ = ["GPUS_LABEL", "GPU_TYPE_LABEL", "SESSION_LABEL", "CreditsKubeSpawner", "KubePlacement"]
