"""Tests of the Kubernetes test harness itself, driven by a plain ``kubespawner.KubeSpawner``.

They pin down that the emulator is faithful enough for spawner tests: KubeSpawner's real
client, reflectors and lifecycle run against it unchanged, and whatever a real API server
would refuse is refused here too.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator, Awaitable
from typing import Any

import aiohttp
import pytest
import pytest_asyncio
from jupyterhub.objects import Hub
from kubernetes_asyncio.client import ApiException
from kubespawner import KubeSpawner
from traitlets.config import Config

from tests.kube.emulator import (
    GPU_PRODUCT_LABEL,
    KubeEmulator,
    MockUser,
    kubespawner_pointed_at,
)
from tests.kube.validation import (
    ManifestInvalid,
    manifest_problems,
    parse_quantity,
    pod_to_dict,
    validate_manifest,
)
from tests.waiting import wait_for_async

# A fresh event loop per test, whatever the project-wide pytest-asyncio defaults are: KubeSpawner
# caches API clients per loop, and a new loop guarantees nothing leaks between tests.
on_fresh_loop = pytest.mark.asyncio(loop_scope="function")

NAMESPACE = "jhub"
ONE_GPU = {"nvidia.com/gpu": "1"}


@pytest_asyncio.fixture(loop_scope="function")
async def kube():
    async with KubeEmulator() as emulator, kubespawner_pointed_at(emulator):
        yield emulator
    assert emulator.kubelet.errors == []


def make_spawner(user: str = "alice", **traits: Any) -> KubeSpawner:
    """A KubeSpawner as the hub would build it, with test-sized timeouts."""
    config = Config()
    config.KubeSpawner.namespace = NAMESPACE
    config.KubeSpawner.image = "quay.io/jupyter/base-notebook:2025-06-02"
    config.KubeSpawner.cmd = ["jupyterhub-singleuser"]
    config.KubeSpawner.start_timeout = 10
    config.KubeSpawner.k8s_api_request_timeout = 3
    config.KubeSpawner.k8s_api_request_retry_timeout = 5
    return KubeSpawner(
        hub=Hub(),
        user=MockUser(name=user),
        config=config,
        api_token="abc123",
        oauth_client_id="unused",
        **traits,
    )


@contextlib.asynccontextmanager
async def in_background(work: Awaitable) -> AsyncIterator[asyncio.Future]:
    """Run ``work`` (e.g. ``spawner.start()``) as a task; cancel it if the block exits first."""
    task = asyncio.ensure_future(work)
    try:
        yield task
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


def reflected_pod(spawner: KubeSpawner) -> dict | None:
    reflector = spawner.pod_reflector  # None until start() has started it
    return reflector.pods.get(f"{spawner.namespace}/{spawner.pod_name}") if reflector else None


def events_with_reason(spawner: KubeSpawner, reason: str) -> list[dict]:
    return [e for e in spawner.events if e["reason"] == reason]


# --------------------------------------------------------------------------- lifecycle


@on_fresh_loop
async def test_start_poll_stop_round_trip(kube: KubeEmulator):
    spawner = make_spawner(extra_resource_limits=ONE_GPU)
    assert await spawner.poll() == 1, "no pod yet: not running"

    url = await spawner.start()

    pod = kube.pod(spawner.pod_name, NAMESPACE)
    assert pod["status"]["phase"] == "Running"
    assert url == f"http://{pod['status']['podIP']}:8888"
    assert await spawner.poll() is None

    # the pod KubeSpawner sent passed strict validation; the server defaulted requests from limits
    (created,) = [c for c in kube.created if c.kind == "Pod"]
    validate_manifest(created.object)
    assert kube.rejected == []
    notebook = pod["spec"]["containers"][0]
    assert notebook["resources"]["limits"]["nvidia.com/gpu"] == "1"
    assert notebook["resources"]["requests"]["nvidia.com/gpu"] == "1"

    # kubelet events reach the spawner through its event reflector
    await wait_for_async(lambda: events_with_reason(spawner, "Started"))

    await spawner.stop()
    assert kube.pods(NAMESPACE) == []
    assert await spawner.poll() == 1
    reasons = [e["reason"] for e in kube.events(NAMESPACE, spawner.pod_name)]
    assert reasons == ["Scheduled", "Pulled", "Created", "Started", "Killing"]
    # kubernetes_asyncio's watch sends the Python spelling
    assert any("watch=True" in r.query for r in kube.requests)


@on_fresh_loop
async def test_invalid_pod_is_rejected_with_422_and_start_fails(kube: KubeEmulator):
    def typo_in_resources(spawner, pod):
        # a dict-valued typo: a real cluster would silently drop "limts" and run without a GPU limit
        pod.spec.containers[0].resources = {"limts": ONE_GPU}
        return pod

    spawner = make_spawner(modify_pod_hook=typo_in_resources)
    with pytest.raises(ApiException) as raised:
        await spawner.start()

    assert raised.value.status == 422
    status = json.loads(raised.value.body)
    assert status["kind"] == "Status" and status["reason"] == "Invalid"
    assert [c["field"] for c in status["details"]["causes"]] == ["spec.containers[0].resources.limts"]
    assert kube.pods(NAMESPACE) == []
    (rejected,) = kube.rejected
    assert (rejected.verb, rejected.kind, rejected.name) == ("create", "Pod", spawner.pod_name)


@pytest.mark.parametrize(
    ("restart_policy", "exit_code", "reason", "expected_poll"),
    [
        # OnFailure (KubeSpawner's default) restarts a failed container: CrashLoopBackOff, and
        # KubeSpawner.poll() keeps answering "running" -- the pod keeps its GPU.
        ("OnFailure", 1, "Error", None),
        ("OnFailure", 0, "Completed", 0),
        ("Never", 137, "OOMKilled", 137),
    ],
)
@on_fresh_loop
async def test_crash_as_seen_by_poll(kube: KubeEmulator, restart_policy, exit_code, reason, expected_poll):
    spawner = make_spawner(extra_pod_config={"restartPolicy": restart_policy})
    await spawner.start()

    kube.crash(spawner.pod_name, namespace=NAMESPACE, exit_code=exit_code, reason=reason)

    def container_state() -> dict:
        pod = reflected_pod(spawner)
        return pod["status"]["containerStatuses"][0]["state"] if pod else {}

    if expected_poll is None:
        await wait_for_async(lambda: "waiting" in container_state())
        assert container_state()["waiting"]["reason"] == "CrashLoopBackOff"
        assert (
            reflected_pod(spawner)["status"]["containerStatuses"][0]["lastState"]["terminated"]["exitCode"] == exit_code
        )
        assert await spawner.poll() is None
        await spawner.stop(now=True)
    else:
        await wait_for_async(lambda: "terminated" in container_state())
        assert await spawner.poll() == expected_poll
        # delete_stopped_pods (default True): poll() itself deleted the pod
        assert kube.pods(NAMESPACE) == []


# --------------------------------------------------------------------------- scheduling


@on_fresh_loop
async def test_failed_scheduling_event_reaches_event_reflector(kube: KubeEmulator):
    kube.fail_scheduling()  # default message: "0/1 nodes are available: 1 Insufficient nvidia.com/gpu. ..."
    spawner = make_spawner(extra_resource_limits=ONE_GPU)
    async with in_background(spawner.start()) as start:
        (event,) = await wait_for_async(lambda: events_with_reason(spawner, "FailedScheduling"))
        assert event["type"] == "Warning"
        assert event["message"].startswith("0/1 nodes are available: 1 Insufficient nvidia.com/gpu.")
        assert event["lastTimestamp"] is None and event["eventTime"], "scheduler events carry eventTime only"
        assert not start.done()
        assert await spawner.poll() is None, "a Pending pod counts as running for the hub"

        progress = spawner.progress()
        update = await progress.__anext__()
        await progress.aclose()
        assert "Insufficient nvidia.com/gpu" in update["message"]
        assert update["raw_event"]["reason"] == "FailedScheduling"
    await spawner.stop(now=True)
    assert kube.pods(NAMESPACE) == []


@on_fresh_loop
async def test_scheduler_counts_node_gpus(kube: KubeEmulator):
    kube.add_node("gpu-node-1", "NVIDIA-A100-SXM4-80GB", gpus=1)
    on_a100 = {
        "node_selector": {GPU_PRODUCT_LABEL: "NVIDIA-A100-SXM4-80GB"},
        "extra_resource_limits": ONE_GPU,
    }
    alice = make_spawner("alice", **on_a100)
    bob = make_spawner("bob", **on_a100)

    await alice.start()
    assert kube.pod(alice.pod_name, NAMESPACE)["spec"]["nodeName"] == "gpu-node-1"

    async with in_background(bob.start()) as bob_start:
        (event,) = await wait_for_async(lambda: events_with_reason(bob, "FailedScheduling"))
        assert event["message"] == (
            "0/1 nodes are available: 1 Insufficient nvidia.com/gpu. "
            "preemption: 0/1 nodes are available: 1 No preemption victims found for incoming pod."
        )
        await alice.stop()  # frees the GPU: the scheduler retries bob's pod
        await asyncio.wait_for(bob_start, 10)
    assert kube.pod(bob.pod_name, NAMESPACE)["spec"]["nodeName"] == "gpu-node-1"
    await bob.stop()


@on_fresh_loop
async def test_node_selector_mismatch_is_reported(kube: KubeEmulator):
    kube.add_node("cpu-node-1")
    kube.add_node("gpu-node-1", "NVIDIA-L4", gpus=2)
    spawner = make_spawner(node_selector={GPU_PRODUCT_LABEL: "NVIDIA-H100-80GB-HBM3"}, extra_resource_limits=ONE_GPU)
    async with in_background(spawner.start()):
        (event,) = await wait_for_async(lambda: events_with_reason(spawner, "FailedScheduling"))
        assert event["message"].startswith(
            "0/2 nodes are available: 1 Insufficient nvidia.com/gpu, "
            "2 node(s) didn't match Pod's node affinity/selector."
        )
    await spawner.stop(now=True)


@on_fresh_loop
async def test_hold_pending_then_release(kube: KubeEmulator):
    kube.hold_pending()
    spawner = make_spawner()
    async with in_background(spawner.start()) as start:
        await wait_for_async(lambda: reflected_pod(spawner))
        assert reflected_pod(spawner)["status"]["phase"] == "Pending"
        assert await spawner.poll() is None
        assert not start.done()

        kube.release()
        url = await asyncio.wait_for(start, 10)
    assert url.startswith("http://127.244.0.")
    await spawner.stop()


# --------------------------------------------------------------------------- API surface


@on_fresh_loop
async def test_watch_flag_spellings_and_status_codes(kube: KubeEmulator):
    kube.add_node("gpu-node-1", "NVIDIA-A100-SXM4-80GB", gpus=4)
    pods_url = f"{kube.url}/api/v1/namespaces/{NAMESPACE}/pods"
    pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "probe", "labels": {"component": "singleuser-server"}},
        "spec": {"containers": [{"name": "notebook", "image": "busybox:1.36"}]},
    }
    async with aiohttp.ClientSession() as http:
        async with http.post(pods_url, json=pod) as response:
            assert response.status == 201
            created = await response.json()
        assert created["metadata"]["uid"] and created["metadata"]["creationTimestamp"]
        async with http.post(pods_url, json=pod) as response:
            assert response.status == 409 and (await response.json())["reason"] == "AlreadyExists"

        for flag in ("true", "True"):
            query = {"watch": flag, "labelSelector": "component=singleuser-server", "timeoutSeconds": "5"}
            async with http.get(pods_url, params=query) as response:
                first = json.loads(await response.content.readline())
            assert (first["type"], first["object"]["metadata"]["name"]) == ("ADDED", "probe")

        async with http.get(pods_url, params={"fieldSelector": "spec.containers=x"}) as response:
            assert response.status == 400
        async with http.get(f"{pods_url}/missing") as response:
            assert response.status == 404 and (await response.json())["kind"] == "Status"
        async with http.get(f"{kube.url}/api/v1/nodes") as response:
            (node,) = (await response.json())["items"]
    assert node["status"]["allocatable"]["nvidia.com/gpu"] == "4"
    assert node["metadata"]["labels"][GPU_PRODUCT_LABEL] == "NVIDIA-A100-SXM4-80GB"


@on_fresh_loop
async def test_watch_resumes_from_resource_version(kube: KubeEmulator):
    pods_url = f"{kube.url}/api/v1/namespaces/{NAMESPACE}/pods"
    pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "probe", "labels": {"component": "singleuser-server"}},
        "spec": {"containers": [{"name": "notebook", "image": "busybox:1.36"}]},
    }
    async with aiohttp.ClientSession() as http:
        async with http.post(pods_url, json=pod) as response:
            assert response.status == 201
        await wait_for_async(lambda: kube.pod("probe")["status"]["phase"] == "Running",
                             what="the pod to run")
        async with http.get(pods_url, params={"labelSelector": "component=singleuser-server"}) as response:
            listed_at = (await response.json())["metadata"]["resourceVersion"]

        relabel = {"metadata": {"labels": {"component": "something-else"}}}
        headers = {"Content-Type": "application/merge-patch+json"}
        async with http.patch(f"{pods_url}/probe", json=relabel, headers=headers) as response:
            assert response.status == 200

        query = {
            "watch": "1",
            "labelSelector": "component=singleuser-server",
            "resourceVersion": listed_at,
            "timeoutSeconds": "1",
        }
        async with http.get(pods_url, params=query) as response:
            lines = [json.loads(line) async for line in response.content]  # ends after timeoutSeconds
    # the pod left the selector after the list: a resumed watch reports it gone
    assert [(e["type"], e["object"]["metadata"]["labels"]["component"]) for e in lines] == [
        ("DELETED", "something-else")
    ]


# --------------------------------------------------------------------------- validation


@on_fresh_loop
async def test_kubespawner_gpu_manifest_validates(kube: KubeEmulator):
    spawner = make_spawner(extra_resource_limits=ONE_GPU, cpu_limit=4, mem_limit="16G", mem_guarantee="8G")
    manifest = pod_to_dict(await spawner.get_pod_manifest())

    def values(obj):
        children = obj.values() if isinstance(obj, dict) else obj if isinstance(obj, list) else ()
        yield obj
        for child in children:
            yield from values(child)

    assert None not in values(manifest), "the client omits unset fields"
    assert "apiVersion" in manifest and "api_version" not in manifest, "camelCase, as sent"
    validate_manifest(manifest)


def test_validation_reports_every_problem_schemas_miss():
    pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "Jupyter_Alice", "labels": {"hub.jupyter.org/username": "alice@example.org"}},
        "spec": {
            "restartPolicy": "Sometimes",
            "containers": [
                {
                    "name": "notebook",
                    "image": "x:1",
                    "bogus": True,
                    "resources": {
                        "requests": {"nvidia.com/gpu": "1", "cpu": "4", "memory": "1GB"},
                        "limits": {"nvidia.com/gpu": "2", "cpu": "2"},
                    },
                },
                {"name": "sidecar", "image": "x:1", "resources": {"requests": {"nvidia.com/gpu": "0.5"}}},
                {"name": "notebook", "image": "x:1", "resources": {"requests": {"example.com/fpga": "1"}}},
            ],
        },
    }
    with pytest.raises(ManifestInvalid) as raised:
        validate_manifest(pod)
    fields = sorted(p.field for p in raised.value.problems)
    assert fields == sorted(
        [
            "spec.containers[0].bogus",
            "metadata.name",
            "metadata.labels[hub.jupyter.org/username]",
            "spec.restartPolicy",
            "spec.containers[0].resources.requests[memory]",
            "spec.containers[0].resources.requests[nvidia.com/gpu]",
            "spec.containers[0].resources.requests[cpu]",
            "spec.containers[1].resources.requests[nvidia.com/gpu]",
            "spec.containers[2].name",
            "spec.containers[2].resources.limits[example.com/fpga]",
        ]
    )
    assert "must be equal to nvidia.com/gpu limit of 2" in str(raised.value)


def test_quantities_parse_like_kubernetes():
    assert parse_quantity("500m") == parse_quantity("0.5")
    assert parse_quantity("1Gi") == 2**30
    assert parse_quantity("1e3") == parse_quantity("1k") == 1000
    assert parse_quantity(2) == 2
    for bad in ("1GB", "1 ", "", "Gi", "1.2.3", True):
        with pytest.raises(ValueError):
            parse_quantity(bad)
    node = {
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {"name": "n1"},
        "status": {"allocatable": {"nvidia.com/gpu": "two"}},
    }
    assert [p.field for p in manifest_problems(node)] == ["status.allocatable[nvidia.com/gpu]"]
