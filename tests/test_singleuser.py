"""The single-user side: reporter, GPU summaries and UUID mapping, the server extension."""

from __future__ import annotations

import asyncio
import json
import os
import re
import subprocess
import sys
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path
from types import SimpleNamespace
from urllib.parse import unquote

import pytest
import requests

from jupyterhub_credits.singleuser import gpu, runs, stopping, tensorboard
from jupyterhub_credits.singleuser.extension import (
    ActivityCounter,
    CreditsState,
    _scrub,
)
from jupyterhub_credits.singleuser.reporter import (
    STATE_PREFIX,
    EventReporter,
    _host_tag,
    service_api_url,
)
from jupyterhub_credits.singleuser.status import (
    BACKOFF_SPREAD,
    ServiceError,
    ServiceStatus,
    spread,
    tensorboard_run_url,
)
from tests.fake_credits import TOKEN, FakeCreditsService
from tests.jupyter_process import JupyterProcess, hub_environment
from tests.waiting import wait_for

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def service():
    with FakeCreditsService() as fake:
        yield fake


def make_reporter(service, tmp_path, **kwargs) -> EventReporter:
    kwargs.setdefault("state_path", tmp_path / "state.json")
    kwargs.setdefault("backoff_base", 0.01)
    kwargs.setdefault("backoff_max", 0.05)
    kwargs.setdefault("flush_interval", 60)
    return EventReporter(service.api_url, TOKEN, **kwargs)


def dead_pid() -> int:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


# -- service URL ---------------------------------------------------------------------------

def test_service_url_from_hub_api_url_or_override():
    assert service_api_url({"JUPYTERHUB_API_URL": "http://127.0.0.1:8081/hub/api"}) == \
        "http://127.0.0.1:8081/services/credits/api"
    assert service_api_url({"JUPYTERHUB_API_URL": "http://hub:8081/prefix/hub/api/"}) == \
        "http://hub:8081/prefix/services/credits/api"
    explicit = "http://credits:10101/services/credits/api"
    assert service_api_url({"JUPYTERHUB_API_URL": "http://hub:8081/hub/api",
                            "JUPYTERHUB_CREDITS_API_URL": explicit + "/"}) == explicit
    assert service_api_url({"JUPYTERHUB_API_URL": "http://hub/elsewhere"}) is None
    assert service_api_url({}) is None
    assert EventReporter.from_env({"JUPYTERHUB_API_URL": "http://h:8081/hub/api"}) is None


# -- reporter --------------------------------------------------------------------------------

def test_batches_with_the_server_token_and_nothing_left_on_disk(service, tmp_path):
    reporter = make_reporter(service, tmp_path, batch_size=3)
    keys = [reporter.send("notebook_activity", {"active_minutes": i}) for i in range(7)]
    assert reporter.flush(timeout=10)
    posts = service.event_posts()
    assert [len(p["events"]) for p in posts] == [3, 3, 1]
    assert all(p["authorization"] == f"token {TOKEN}" for p in posts)
    assert all(p["path"] == "/services/credits/api/events" for p in posts)
    assert [e["key"] for p in posts for e in p["events"]] == keys
    event = posts[0]["events"][0]
    assert set(event) == {"kind", "key", "time", "payload"}
    assert datetime.fromisoformat(event["time"]).tzinfo is not None
    assert set(service.earned) == set(keys)
    assert reporter.outcome(keys[0])["outcome"] == "earned"
    assert not (tmp_path / "state.json").exists()
    assert reporter.status()["sent"] == 7 and reporter.status()["pending"] == 0
    assert TOKEN not in repr(reporter) and TOKEN not in json.dumps(reporter.status())
    reporter.close()


def test_a_blip_loses_nothing_and_doubles_nothing(service, tmp_path):
    # 503, a connection dropped before, then one dropped after the service counted them.
    service.fail_next(503, "drop", "drop-after", 502)
    reporter = make_reporter(service, tmp_path)
    keys = {reporter.send("training_run", {"epochs": 1}) for _ in range(5)}
    assert reporter.flush(timeout=10)
    posts = service.event_posts()
    assert len(posts) == 5
    assert all({e["key"] for e in p["events"]} == keys for p in posts)  # same keys each time
    assert set(service.earned) == keys  # counted once each
    assert {reporter.outcome(k)["outcome"] for k in keys} == {"duplicate"}
    assert reporter.status()["failures"] == 4 and reporter.status()["sent"] == 5
    reporter.close()


def test_a_batch_the_service_refuses_is_dropped_not_retried(service, tmp_path):
    service.fail_next(400)
    reporter = make_reporter(service, tmp_path)
    reporter.send("notebook_activity", {"active_minutes": "many"})
    assert reporter.flush(timeout=10)
    assert len(service.event_posts()) == 1 and not service.earned
    assert reporter.status()["dropped"] == 1
    reporter.close()


def test_unsent_events_survive_a_restart(service, tmp_path):
    service.fail_next(*[503] * 50)
    state = tmp_path / "state.json"
    first = make_reporter(service, tmp_path, backoff_base=30, backoff_max=30)
    keys = [first.send("gpu_utilization", {"minute": f"2026-01-01T00:0{i}:00+00:00", "gpus": []},
                       key=f"gpu:{i}") for i in range(3)]
    assert not first.flush(timeout=0)  # send now, do not wait
    wait_for(lambda: len(service.event_posts()) == 1, timeout=10, what="one event post")
    assert not first.close(timeout=10)  # stops in its backoff, events still pending
    saved = json.loads(state.read_text())
    assert [e["key"] for e in saved["events"]] == keys
    assert TOKEN not in state.read_text()

    service.failures.clear()
    second = make_reporter(service, tmp_path)  # the same file: the server restarted
    assert second.pending_keys() == keys
    assert second.flush(timeout=10)
    assert sorted(service.earned) == sorted(keys)
    assert not state.exists()
    second.close()


def test_the_server_adopts_files_of_dead_processes_only(service, tmp_path):
    host = _host_tag()
    orphan = tmp_path / f"{STATE_PREFIX}{host}-{dead_pid()}.json"
    living = tmp_path / f"{STATE_PREFIX}{host}-{os.getppid()}.json"
    elsewhere = tmp_path / f"{STATE_PREFIX}otherhost-{dead_pid()}.json"
    for path, key in ((orphan, "orphan"), (living, "living"), (elsewhere, "elsewhere")):
        path.write_text(json.dumps({"version": 1, "events": [
            {"kind": "training_run", "key": key, "time": "2026-01-01T00:00:00+00:00",
             "payload": {}}]}))
    own = tmp_path / f"{STATE_PREFIX}{host}-{os.getpid()}.json"
    reporter = make_reporter(service, tmp_path, state_path=own)
    assert reporter.adopt_orphans() == 1
    assert reporter.flush(timeout=10)
    assert set(service.earned) == {"orphan"}
    assert not orphan.exists() and living.exists() and elsewhere.exists()
    reporter.close()


# -- GPU summaries and device mapping --------------------------------------------------------

class FakeNvml:
    """What GpuSampler uses of pynvml; UUIDs come back as bytes, like older bindings."""

    def __init__(self, uuids, util=None, mem_mb=None):
        self.uuids = uuids
        self.util = util or {}
        self.mem_mb = mem_mb or {}

    def nvmlDeviceGetCount(self):
        return len(self.uuids)

    def nvmlDeviceGetHandleByIndex(self, index):
        return ("handle", index)

    def nvmlDeviceGetUUID(self, handle):
        return self.uuids[handle[1]].encode()

    def nvmlDeviceGetUtilizationRates(self, handle):
        return SimpleNamespace(gpu=self.util.get(handle[1], 0), memory=0)

    def nvmlDeviceGetMemoryInfo(self, handle):
        return SimpleNamespace(used=self.mem_mb.get(handle[1], 0) * 2**20, total=80 * 2**30)


UUIDS = ["GPU-aaaa1111-0000", "GPU-bbbb2222-0000", "GPU-bbbb3333-0000", "GPU-cccc4444-0000"]


@pytest.mark.parametrize("visible, expected", [
    (None, [(0, 0), (1, 1), (2, 2), (3, 3)]),  # unset: every GPU
    ("", []),  # empty: none
    ("2", [(0, 2)]),
    ("3,1", [(0, 3), (1, 1)]),
    ("GPU-cccc4444-0000,GPU-aaaa1111-0000", [(0, 3), (1, 0)]),
    ("gpu-BBBB3333", [(0, 2)]),  # a unique prefix, any case
    ("GPU-cccc,GPU-bbbb,1", [(0, 3)]),  # ambiguous prefix: CUDA stops there
    ("1,7,0", [(0, 1)]),  # no such index: stops
    ("0,GPU-aaaa1111-0000", [(0, 0)]),  # the same device twice: stops
    ("MIG-1234,1", [(0, 1)]),  # MIG instances are not sampled
    ("junk,0", []),
])
def test_visible_gpus_map_cuda_visible_devices_to_nvml_by_uuid(visible, expected):
    gpus = gpu.visible_gpus(FakeNvml(UUIDS), visible)
    assert [(g.index, g.nvml_index) for g in gpus] == expected
    assert all(g.uuid == UUIDS[g.nvml_index] and g.handle == ("handle", g.nvml_index)
               for g in gpus)


def test_summarise_minutes_means_util_and_peaks_memory():
    t0 = datetime(2026, 1, 1, 12, 0, tzinfo=timezone.utc).timestamp()
    samples = [gpu.GpuSample(t0 + s, 0, util, mem) for s, util, mem in
               [(0, 90, 1000), (20, 100, 3000), (40, 95, 2000)]]
    samples += [gpu.GpuSample(t0 + s, 1, 0, 10) for s in (5, 25)]
    samples += [gpu.GpuSample(t0 + 65, 0, 50, 500), gpu.GpuSample(t0 + 130, 0, 10, 5)]
    payloads, rest = gpu.summarise_minutes(samples, before=t0 + 125)
    assert payloads == [
        {"minute": "2026-01-01T12:00:00+00:00", "gpus": [
            {"index": 0, "util": 95.0, "mem_used_mb": 3000},
            {"index": 1, "util": 0.0, "mem_used_mb": 10}]},
        {"minute": "2026-01-01T12:01:00+00:00", "gpus": [
            {"index": 0, "util": 50.0, "mem_used_mb": 500}]}]
    assert rest == [gpu.GpuSample(t0 + 130, 0, 10, 5)]  # its minute is not over
    assert gpu.summarise_minutes(rest)[0][0]["minute"] == "2026-01-01T12:02:00+00:00"
    assert gpu.summarise_minutes([]) == ([], [])


def test_sampler_reports_each_finished_minute_once_with_a_stable_key():
    nvml = FakeNvml(UUIDS, util={1: 80, 3: 20}, mem_mb={1: 4096, 3: 100})
    gpus = gpu.visible_gpus(nvml, "GPU-cccc4444-0000,1")
    sent = []
    reporter = SimpleNamespace(send=lambda kind, payload, key: sent.append((kind, key, payload)))
    clock = SimpleNamespace(now=datetime(2026, 1, 1, 12, 0, 10, tzinfo=timezone.utc).timestamp())
    sampler = gpu.GpuSampler(nvml, gpus, reporter=reporter, server_id="sess-1",
                             clock=lambda: clock.now)
    for step in range(4):  # 12:00:10, :30, :50, 12:01:10
        assert (sampler.sample_once() != []) == (step == 3)
        clock.now += 20
    assert sent == [("gpu_utilization", "gpu_utilization:sess-1:2026-01-01T12:00:00+00:00",
                     {"minute": "2026-01-01T12:00:00+00:00", "gpus": [
                         {"index": 0, "util": 20.0, "mem_used_mb": 100},
                         {"index": 1, "util": 80.0, "mem_used_mb": 4096}]})]
    assert sampler.stop()[0]["minute"] == "2026-01-01T12:01:00+00:00"  # the minute in progress
    assert len(sent) == 2 and sampler.latest == sent[-1][2]
    # the panel's sparkline: the mean over this server's GPUs, per minute, bounded
    assert sampler.utilization_history() == [
        {"minute": "2026-01-01T12:00:00+00:00", "utilization": 50.0},
        {"minute": "2026-01-01T12:01:00+00:00", "utilization": 50.0}]
    sampler._emit([{"minute": str(i), "gpus": []} for i in range(100)])
    history = sampler.utilization_history()
    assert len(history) == gpu.HISTORY_MINUTES and history[-1] == {"minute": "99",
                                                                   "utilization": 0.0}


def test_no_nvml_means_no_sampler(monkeypatch):
    monkeypatch.setattr(gpu, "load_nvml", lambda: None)
    assert gpu.GpuSampler.from_environment() is None
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    assert gpu.GpuSampler.from_environment(FakeNvml(UUIDS)) is None


# -- activity minutes -----------------------------------------------------------------------

def test_activity_counter_counts_minutes_per_period():
    counter = ActivityCounter(period_minutes=5)
    t = datetime(2026, 1, 1, 12, 0, 0, tzinfo=timezone.utc)
    counter.observe(t, [t - timedelta(hours=1)], busy=False)  # old activity, first tick
    counter.observe(t + timedelta(seconds=30), [t + timedelta(seconds=20)], busy=False)
    counter.observe(t + timedelta(seconds=60), [t + timedelta(seconds=20)], busy=False)  # same
    counter.observe(t + timedelta(minutes=2, seconds=10), [None], busy=True)
    counter.observe(t + timedelta(minutes=6), [t + timedelta(minutes=5, seconds=30)], busy=False)
    # the hour-old activity counted once (first tick), 12:00 and 12:02; 12:05 is in the next period
    assert counter.due(t + timedelta(minutes=6)) == [(t - timedelta(hours=1), 1), (t, 2)]
    assert counter.due(t + timedelta(minutes=7)) == []
    assert counter.due(t + timedelta(minutes=7), final=True) == [(t + timedelta(minutes=5), 1)]


class FakeKernelManager:
    def __init__(self, kernels):
        self.kernels = kernels

    def list_kernel_ids(self):
        return list(self.kernels)

    def get_kernel(self, kernel_id):
        return self.kernels[kernel_id]


def test_extension_tick_reports_activity_periods_with_stable_keys(monkeypatch):
    t = datetime(2026, 1, 1, 12, 0, 0, tzinfo=timezone.utc)
    kernels = {"k1": SimpleNamespace(last_activity=t, execution_state="idle"),
               "k2": SimpleNamespace(last_activity=None, execution_state="busy")}
    sent = []

    class Recorder:
        def send(self, kind, payload, *, key, time):
            sent.append((kind, key, payload))
            return key

        def adopt_orphans(self):
            return 0

    env = {"JUPYTERHUB_API_TOKEN": TOKEN, "JUPYTERHUB_API_URL": "http://127.0.0.1:1/hub/api",
           "JUPYTERHUB_USER": "alice", "JUPYTERHUB_SERVER_NAME": "",
           "JUPYTERHUB_CREDITS_SESSION": "s-9"}
    state = CreditsState(SimpleNamespace(kernel_manager=FakeKernelManager(kernels)), env,
                         reporter=Recorder())
    assert state.tick(t + timedelta(seconds=30)) == []
    kernels["k2"].execution_state = "idle"
    assert state.tick(t + timedelta(minutes=5, seconds=1)) == \
        ["notebook_activity:s-9:2026-01-01T12:00:00+00:00"]
    assert sent[0][2] == {"active_minutes": 1}


def test_status_outside_jupyterhub_says_so_without_calling_anything():
    state = CreditsState(None, {})
    assert not state.enabled
    answer = asyncio.run(state.status())
    assert answer["available"] is False and "JupyterHub" in answer["error"]
    assert answer["can_spend"] is False and answer["runs"] == [] and answer["balance"] is None


def test_scrub_removes_anything_token_like():
    value = {"user": "alice", "api_token": "x", "nested": [{"Token": 1, "note": f"a {TOKEN} b"}]}
    assert _scrub(value, TOKEN) == {"user": "alice", "nested": [{"note": "[redacted]"}]}


def test_importing_the_package_imports_no_tensorflow():
    code = ("import sys, jupyterhub_credits, jupyterhub_credits.singleuser.reporter, "
            "jupyterhub_credits.singleuser.gpu, jupyterhub_credits.singleuser.extension, "
            "jupyterhub_credits.singleuser.tensorboard; "
            "print(sorted(m for m in ('tensorflow', 'keras', 'torch', 'pynvml', 'tensorboard') "
            "if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         cwd=ROOT)
    assert out.stdout.strip() == "[]"


# -- the service status client: cache, single flight, backoff --------------------------------

class Clock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self):
        return self.now


class ScriptedService:
    """The client's ``fetch``: answers or failures in order, counted; ``gate`` holds them."""

    def __init__(self, *script):
        self.script = list(script)
        self.calls: list[list[str]] = []
        self.gate: asyncio.Event | None = None

    async def __call__(self, runs, timeout):
        self.calls.append(runs)
        if self.gate is not None:
            await self.gate.wait()
        step = self.script.pop(0) if self.script else {"available": "1.00"}
        if isinstance(step, Exception):
            raise step
        return step


def make_client(service, clock, **kwargs) -> ServiceStatus:
    return ServiceStatus("http://credits.invalid/api", TOKEN, "default", fetch=service,
                         clock=clock, **kwargs)


def test_many_callers_share_one_request_and_its_answer_lives_ttl_seconds():
    async def scenario():
        clock, service = Clock(), ScriptedService({"available": "1.00"}, {"available": "2.00"})
        client = make_client(service, clock, ttl=30)
        service.gate = asyncio.Event()
        callers = [asyncio.ensure_future(client.get(runs=["k1"])) for _ in range(25)]
        await asyncio.sleep(0)  # let them all reach the request in flight
        service.gate.set()
        answers = await asyncio.gather(*callers)
        assert len(service.calls) == 1 and service.calls[0] == ["k1"]
        assert {a.answer["available"] for a in answers} == {"1.00"}
        assert answers[0].error is None and answers[0].fetched_at.endswith("Z")
        clock.now += 29.9
        assert (await client.get()).answer["available"] == "1.00" and len(service.calls) == 1
        clock.now += 0.1
        assert (await client.get()).answer["available"] == "2.00" and len(service.calls) == 2
        # refresh asks again, but not twice within 2 s
        clock.now += 1.5
        await client.get(refresh=True)
        assert len(service.calls) == 2
        clock.now += 0.5
        await client.get(refresh=True)
        assert len(service.calls) == 3
        # one caller giving up (a closed tab) does not cancel the request the others wait on
        service.gate.clear()
        clock.now += 30
        first, second = asyncio.ensure_future(client.get()), asyncio.ensure_future(client.get())
        await asyncio.sleep(0)
        first.cancel()
        service.gate.set()
        assert (await second).error is None and len(service.calls) == 4

    asyncio.run(scenario())


def test_servers_that_failed_together_spread_their_next_try():
    delays = [spread(10.0) for _ in range(2000)]
    assert all(10.0 <= d <= 10.0 * (1 + BACKOFF_SPREAD) for d in delays)
    # spread over the whole window, not bunched: each fifth of it gets some servers
    fifths = {min(4, int((d - 10.0) / (10.0 * BACKOFF_SPREAD) * 5)) for d in delays}
    assert fifths == {0, 1, 2, 3, 4}


def test_failures_back_off_and_keep_the_last_good_answer():
    async def scenario():
        clock = Clock()
        down = ServiceError("The credits service is not answering")
        service = ScriptedService({"available": "5.00"}, *[down] * 8, {"available": "6.00"})
        client = make_client(service, clock, ttl=30)
        assert (await client.get()).answer["available"] == "5.00"
        delays = []
        for _ in range(8):
            clock.now += 30 if not delays else delays[-1]
            snap = await client.get()
            delays.append(snap.retry_in)
            assert snap.answer["available"] == "5.00"  # the last good answer, still served
            assert snap.error == f"The credits service is not answering; trying again in " \
                                 f"{snap.retry_in} s"
            # while backing off nobody asks, refresh or not
            clock.now += 1
            calls = len(service.calls)
            again = await client.get(refresh=True)
            assert len(service.calls) == calls and again.retry_in == snap.retry_in - 1
            clock.now -= 1
        assert delays == [5, 10, 20, 40, 80, 160, 300, 300]
        clock.now += 300
        snap = await client.get()
        assert snap.answer["available"] == "6.00" and snap.error is None and snap.retry_in is None
        # force (the user acted, or the server stops) asks even while backing off
        service.script = [down]
        clock.now += 31
        assert (await client.get()).retry_in == 5
        calls = len(service.calls)
        await client.get(force=True)
        assert len(service.calls) == calls + 1

    asyncio.run(scenario())


def test_a_slow_service_times_out_as_not_answering():
    async def scenario():
        async def hangs(runs, timeout):
            await asyncio.sleep(60)

        client = ServiceStatus("http://credits.invalid/api", TOKEN, "gpu1", fetch=hangs,
                               clock=Clock())
        started = time.monotonic()
        snap = await client.get(timeout=0.05)
        assert time.monotonic() - started < 5
        assert snap.answer is None and snap.error.startswith("The credits service is not")

    asyncio.run(scenario())


def test_the_client_asks_the_server_status_with_the_server_token(service):
    service.outcomes["training_run:a"] = {"outcome": "earned", "points": 2, "rule": "r"}

    async def scenario():
        client = ServiceStatus(service.api_url, TOKEN, "gpu 1/x")
        snap = await client.get(runs=["training_run:a", "training_run:b"])
        assert snap.error is None and snap.answer["server_label"] == "gpu 1/x"
        assert snap.answer["runs"] == [{"outcome": "earned", "points": 2, "rule": "r",
                                        "key": "training_run:a"}]
        assert TOKEN not in repr(client)
        service.get_failures.extend([503, "drop"])
        for words in ("answered HTTP 503", "is not answering"):
            await client.get(force=True)
            assert words in client.error

    asyncio.run(scenario())
    (request,) = service.status_requests()[:1]
    assert request["authorization"] == f"token {TOKEN}"
    assert request["path"] == ("/services/credits/api/sessions/gpu%201%2Fx?runs="
                               "training_run%3Aa%2Ctraining_run%3Ab")


# -- the runs journal -----------------------------------------------------------------------

def run_line(key, server="s-1", **fields) -> dict:
    return dict({"server": server, "key": key, "started_at": "2026-01-01T00:00:00Z",
                 "ended_at": "2026-01-01T00:01:00Z", "epochs": 2, "steps": 8,
                 "duration_s": 60.5, "metrics": {"loss": 0.25}, "logdir": None}, **fields)


def test_the_journal_keeps_this_servers_newest_runs_and_survives_a_torn_line(tmp_path):
    path = runs.journal_path(tmp_path)
    for i in range(250):
        runs.append_run(run_line(f"k{i}", server="s-1" if i % 2 == 0 else "s-2"), path)
    with open(path, "ab") as handle:
        handle.write(b'{"server": "s-1", "key": "torn", "epo')  # a kernel killed mid-write
    assert oct(path.stat().st_mode & 0o777) == "0o600"
    newest = runs.read_runs(path, "s-1")
    assert [r["key"] for r in newest] == [f"k{i}" for i in range(248, 228, -2)]
    assert newest[0] == {"key": "k248", "started_at": "2026-01-01T00:00:00Z",
                         "ended_at": "2026-01-01T00:01:00Z", "epochs": 2, "steps": 8,
                         "duration_s": 60.5, "metrics": {"loss": 0.25}, "logdir": None}
    # only the journal's last 200 lines count: s-2's old runs are out of reach
    assert len(runs.read_runs(path, "s-2", shown=500)) == 100
    assert runs.read_runs(tmp_path / "none.jsonl", "s-1") == []
    # whatever a kernel wrote, the browser gets typed, bounded fields
    runs.append_run({"server": "s-1", "key": "odd", "epochs": "many", "metrics": {
        "ok": 1.5, "bad": "x", "inf": None}, "logdir": 42, "extra": "dropped"}, path)
    odd = runs.read_runs(path, "s-1")[0]
    assert odd["key"] == "odd" and odd["epochs"] is None and odd["metrics"] == {"ok": 1.5}
    assert odd["logdir"] is None and "extra" not in odd


def test_runs_are_held_until_no_reporter_file_has_them_and_outcomes_are_remembered(tmp_path):
    path = runs.journal_path(tmp_path)
    for key in ("x,y z", "a", "b", "c"):  # the first can never be an event key
        runs.append_run(run_line(key), path)
    # a kernel still holding "b" unsent
    (tmp_path / f"{STATE_PREFIX}host-123.json").write_text(json.dumps({"version": 1, "events": [
        {"kind": "training_run", "key": "b", "time": "t", "payload": {}}]}))
    (tmp_path / f"{STATE_PREFIX}host-124.json").write_text("{torn")

    class ServerReporter:  # the server's own: it adopted "c" and has sent it already
        def pending_keys(self):
            return []

        def outcome(self, key):
            return {"key": "c", "outcome": "earned", "points": 3, "reason": None} \
                if key == "c" else None

    view = runs.RunsView("s-1", tmp_path, reporter=ServerReporter())
    listed = view.runs()
    assert [(r["key"], r["state"]) for r in listed] == [
        ("c", "sent"), ("b", "held"), ("a", "sent"), ("x,y z", "sent")]
    assert listed[0]["outcome"] == {"outcome": "earned", "points": 3, "rule": None, "reason": None}
    assert view.lacking_outcome(listed) == ["a"]  # held ones are not asked about
    view.learn([{"key": "a", "outcome": "capped", "points": 0, "rule": "runs",
                 "reason": "daily cap reached", "extra": 1}, {"key": 5}, "junk"])
    assert view.runs()[2]["outcome"] == {"outcome": "capped", "points": 0, "rule": "runs",
                                         "reason": "daily cap reached"}
    assert view.lacking_outcome(view.runs()) == []


@pytest.mark.parametrize("logdir, expected", [
    ("logs/fit-1", "?runFilter=%5Elogs%2Ffit-1%28%2F%7C%24%29#timeseries"),
    ("a (b)+c", "?runFilter=%5Ea%20%5C%28b%5C%29%5C%2Bc%28%2F%7C%24%29#timeseries"),
    (".", "#timeseries"),  # the root itself: every run
    ("../elsewhere", None),  # outside the root: TensorBoard cannot see it
])
def test_tensorboard_links_select_the_runs_of_one_logdir(tmp_path, logdir, expected):
    root = tmp_path / "root"
    root.mkdir()
    url = tensorboard_run_url("/user/alice/gpu1/tensorboard/", str(root / logdir), str(root))
    assert url == (None if expected is None else "/user/alice/gpu1/tensorboard/" + expected)
    if expected and "runFilter" in expected:
        regex = unquote(expected.split("=", 1)[1].split("#")[0])
        relative = os.path.normpath(logdir)
        assert re.search(regex, f"{relative}/train") and re.search(regex, relative)
        assert not re.search(regex, f"{relative}x/train")
    assert tensorboard_run_url(None, str(root), str(root)) is None


def test_the_stop_event_falls_back_to_plain_words():
    assert stopping.stop_event({"reason": "expired", "message": "its paid time ended",
                                "at": "2026-01-01T00:00:00Z"}, 3) == {
        "reason": "expired", "message": "its paid time ended", "at": "2026-01-01T00:00:00Z",
        "grace_seconds": 3}
    plain = stopping.stop_event(None, 0)
    assert (plain["reason"], plain["message"], plain["grace_seconds"]) == \
        ("stopped", "Your server was stopped", 0)
    assert datetime.fromisoformat(plain["at"].replace("Z", "+00:00")).tzinfo is not None
    assert stopping.grace_from_env({}) == 3 and stopping.grace_from_env(
        {stopping.GRACE_ENV: "0"}) == 0 and stopping.grace_from_env(
        {stopping.GRACE_ENV: "soon"}) == 3


def test_tensorboard_entry_point_serves_the_notebook_root_under_the_base_url(tmp_path,
                                                                              monkeypatch):
    monkeypatch.chdir(tmp_path)
    config = tensorboard.setup_tensorboard()
    assert config["command"][:3] == [sys.executable, "-m", "tensorboard.main"]
    args = dict(zip(config["command"][3::2], config["command"][4::2]))
    assert args == {"--logdir": str(tmp_path), "--port": "{port}", "--host": "127.0.0.1",
                    "--path_prefix": "{base_url}tensorboard", "--reload_interval": "5"}
    assert config["absolute_url"] is True and config["timeout"] >= 60
    assert config["new_browser_tab"] is True
    assert config["launcher_entry"]["title"] == "TensorBoard"
    assert Path(config["launcher_entry"]["icon_path"]).read_text().startswith("<svg")
    # a directory name with braces is not a template field for jupyter-server-proxy
    odd = tmp_path / "{port}"
    odd.mkdir()
    monkeypatch.chdir(odd)
    logdir = dict(zip(*[iter(tensorboard.setup_tensorboard()["command"][3:])] * 2))["--logdir"]
    assert logdir.format(port=1, base_url="/") == str(odd)


# -- the extension in a real Jupyter server --------------------------------------------------

@pytest.fixture
def jupyter_server(service, tmp_path):
    """A real ``jupyter server`` with our shipped config file and JupyterHub's environment."""
    server = JupyterProcess(tmp_path, hub_environment(service))
    # a kernel that died with an unsent training run, on this host
    server.orphan = server.runtime / f"{STATE_PREFIX}{_host_tag()}-{dead_pid()}.json"
    server.orphan.write_text(json.dumps({"version": 1, "events": [
        {"kind": "training_run", "key": "training_run:left-behind",
         "time": "2026-01-01T00:00:00+00:00",
         "payload": {"epochs": 1, "steps": 2, "duration_s": 3.0, "metrics": {}, "logdir": None}}]}))
    with server:
        yield server


def test_extension_in_a_real_server_proxies_status_without_the_token(service, jupyter_server):
    server = jupyter_server
    assert "jupyterhub_credits: loaded (reporting on" in server.log(), server.log()
    service.statuses["default"] = {"session": {"gpu_type": "a100", "seconds_left": 60,
                                               "oauth_token": "must-not-reach-the-browser"},
                                   "available": "12.50", "reserved": "3.00"}
    anonymous = requests.get(f"{server.url}/credits/status", timeout=10)
    assert anonymous.status_code == 403
    response = requests.get(f"{server.url}/credits/status", timeout=10, headers=server.headers)
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["available"] is True and body["user"] == "alice" and body["error"] is None
    assert body["balance"] == {"available": "12.50", "reserved": "3.00"}
    assert body["me"] == {"user": "alice", "available": "12.50", "reserved": "3.00",
                          "sessions": [{"gpu_type": "a100", "seconds_left": 60}]}
    assert body["reporter"]["pending"] >= 0 and body["gpu"] is None and body["gpu_history"] is None
    assert body["server"] == {"name": "", "label": "default", "id": "session-1"}
    # the login token's user is not the hub user alice: reads, cannot spend
    assert body["viewer"] != "alice" and body["can_spend"] is False
    everything = response.text + json.dumps(dict(response.headers))
    assert TOKEN not in everything and "must-not-reach" not in everything
    assert [(r["path"], r["authorization"]) for r in service.status_requests()] == \
        [("/services/credits/api/sessions/default", f"token {TOKEN}")]
    # the dead kernel's training run was adopted and sent with the server's token
    wait_for(lambda: "training_run:left-behind" in service.earned, timeout=20,
             what="the run left behind to be delivered")
    assert not server.orphan.exists()
