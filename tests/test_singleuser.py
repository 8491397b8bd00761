"""The single-user side: reporter, GPU summaries and UUID mapping, the server extension."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import socket
import subprocess
import sys
import threading
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path
from types import SimpleNamespace

import pytest
import requests

from jupyterhub_credits.singleuser import gpu
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
from tests.fake_credits import TOKEN, FakeCreditsService
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


def test_scrub_removes_anything_token_like():
    value = {"user": "alice", "api_token": "x", "nested": [{"Token": 1, "note": f"a {TOKEN} b"}]}
    assert _scrub(value, TOKEN) == {"user": "alice", "nested": [{"note": "[redacted]"}]}


def test_importing_the_package_imports_no_tensorflow():
    code = ("import sys, jupyterhub_credits, jupyterhub_credits.singleuser.reporter, "
            "jupyterhub_credits.singleuser.gpu, jupyterhub_credits.singleuser.extension; "
            "print(sorted(m for m in ('tensorflow', 'keras', 'torch', 'pynvml') "
            "if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         cwd=ROOT)
    assert out.stdout.strip() == "[]"


# -- the extension in a real Jupyter server --------------------------------------------------

def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture
def jupyter_server(service, tmp_path):
    """A real ``jupyter server`` with our shipped config file and JupyterHub's environment."""
    config_dir = tmp_path / "config" / "jupyter_server_config.d"
    config_dir.mkdir(parents=True)
    shutil.copy(ROOT / "jupyter-config" / "jupyter_server_config.d" / "jupyterhub_credits.json",
                config_dir)
    # the other extensions installed here only slow the start down
    (tmp_path / "config" / "jupyter_server_config.json").write_text(json.dumps({"ServerApp": {
        "jpserver_extensions": {name: False for name in (
            "jupyterlab", "jupyter_lsp", "notebook_shim", "jupyter_server_terminals")}}}))
    runtime = tmp_path / "runtime"
    runtime.mkdir()
    # a kernel that died with an unsent training run, on this host
    orphan = runtime / f"{STATE_PREFIX}{_host_tag()}-{dead_pid()}.json"
    orphan.write_text(json.dumps({"version": 1, "events": [
        {"kind": "training_run", "key": "training_run:left-behind",
         "time": "2026-01-01T00:00:00+00:00",
         "payload": {"epochs": 1, "steps": 2, "duration_s": 3.0, "metrics": {}, "logdir": None}}]}))
    port, login = _free_port(), "browser-login-token"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("JUPYTERHUB_", "JUPYTER_"))}
    env.update(JUPYTER_CONFIG_DIR=str(tmp_path / "config"), JUPYTER_RUNTIME_DIR=str(runtime),
               JUPYTER_DATA_DIR=str(tmp_path / "data"), JUPYTERHUB_API_TOKEN=TOKEN,
               JUPYTERHUB_API_URL=f"{service.url}/hub/api", JUPYTERHUB_USER="alice",
               JUPYTERHUB_SERVER_NAME="", JUPYTERHUB_CREDITS_SESSION="session-1",
               PYTHONPATH=str(ROOT), CUDA_VISIBLE_DEVICES="")
    process = subprocess.Popen(
        [sys.executable, "-m", "jupyter_server", "--no-browser", "--allow-root",
         "--ServerApp.ip=127.0.0.1", f"--ServerApp.port={port}", "--ServerApp.port_retries=0",
         f"--IdentityProvider.token={login}", f"--ServerApp.root_dir={tmp_path}"],
        env=env, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True, cwd=tmp_path)
    lines, ready = [], threading.Event()

    def read():
        for line in process.stderr:
            lines.append(line)
            if "is running at" in line:
                ready.set()
        ready.set()

    threading.Thread(target=read, daemon=True).start()
    try:
        assert ready.wait(60) and process.poll() is None, "".join(lines)
        # it logs "running" before the event loop binds the port: poll until it accepts
        deadline = time.monotonic() + 30
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                assert time.monotonic() < deadline and process.poll() is None, "".join(lines)
                threading.Event().wait(0.05)  # the poll's pace
        yield SimpleNamespace(url=f"http://127.0.0.1:{port}", login=login, lines=lines,
                              orphan=orphan)
    finally:
        process.terminate()
        process.wait(30)


def test_extension_in_a_real_server_proxies_status_without_the_token(service, jupyter_server):
    server = jupyter_server
    assert any("jupyterhub_credits: loaded (reporting on)" in line for line in server.lines), \
        "".join(server.lines)
    service.me = dict(service.me, oauth_token="must-not-reach-the-browser")
    anonymous = requests.get(f"{server.url}/credits/status", timeout=10)
    assert anonymous.status_code == 403
    response = requests.get(f"{server.url}/credits/status", timeout=10,
                            headers={"Authorization": f"token {server.login}"})
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["available"] is True and body["user"] == "alice"
    assert body["me"] == {"user": "alice", "balance": "12.50", "sessions": []}
    assert body["reporter"]["pending"] >= 0 and body["gpu"] is None
    everything = response.text + json.dumps(dict(response.headers))
    assert TOKEN not in everything and "must-not-reach" not in everything
    gets = [r for r in service.requests if r["method"] == "GET"]
    assert [(r["path"], r["authorization"]) for r in gets] == \
        [("/services/credits/api/me", f"token {TOKEN}")]
    # the dead kernel's training run was adopted and sent with the server's token
    wait_for(lambda: "training_run:left-behind" in service.earned, timeout=20,
             what="the run left behind to be delivered")
    assert not server.orphan.exists()
