"""CreditsKubeSpawner against the in-process Kubernetes emulator, with a real ledger.

Every pod the catalog can produce is validated strictly; the lifecycle (hold → pod →
HTTP ready → billing → stop → settlement), crashes, FailedScheduling and capacity run
through KubeSpawner's real client, reflectors and the emulator's scheduler/kubelet.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any
from unittest import mock
from urllib.parse import urlparse

import aiohttp
import pytest
import pytest_asyncio
from aiohttp import web
from jupyterhub.objects import Hub, Server
from jupyterhub.spawner import SpawnException
from sqlalchemy import delete
from traitlets.config import Config

from jupyterhub_credits.catalog import (
    CPU_ONLY,
    cost_of_seconds,
    load_catalog,
    validate_request,
)
from jupyterhub_credits.ledger.verify import verify
from jupyterhub_credits.sessions.schema import gpu_assignments, session_holds, sessions
from jupyterhub_credits.spawner import CreditsKubeSpawner
from jupyterhub_credits.spawner.context import reset_contexts, shared_context
from jupyterhub_credits.spawner.kube import (
    GPU_TYPE_LABEL,
    GPUS_LABEL,
    SESSION_LABEL,
    session_label,
)
from tests.kube.emulator import KubeEmulator, MockUser, kubespawner_pointed_at
from tests.kube.validation import pod_to_dict, validate_manifest
from tests.waiting import wait_for_async

on_fresh_loop = pytest.mark.asyncio(loop_scope="function")

CATALOG = str(Path(__file__).resolve().parents[1] / "config" / "catalog.yaml")
NAMESPACE = "jhub"
GPU = "nvidia.com/gpu"
GPU_NODE_LABEL = "jupyterhub-credits/gpu-type"  # the catalog's node_selector key
GPU_TAINT = {"key": GPU, "value": "present", "effect": "NoSchedule"}
CREDIT = 1000  # units


# --------------------------------------------------------------------------- fixtures


@pytest_asyncio.fixture(loop_scope="function")
async def kube():
    async with KubeEmulator() as emulator, kubespawner_pointed_at(emulator):
        yield emulator
    assert emulator.kubelet.errors == []
    assert emulator.rejected == [], "every object the spawner sent must validate"


def _credits_context(url: str, clock):
    context = shared_context(url, CATALOG)
    context.test_url = url  # what spawners must be configured with to share this context
    context.ledger.clock = clock  # the ledger (and the session store) run on the test's clock
    with context.ledger.engine.begin() as conn:  # PostgreSQL is shared by the whole run
        for table in (gpu_assignments, session_holds, sessions):
            conn.execute(delete(table))
    return context


@pytest.fixture
def credits(db_url, clock):
    """The shared credits context on each backend (SQLite and PostgreSQL)."""
    reset_contexts()
    yield _credits_context(db_url, clock)
    reset_contexts()


@pytest.fixture
def sqlite_credits(tmp_path, clock):
    """The shared credits context on SQLite only (for tests about Kubernetes, not the DB)."""
    reset_contexts()
    yield _credits_context(f"sqlite:///{tmp_path / 'ledger.sqlite'}", clock)
    reset_contexts()


def make_spawner(context, user: str = "alice", **traits: Any) -> CreditsKubeSpawner:
    """A CreditsKubeSpawner as the hub builds it, pointed at ``context``'s database."""
    config = Config()
    config.KubeSpawner.namespace = NAMESPACE
    config.KubeSpawner.cmd = ["jupyterhub-singleuser"]
    config.KubeSpawner.start_timeout = 30
    config.KubeSpawner.http_timeout = 10
    config.KubeSpawner.k8s_api_request_timeout = 3
    config.KubeSpawner.k8s_api_request_retry_timeout = 5
    config.CreditsSpawner.credits_db_url = context.test_url
    config.CreditsSpawner.catalog_path = CATALOG
    config.CreditsKubeSpawner.scheduling_check_interval = 0.05
    # db: the hub's (deprecated) shared session, which KubeSpawner.poll commits to when it
    # finds the pod's URL differs from the server record (as it does while starting).
    spawner = CreditsKubeSpawner(hub=Hub(), user=MockUser(name=user, groups=[]), config=config,
                                 api_token="abc123", oauth_client_id="unused", db=mock.Mock(),
                                 **traits)
    assert spawner.credits is context
    return spawner


def grant(context, user: str, credits: int) -> None:
    context.ledger.grant(f"user:{user}", credits * CREDIT, key=f"test-grant-{user}",
                         reason="test", actor="admin:test")


def balance(context, user: str):
    return context.ledger.balance(f"user:{user}")


def session_of(context, spawner):
    return context.sessions.get(spawner.credits_session_key)


def add_gpu_node(kube: KubeEmulator, name: str, gpu_type: str, gpus: int, **kwargs) -> dict:
    return kube.add_node(name, gpu_type, gpus=gpus, gpu_label_key=GPU_NODE_LABEL,
                         taints=[GPU_TAINT], **kwargs)


async def hub_start(spawner, **options) -> str:
    """What ``User.spawn`` does around ``start``: a server record, then the URL it returns."""
    spawner.user_options = options
    spawner.server = Server(base_url=f"/user/{spawner.user.name}/")
    url = await spawner.start()
    spawner.server.ip, spawner.server.port = urlparse(url).hostname, urlparse(url).port
    return url


async def hub_stop(spawner) -> None:
    """What ``User.stop`` does: stop only what poll says runs, post-stop hook, clear state."""
    if await spawner.poll() is None:
        await spawner.stop()
    await spawner.run_post_stop_hook()
    spawner.clear_state()


def the_pod(kube: KubeEmulator, spawner) -> dict:
    return kube.pod(spawner.pod_name, NAMESPACE)


def pod_running(kube: KubeEmulator, spawner) -> dict | None:
    pods = [p for p in kube.pods(NAMESPACE) if p["metadata"]["name"] == spawner.pod_name]
    return pods[0] if pods and pods[0]["status"].get("podIP") else None


@contextlib.asynccontextmanager
async def notebook_server(ip: str, user: str, port: int = 8888):
    """Play the single-user server on the pod's (loopback) IP: 200 on its /api only."""
    paths: list[str] = []

    async def handle(request: web.Request) -> web.Response:
        paths.append(request.path)
        if request.path == f"/user/{user}/api":
            return web.json_response({"version": "2.0.0"})
        return web.Response(status=404)

    app = web.Application()
    app.router.add_get("/{tail:.*}", handle)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, ip, port).start()
    try:
        yield paths
    finally:
        await runner.cleanup()


@contextlib.asynccontextmanager
async def in_background(work):
    task = asyncio.ensure_future(work)
    try:
        yield task
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


# --------------------------------------------------------------------------- manifests


def _every_request(catalog):
    for image_id, image in catalog.images.items():
        yield {"image": image_id, "gpu_type": CPU_ONLY, "gpus": 0, "hours": "1"}
        for gpu_type in image.gpu_types:
            for gpus in range(1, catalog.quotas.max_gpus_per_session + 1):
                yield {"image": image_id, "gpu_type": gpu_type, "gpus": gpus, "hours": "1"}


@on_fresh_loop
async def test_every_catalog_pod_validates_and_survives_profile_overrides(kube, sqlite_credits):
    catalog = load_catalog(CATALOG)
    operator_toleration = {"key": "dedicated", "operator": "Equal", "value": "jupyter",
                           "effect": "NoSchedule"}
    spawner = make_spawner(
        sqlite_credits,
        capacity_check=False,
        node_selector={"pool": "users"},
        tolerations=[operator_toleration],
        cpu_limit=4.0, mem_limit="16G", mem_guarantee="8G",
        # A z2jh-style profile list: its default profile tries to set the image and GPUs,
        # and it has an option named like a credits key ("image"): neither may win.
        profile_list=[{
            "display_name": "Default", "slug": "default", "default": True,
            "kubespawner_override": {
                "image": "quay.io/jupyter/base-notebook:latest",
                "extra_resource_limits": {GPU: "7"},
                "node_selector": {"zone": "a"},
                "extra_labels": {"profile": "default"},
            },
            "profile_options": {"image": {"display_name": "Image", "choices": {
                "plain": {"display_name": "Plain", "kubespawner_override": {
                    "image": "quay.io/jupyter/minimal-notebook:latest"}}}}},
        }],
    )
    checked = 0
    for options in _every_request(catalog):
        request = validate_request(catalog, options)
        session = SimpleNamespace(key=f"session:{checked:032x}", id=checked)
        spawner.user_options = options
        await spawner.place_on_gpus(session, request)
        await spawner.load_user_options()  # as KubeSpawner._start does, after placement
        pod = pod_to_dict(await spawner.get_pod_manifest())
        validate_manifest(pod)

        image = catalog.images[request.image].image
        (container,) = pod["spec"]["containers"]
        resources = container["resources"]
        assert container["image"] == image, options
        assert pod["spec"]["restartPolicy"] == "Never"
        labels, annotations = pod["metadata"]["labels"], pod["metadata"]["annotations"]
        assert labels[SESSION_LABEL] == session_label(session.key)
        assert labels[GPU_TYPE_LABEL] == request.gpu_type and labels[GPUS_LABEL] == str(request.gpus)
        assert labels["profile"] == "default", "profile overrides still apply to the rest"
        assert annotations["jupyterhub-credits/session-key"] == session.key
        assert resources["limits"]["cpu"] == 4.0 and resources["requests"]["memory"] == 8 * 2**30
        env = {e["name"]: e.get("value") for e in container["env"]}
        assert env["JUPYTERHUB_CREDITS_SESSION"] == session.key
        if request.uses_gpus:
            placement = catalog.gpu_types[request.gpu_type].kubernetes
            assert resources["limits"][placement.resource] == str(request.gpus)
            assert resources["requests"][placement.resource] == str(request.gpus), "requests == limits"
            assert pod["spec"]["nodeSelector"] == {"pool": "users", "zone": "a",
                                                   **placement.node_selector}
            assert pod["spec"]["tolerations"] == [operator_toleration,
                                                  *map(dict, placement.tolerations)]
            assert "NVIDIA_VISIBLE_DEVICES" not in env, "the device plugin sets it"
        else:
            assert GPU not in resources.get("limits", {}) and GPU not in resources.get("requests", {})
            assert pod["spec"]["nodeSelector"] == {"pool": "users", "zone": "a"}
            assert pod["spec"]["tolerations"] == [operator_toleration]
            assert env["NVIDIA_VISIBLE_DEVICES"] == "void" and env["CUDA_VISIBLE_DEVICES"] == ""
        checked += 1
    # 4 images (one CPU-only), 3 of them on 3 GPU types × 1..3 GPUs
    assert checked == 4 + 3 * 3 * 3


# --------------------------------------------------------------------------- lifecycle


@on_fresh_loop
async def test_spawn_bills_from_http_ready_and_settles_on_stop(kube, credits, clock):
    add_gpu_node(kube, "a100-node-1", "a100", gpus=4)
    grant(credits, "alice", 100)
    spawner = make_spawner(credits)
    options = {"image": "tf-2.21", "gpu_type": "a100", "gpus": 2, "hours": "1"}
    hold = 2 * 15 * CREDIT  # 2 A100s × 15 credits/GPU-hour × 1 hour

    async with in_background(hub_start(spawner, **options)) as start:
        pod = await wait_for_async(lambda: pod_running(kube, spawner), what="the pod to run")
        # The pod runs, but the notebook server does not answer yet: held, not billed.
        assert balance(credits, "alice").reserved == hold
        assert balance(credits, "alice").total == 100 * CREDIT
        session = session_of(credits, spawner)
        assert (session.state, session.ready_at, session.gpus) == ("starting", None, 2)
        assert not start.done()

        async with notebook_server(pod["status"]["podIP"], "alice") as paths:
            url = await asyncio.wait_for(start, 10)
            assert "/user/alice/api" in paths
    assert url == f"http://{pod['status']['podIP']}:8888"

    session = session_of(credits, spawner)
    assert session.state == "running" and session.ready_at == clock.now
    pod = the_pod(kube, spawner)
    assert pod["spec"]["nodeName"] == "a100-node-1"
    assert pod["spec"]["nodeSelector"] == {GPU_NODE_LABEL: "a100"}
    (container,) = pod["spec"]["containers"]
    assert container["image"] == "ghcr.io/jupyterhub-credits/tensorflow:2.21-cuda12.5"
    assert container["resources"]["limits"][GPU] == container["resources"]["requests"][GPU] == "2"
    assert pod["metadata"]["labels"][SESSION_LABEL] == session_label(session.key)
    assert await spawner.poll() is None
    assert (await spawner.free_gpus())["a100"] == 2

    clock.advance(minutes=20, seconds=7)
    await hub_stop(spawner)

    assert kube.pods(NAMESPACE) == []
    ended = credits.sessions.get(session.key)
    assert (ended.state, ended.end_reason) == ("ended", "stopped")
    expected = cost_of_seconds(session.rate_per_hour, 20 * 60 + 7)
    assert ended.charged == expected == 10_059  # ceil(30 000 units/h × 1207 s / 3600 s)
    after = balance(credits, "alice")
    assert (after.total, after.reserved) == (100 * CREDIT - expected, 0)
    assert verify(credits.ledger.engine).ok
    assert (await spawner.free_gpus())["a100"] == 4


@on_fresh_loop
async def test_crash_is_seen_by_poll_and_settled_to_the_last_tick(kube, sqlite_credits, clock):
    credits = sqlite_credits
    add_gpu_node(kube, "a100-node-1", "a100", gpus=1)
    grant(credits, "alice", 100)
    spawner = make_spawner(credits, credits_ready_check=False)
    await hub_start(spawner, image="tf-2.19", gpu_type="a100", gpus=1, hours="2")
    session = session_of(credits, spawner)
    assert session.state == "running"
    assert the_pod(kube, spawner)["spec"]["restartPolicy"] == "Never"

    clock.advance(minutes=10)
    credits.sessions.record_billing()  # the meter's tick: billed up to now
    kube.crash(spawner.pod_name, namespace=NAMESPACE, exit_code=137, reason="OOMKilled")
    clock.advance(minutes=5)  # the hub notices later; the crashed time is not billed

    async def crashed():
        return await spawner.poll() is not None

    await wait_for_async(crashed)
    assert kube.pods(NAMESPACE) == [], "the crashed pod is deleted: its GPU is free again"
    assert await spawner.poll() == 1
    await hub_stop(spawner)

    ended = credits.sessions.get(session.key)
    assert (ended.state, ended.end_reason) == ("ended", "server_gone")
    assert ended.charged == cost_of_seconds(session.rate_per_hour, 600) == 2500
    after = balance(credits, "alice")
    assert (after.total, after.reserved) == (100 * CREDIT - 2500, 0)
    assert verify(credits.ledger.engine).ok


def refused_event_message(nodes: int) -> str:
    return (f"0/{nodes} nodes are available: {nodes} Insufficient nvidia.com/gpu. preemption: "
            f"0/{nodes} nodes are available: {nodes} No preemption victims found for incoming pod.")


@on_fresh_loop
async def test_failed_scheduling_fails_fast_and_costs_nothing(kube, credits):
    # 3 free A100s in all, one per node: admission and placement see enough GPUs,
    # but no node can take a 2-GPU pod, and the scheduler says so.
    for index in range(3):
        add_gpu_node(kube, f"a100-node-{index}", "a100", gpus=1)
    grant(credits, "alice", 100)
    spawner = make_spawner(credits, credits_ready_check=False)
    spawner.start_timeout = 60

    started = time.monotonic()
    with pytest.raises(SpawnException) as refused:
        await hub_start(spawner, image="tf-2.21", gpu_type="a100", gpus=2, hours="1")
    assert time.monotonic() - started < 5, "well under start_timeout"
    assert refused.value.reason == "capacity" and refused.value.status_code == 503
    assert refused.value.jupyterhub_message == (
        "No node has 2 A100 GPUs free right now: 0/3 nodes are available: "
        "3 Insufficient nvidia.com/gpu. Nothing was charged.")
    assert kube.pods(NAMESPACE) == []
    failed = credits.sessions.get(spawner.credits_session_key)
    assert (failed.state, failed.end_reason, failed.charged) == ("ended", "start_failed", 0)
    assert (balance(credits, "alice").total, balance(credits, "alice").reserved) == (100 * CREDIT, 0)
    assert verify(credits.ledger.engine).ok
    await hub_stop(spawner)  # the hub cleans up after a failed spawn: nothing changes

    # Neither the old FailedScheduling event of this pod name nor a late one about the
    # deleted pod (the scheduler writes events asynchronously) fails the next start.
    kube.hold_pending(spawner.pod_name, NAMESPACE)
    async with in_background(
            hub_start(spawner, image="tf-2.21", gpu_type="a100", gpus=1, hours="1")) as start:
        pod = await wait_for_async(lambda: kube.pods(NAMESPACE) and kube.pods(NAMESPACE)[0],
                                   what="the pod to be created")
        old_pod = {**pod, "metadata": {**pod["metadata"], "uid": "uid-of-the-deleted-pod"}}
        kube.kubelet.record_event(old_pod, "FailedScheduling", refused_event_message(3),
                                  "Warning", component="default-scheduler")
        await wait_for_async(lambda: any(e["involvedObject"]["uid"] == "uid-of-the-deleted-pod"
                                for e in spawner.events))
        await wait_for_async(lambda: spawner.pod_reflector.pods.get(f"{NAMESPACE}/{spawner.pod_name}"))
        assert spawner._unschedulable_reason() is None and not start.done()
        kube.release(spawner.pod_name, NAMESPACE)
        await asyncio.wait_for(start, 10)
    assert session_of(credits, spawner).state == "running"
    await hub_stop(spawner)
    assert balance(credits, "alice").reserved == 0
    assert verify(credits.ledger.engine).ok


@on_fresh_loop
async def test_node_selector_mismatch_names_the_gpu_type(kube, sqlite_credits):
    kube.add_node("t4-node-1", "t4", gpus=4, gpu_label_key=GPU_NODE_LABEL)
    grant(sqlite_credits, "alice", 100)
    # Capacity unknown (an autoscaling cluster): admission lets it through, the scheduler does not.
    spawner = make_spawner(sqlite_credits, capacity_check=False, credits_ready_check=False)
    assert await spawner.free_gpus() is None and spawner.gpu_totals() is None
    with pytest.raises(SpawnException) as refused:
        await hub_start(spawner, image="tf-2.21", gpu_type="h100", gpus=1, hours="1")
    assert refused.value.jupyterhub_message == (
        "No H100 GPU is free right now: 0/1 nodes are available: "
        "1 node(s) didn't match Pod's node affinity/selector. Nothing was charged.")
    assert balance(sqlite_credits, "alice").reserved == 0
    assert kube.pods(NAMESPACE) == []


# --------------------------------------------------------------------------- capacity


async def _create_pod(kube: KubeEmulator, namespace: str, name: str, gpus: int, selector: dict):
    """Another workload's GPU pod, created straight through the API."""
    pod = {
        "apiVersion": "v1", "kind": "Pod", "metadata": {"name": name},
        "spec": {"nodeSelector": selector, "tolerations": [{"operator": "Exists"}],
                 "containers": [{"name": "train", "image": "busybox:1.36",
                                 "resources": {"limits": {GPU: str(gpus)}}}]},
    }
    url = f"{kube.url}/api/v1/namespaces/{namespace}/pods"
    async with aiohttp.ClientSession() as http, http.post(url, json=pod) as response:
        assert response.status == 201, await response.text()


@on_fresh_loop
async def test_capacity_counts_nodes_and_pods_and_refuses_at_admission(kube, sqlite_credits):
    credits = sqlite_credits
    add_gpu_node(kube, "a100-node-1", "a100", gpus=2)
    add_gpu_node(kube, "a100-cordoned", "a100", gpus=8, unschedulable=True)
    add_gpu_node(kube, "t4-node-1", "t4", gpus=4)
    kube.add_node("cpu-node-1")
    for user in ("alice", "bob", "carol"):
        grant(credits, user, 100)
    alice = make_spawner(credits, "alice", credits_ready_check=False)
    assert await alice.free_gpus() == {"t4": 4, "a100": 2, "h100": 0}
    assert alice.gpu_totals() == {"t4": 4, "a100": 2, "h100": 0}
    form = await alice.get_options_form()
    assert "A100 — 15.00 credits / GPU-hour — 2 of 2 free" in form
    assert "H100 — 25.00 credits / GPU-hour — none here" in form

    # Another namespace's pod on the T4 node, and a pending one waiting for a T4, count too.
    await _create_pod(kube, "research", "trainer", 1, {GPU_NODE_LABEL: "t4"})
    await wait_for_async(lambda: kube.pod("trainer", "research")["status"]["phase"] == "Running",
                         what="the pod to run")
    kube.hold_pending("queued", "research")
    await _create_pod(kube, "research", "queued", 2, {GPU_NODE_LABEL: "t4"})
    bob = make_spawner(credits, "bob", credits_ready_check=False)
    assert (await bob.free_gpus())["t4"] == 4, "cached for capacity_cache_seconds"
    bob.capacity_cache_seconds = 0
    assert await bob.free_gpus() == {"t4": 1, "a100": 2, "h100": 0}

    one_a100 = {"image": "tf-2.21", "gpu_type": "a100", "gpus": 1, "hours": "1"}
    await hub_start(alice, **one_a100)
    await hub_start(bob, **one_a100)
    assert {p["spec"]["nodeName"] for p in kube.pods(NAMESPACE)} == {"a100-node-1"}
    assert (await alice.free_gpus())["a100"] == 0

    carol = make_spawner(credits, "carol", credits_ready_check=False)
    with pytest.raises(SpawnException) as refused:
        await hub_start(carol, **one_a100)
    assert refused.value.reason == "capacity"
    assert refused.value.jupyterhub_message == (
        "A100: no GPU is free right now. Try fewer GPUs, another GPU type, or later.")
    assert carol.credits_session_key == "", "refused at admission: no session, no hold"
    assert balance(credits, "carol").reserved == 0 and balance(credits, "carol").total == 100 * CREDIT
    assert len(kube.pods(NAMESPACE)) == 2

    await hub_stop(alice)
    assert (await carol.free_gpus())["a100"] == 1, "a stop frees the GPU at once"
    await hub_stop(bob)
    assert verify(credits.ledger.engine).ok


@on_fresh_loop
async def test_concurrent_spawns_cannot_take_the_same_gpus(kube, sqlite_credits):
    credits = sqlite_credits
    add_gpu_node(kube, "a100-node-1", "a100", gpus=2)
    spawners = []
    for user in ("alice", "bob"):
        grant(credits, user, 100)
        spawners.append(make_spawner(credits, user, credits_ready_check=False))
    assert (await spawners[0].free_gpus())["a100"] == 2  # both are admitted on this count

    two_a100 = {"image": "tf-2.21", "gpu_type": "a100", "gpus": 2, "hours": "1"}
    results = await asyncio.gather(*(hub_start(s, **two_a100) for s in spawners),
                                   return_exceptions=True)
    winners = [s for s, r in zip(spawners, results) if isinstance(r, str)]
    losers = [(s, r) for s, r in zip(spawners, results) if isinstance(r, BaseException)]
    assert len(winners) == 1 and len(losers) == 1, results
    (loser, error), (winner,) = losers[0], winners
    assert isinstance(error, SpawnException) and error.reason == "capacity", error
    assert "A100" in error.jupyterhub_message
    assert credits.sessions.get(loser.credits_session_key).charged == 0
    assert balance(credits, loser.user.name).reserved == 0
    assert [p["metadata"]["name"] for p in kube.pods(NAMESPACE)] == [winner.pod_name]
    # refused when placing (the fresh count saw the winner's reservation), before any pod
    assert [c.name for c in kube.created if c.kind == "Pod"] == [winner.pod_name]
    await hub_stop(winner)
    assert verify(credits.ledger.engine).ok


@on_fresh_loop
async def test_placement_counts_afresh_after_admission_used_a_cached_count(kube, sqlite_credits):
    credits = sqlite_credits
    add_gpu_node(kube, "a100-node-1", "a100", gpus=2)
    grant(credits, "alice", 100)
    spawner = make_spawner(credits, credits_ready_check=False)
    assert (await spawner.free_gpus())["a100"] == 2  # cached: admission will use this count
    await _create_pod(kube, "research", "trainer", 2, {GPU_NODE_LABEL: "a100"})
    await wait_for_async(lambda: kube.pod("trainer", "research")["spec"].get("nodeName"),
                         what="the pod to be placed on a node")

    with pytest.raises(SpawnException) as refused:
        await hub_start(spawner, image="tf-2.21", gpu_type="a100", gpus=1, hours="1")
    assert refused.value.jupyterhub_message == (
        "A100: no GPU is free right now. Try fewer GPUs, another GPU type, or later.")
    assert [c.name for c in kube.created if c.kind == "Pod"] == ["trainer"], "no pod for alice"
    failed = credits.sessions.get(spawner.credits_session_key)
    assert (failed.end_reason, failed.charged) == ("start_failed", 0)
    assert balance(credits, "alice").reserved == 0
    assert verify(credits.ledger.engine).ok


@on_fresh_loop
async def test_placed_gpus_stay_taken_until_the_pod_is_counted(kube, sqlite_credits):
    credits = sqlite_credits
    add_gpu_node(kube, "a100-node-1", "a100", gpus=2)
    for user in ("alice", "bob"):
        grant(credits, user, 100)
    alice = make_spawner(credits, "alice", credits_ready_check=False)
    bob = make_spawner(credits, "bob", credits_ready_check=False)
    two_a100 = {"image": "tf-2.21", "gpu_type": "a100", "gpus": 2, "hours": "1"}

    # Stop alice's start after placement, before KubeSpawner creates her pod.
    placed, go_on = asyncio.Event(), asyncio.Event()
    load_user_options = alice.load_user_options

    async def gated_load_user_options():
        placed.set()
        await go_on.wait()
        await load_user_options()

    alice.load_user_options = gated_load_user_options
    async with in_background(hub_start(alice, **two_a100)) as start:
        await asyncio.wait_for(placed.wait(), 5)
        assert kube.pods(NAMESPACE) == []
        assert (await bob.free_gpus())["a100"] == 0, "alice's GPUs, though no pod shows them yet"
        with pytest.raises(SpawnException) as refused:
            await hub_start(bob, **two_a100)
        assert refused.value.reason == "capacity"
        go_on.set()
        await asyncio.wait_for(start, 10)
    assert (await bob.free_gpus())["a100"] == 0, "now counted from alice's pod"
    await hub_stop(alice)
    assert (await bob.free_gpus())["a100"] == 2


def _answer(status: int, body: bytes = b'{"kind": "Status"}'):
    return mock.AsyncMock(return_value=SimpleNamespace(
        status=status, reason="Forbidden", read=mock.AsyncMock(return_value=body)))


@on_fresh_loop
async def test_capacity_without_cluster_wide_access(kube, sqlite_credits):
    add_gpu_node(kube, "a100-node-1", "a100", gpus=2)
    await _create_pod(kube, "research", "trainer", 1, {GPU_NODE_LABEL: "a100"})
    await wait_for_async(lambda: kube.pod("trainer", "research")["spec"].get("nodeName"),
                         what="the pod to be placed on a node")
    spawner = make_spawner(sqlite_credits, capacity_cache_seconds=0)
    assert (await spawner.free_gpus())["a100"] == 1

    # No ClusterRole for pods: only the hub's namespace is counted (the trainer is not).
    with mock.patch.object(spawner.api, "list_pod_for_all_namespaces", _answer(403)):
        assert (await spawner.free_gpus())["a100"] == 2
    # No access to nodes: capacity is unknown, and admission does not check it.
    with mock.patch.object(spawner.api, "list_node", _answer(403)):
        assert await spawner.free_gpus() is None
