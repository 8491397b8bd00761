"""The server extension the JupyterLab credits panel talks to: its handlers, stop push, TensorBoard.

Handlers run in an in-process Jupyter server (pytest-jupyter's ``jp_serverapp`` /
``jp_fetch``) under a named server's prefix, against the stand-in credits service
over real HTTP. The tests are plain functions that drive the server's loop
(pytest-asyncio stays in strict mode; pytest-jupyter's own coroutine hooks are not
loaded: only its fixtures are imported here). What needs a real process — signals,
TensorBoard behind jupyter-server-proxy — runs ``jupyter server`` as a subprocess.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import time
from pathlib import Path

import pytest
import requests
from jupyter_server.auth import IdentityProvider, User
from pytest_jupyter.jupyter_server import *  # noqa: F403 - the fixtures (jp_fetch, ...)
from tornado.httpclient import HTTPRequest
from tornado.websocket import websocket_connect

from jupyterhub_credits.singleuser import runs
from jupyterhub_credits.singleuser.handlers import SETTINGS_KEY
from jupyterhub_credits.singleuser.stopping import SCHEMA_ID
from tests.fake_credits import TOKEN, FakeCreditsService
from tests.jupyter_process import JupyterProcess, hub_environment
from tests.waiting import wait_for, wait_for_async

BASE_URL = "/user/alice/gpu1/"
STATUS_FIELDS = {"available", "error", "retry_in", "fetched_at", "now", "user", "viewer",
                 "can_spend", "server", "balance", "session", "stop", "warning_thresholds",
                 "earnings_today", "runs", "gpu_history", "gpu", "reporter", "me",
                 "tensorboard", "links"}
RUN_FIELDS = {"key", "started_at", "ended_at", "epochs", "steps", "duration_s", "metrics",
              "logdir", "state", "outcome", "tensorboard_url"}
SESSION = {"image": "cuda-lab", "gpu_type": "a100", "gpus": 1, "rate_per_hour": "30.00",
           "held": "30.00", "ready_at": "2026-01-01T00:00:00Z",
           "paid_until": "2026-01-01T01:00:00Z", "seconds_left": 1800,
           "cost_so_far": "15.00", "auto_extend": False, "state": "running", "warnings": []}


class HubUser(User):
    """What jupyterhub-singleuser's identity provider gives: a User with ``hub_user``."""

    def __init__(self, hub_user: dict):
        super().__init__(username=hub_user["name"])
        self.hub_user = hub_user


class HubLikeIdentity(IdentityProvider):
    """Token login as usual; the hub user is named by ``X-Hub-User`` (default: alice)."""

    async def get_user(self, handler):
        user = await self._get_user(handler)
        if user is None:
            return None
        return HubUser({"name": handler.request.headers.get("X-Hub-User", "alice")})


@pytest.fixture
def service():
    with FakeCreditsService() as fake:
        yield fake


@pytest.fixture
def jp_base_url():
    return BASE_URL


@pytest.fixture
def jp_server_config(service, monkeypatch):
    for name in list(os.environ):
        if name.startswith("JUPYTERHUB_"):
            monkeypatch.delenv(name)
    for name, value in {"JUPYTERHUB_API_TOKEN": TOKEN, "JUPYTERHUB_USER": "alice",
                        "JUPYTERHUB_API_URL": "http://127.0.0.1:9/hub/api",
                        "JUPYTERHUB_CREDITS_API_URL": service.api_url,
                        "JUPYTERHUB_SERVER_NAME": "gpu1", "JUPYTERHUB_BASE_URL": "/prefix/",
                        "JUPYTERHUB_CREDITS_SESSION": "session-7",
                        "CUDA_VISIBLE_DEVICES": ""}.items():
        monkeypatch.setenv(name, value)
    return {"ServerApp": {"jpserver_extensions": {"jupyterhub_credits.singleuser": True},
                          "identity_provider_class": HubLikeIdentity}}


class Clock:
    """The status client's monotonic clock, moved by the test (TTL, backoff)."""

    def __init__(self):
        self.now = 1000.0

    def __call__(self):
        return self.now


@pytest.fixture
def state(jp_serverapp):
    state = jp_serverapp.web_app.settings[SETTINGS_KEY]
    state.client.clock = Clock()
    state.client.jitter = lambda delay: delay  # the backoff's seconds, exactly
    yield state
    state.stop()  # its reporter thread, and the signal handlers it wrapped


@pytest.fixture
def call(jp_fetch, jp_asyncio_loop, state):
    """``call(path, viewer=..., ...)``: one request to the server, its (status, JSON body)."""

    def request(path, *, viewer="alice", body=None, params=None):
        kwargs = {"method": "POST", "body": json.dumps(body) if not isinstance(body, bytes)
                  else body} if body is not None else {}
        response = jp_asyncio_loop.run_until_complete(jp_fetch(
            *path.split("/"), headers={"X-Hub-User": viewer}, params=params,
            raise_error=False, **kwargs))
        text = response.body.decode()
        assert TOKEN not in text and "token" not in text.lower(), text  # never, anywhere
        assert response.headers["Cache-Control"] == "no-store"
        return response.code, json.loads(text)

    return request


def write_runs(directory: Path, root: Path) -> None:
    runs.append_run({"server": "session-7", "key": "training_run:old", "epochs": 1, "steps": 4,
                     "duration_s": 2.0, "metrics": {"loss": 0.5},
                     "logdir": str(root / "logs" / "old")}, runs.journal_path(directory))
    runs.append_run({"server": "another-server", "key": "training_run:theirs"},
                    runs.journal_path(directory))
    runs.append_run({"server": "session-7", "key": "training_run:new", "epochs": 3,
                     "steps": 12, "duration_s": 9.5, "metrics": {"loss": 0.1},
                     "logdir": "/elsewhere/logs"}, runs.journal_path(directory))


def test_status_answers_the_panel_for_a_named_server(service, call, jp_serverapp, state):
    root = Path(jp_serverapp.root_dir)
    write_runs(Path(jp_serverapp.runtime_dir), root)
    service.outcomes["training_run:old"] = {"outcome": "earned", "points": 2, "rule": "runs",
                                            "reason": None, "token": "x"}
    service.statuses["gpu1"] = {
        "available": "112.50", "reserved": "30.00", "session": SESSION,
        "earnings_today": {"rules": []}, "stop": None}

    code, body = call("credits/status")
    assert code == 200 and set(body) == STATUS_FIELDS
    assert body["available"] is True and body["error"] is None and body["retry_in"] is None
    assert body["user"] == body["viewer"] == "alice" and body["can_spend"] is True
    assert body["server"] == {"name": "gpu1", "label": "gpu1", "id": "session-7"}
    assert body["balance"] == {"available": "112.50", "reserved": "30.00"}
    assert body["session"] == SESSION and body["stop"] is None
    assert body["warning_thresholds"] == [600, 60] and body["earnings_today"] == {"rules": []}
    assert body["me"] == {"user": "alice", "available": "112.50", "reserved": "30.00",
                          "sessions": [SESSION]}
    assert body["links"] == {"my_credits": "/prefix/services/credits/",
                             "start_again": "/prefix/hub/spawn/alice/gpu1"}
    assert body["tensorboard"] == {"url": f"{BASE_URL}tensorboard/"}
    assert body["gpu_history"] is None and body["gpu"] is None
    new, old = body["runs"]
    assert set(new) == set(old) == RUN_FIELDS
    assert (new["key"], new["state"], new["outcome"], new["epochs"]) == \
        ("training_run:new", "sent", None, 3)
    assert new["tensorboard_url"] is None  # logged outside the notebook root
    assert old["outcome"] == {"outcome": "earned", "points": 2, "rule": "runs", "reason": None}
    assert old["tensorboard_url"] == \
        f"{BASE_URL}tensorboard/?runFilter=%5Elogs%2Fold%28%2F%7C%24%29#timeseries"
    (asked,) = service.status_requests()
    assert asked["path"] == ("/services/credits/api/sessions/gpu1?runs="
                             "training_run%3Anew%2Ctraining_run%3Aold")
    assert asked["authorization"] == f"token {TOKEN}"

    # an admin opening alice's server reads it all but cannot spend
    code, body = call("credits/status", viewer="admin")
    assert code == 200 and body["viewer"] == "admin" and body["user"] == "alice"
    assert body["can_spend"] is False and body["balance"]["available"] == "112.50"
    assert len(service.status_requests()) == 1  # within the TTL: the cached answer

    # refresh asks again (not twice within 2 s), and only for the outcome still unknown
    state.client.clock.now += 1.9
    call("credits/status", params={"refresh": "1"})
    assert len(service.status_requests()) == 1
    state.client.clock.now += 0.1
    call("credits/status", params={"refresh": "1"})
    assert service.status_requests()[-1]["path"].endswith("?runs=training_run%3Anew")
    # the answer lives 30 s
    state.client.clock.now += 29.9
    call("credits/status")
    assert len(service.status_requests()) == 2
    state.client.clock.now += 0.1
    call("credits/status")
    assert len(service.status_requests()) == 3


def test_many_tabs_share_one_request_to_the_service(service, jp_fetch, jp_asyncio_loop, state):
    service.answering.clear()  # the service is slow: every tab's poll arrives meanwhile

    async def tabs():
        polls = [asyncio.ensure_future(jp_fetch("credits", "status", raise_error=False))
                 for _ in range(8)]  # the test client opens 10 connections at most
        await wait_for_async(lambda: state.client.waiting == 8, timeout=20,
                             what="every tab's poll to wait for the one request")
        assert not any(p.done() for p in polls)
        service.answering.set()
        return await asyncio.gather(*polls)

    responses = jp_asyncio_loop.run_until_complete(tabs())
    assert {r.code for r in responses} == {200}
    assert {json.loads(r.body)["fetched_at"] for r in responses} != {None}
    assert len(service.status_requests()) == 1


def test_a_service_that_is_down_gives_words_and_backs_off(service, call, state):
    service.get_failures.extend(["drop"] * 3)
    code, body = call("credits/status")
    assert code == 200 and body["available"] is False and body["balance"] is None
    assert body["error"] == "The credits service is not answering; trying again in 5 s"
    assert body["retry_in"] == 5 and body["links"]["start_again"] == "/prefix/hub/spawn/alice/gpu1"
    for params in (None, {"refresh": "1"}):  # backing off: neither a poll nor refresh asks
        code, again = call("credits/status", params=params)
        assert again["error"].startswith("The credits service is not answering")
        assert 0 <= again["retry_in"] <= 5
    assert len(service.status_requests()) == 1
    # after the backoff it asks again; a good answer is then kept while the service is down
    service.get_failures.clear()
    service.statuses["gpu1"] = {"available": "7.00"}
    state.client.clock.now += 5
    assert call("credits/status")[1]["balance"]["available"] == "7.00"
    service.get_failures.append(503)
    state.client.clock.now += 30
    code, body = call("credits/status")
    assert body["available"] is True and body["balance"]["available"] == "7.00"
    assert body["error"] == "The credits service answered HTTP 503; trying again in 5 s"


def test_only_the_owner_may_extend_and_refusals_are_passed_on(service, call, state):
    code, body = call("credits/extend", viewer="admin", body={"hours": "1"})
    assert (code, body) == (403, {"message": "Only alice can spend alice's credits"})
    assert service.extend_posts() == []  # refused before anything reached the service

    for bad, words in ((b"not json", "JSON object"), ([1], "JSON object"),
                       ({"key": "k"}, '"hours"'), ({"hours": "1", "rate": 0}, "'rate'")):
        code, body = call("credits/extend", body=bad)
        assert code == 400 and words in body["message"]
    assert service.extend_posts() == []

    service.statuses["gpu1"] = {"session": dict(SESSION, seconds_left=5400)}
    service.extend_answers.append((200, {"session": SESSION, "message": "Added 1.5 hours.",
                                         "duplicate": False, "api_token": TOKEN}))
    code, body = call("credits/extend", body={"hours": "1.5", "key": "k-1"})
    assert code == 200 and body["message"] == "Added 1.5 hours."
    assert body["status"]["session"]["seconds_left"] == 5400  # fresh, not the cache
    (post,) = service.extend_posts()
    assert post["path"] == "/services/credits/api/sessions/gpu1/extend"
    assert post["body"] == {"hours": "1.5", "key": "k-1"}
    assert post["authorization"] == f"token {TOKEN}"

    for status, message in ((402, "Not enough credits: 12.00 available"),
                            (403, "At most 8 hours per session"), (409, "this session is ending")):
        service.extend_answers.append((status, {"status": status, "message": message}))
        assert call("credits/extend", body={"auto_extend": True}) == (status, {"message": message})
    assert service.extend_posts()[-1]["body"] == {"auto_extend": True}

    service.extend_answers.append((500, {"status": 500, "message": "Traceback ..."}))
    code, body = call("credits/extend", body={"hours": "1"})
    assert code == 503 and "Traceback" not in body["message"] and "HTTP 500" in body["message"]
    service.server.shutdown()  # the service is gone
    service.server.server_close()
    code, body = call("credits/extend", body={"hours": "1"})
    assert code == 503 and body["message"].startswith("The credits service is not answering")


def test_anonymous_requests_are_refused(jp_fetch, jp_asyncio_loop, state):
    for method, body in (("GET", None), ("POST", "{}")):
        response = jp_asyncio_loop.run_until_complete(jp_fetch(
            "credits", "status" if method == "GET" else "extend", method=method, body=body,
            headers={"Authorization": ""}, raise_error=False))
        assert response.code == 403
        assert TOKEN not in response.body.decode()


def test_the_stop_signals_are_wrapped_and_given_back(jp_serverapp, state):
    announcer = state.announcer
    assert announcer is not None and SCHEMA_ID in jp_serverapp.event_logger.schemas.schema_ids
    # pytest's SIGINT handler (KeyboardInterrupt) is a Python handler: wrapped
    assert signal.getsignal(signal.SIGINT) == announcer._on_signal
    original = announcer.originals[signal.SIGINT]
    state.stop()
    assert signal.getsignal(signal.SIGINT) == original


# -- real processes: the stop announcement, TensorBoard --------------------------------------

def subscribe(server: JupyterProcess):
    """A websocket on the server's event bus that has surely started listening."""
    async def connect():
        socket = await websocket_connect(HTTPRequest(
            server.url.replace("http", "ws") + "/api/events/subscribe", headers=server.headers))
        # an event of our own schema through the REST API proves the listener is on
        probe = {"schema_id": SCHEMA_ID, "version": "1", "data": {
            "reason": "probe", "message": "-", "at": "-", "grace_seconds": 0}}
        response = requests.post(f"{server.url}/api/events", json=probe, headers=server.headers,
                                 timeout=10)
        assert response.status_code == 204, response.text
        assert json.loads(await socket.read_message())["reason"] == "probe"
        return socket
    return connect()


async def next_event(socket, timeout=15) -> dict:
    return json.loads(await asyncio.wait_for(socket.read_message(), timeout))


def test_a_stop_is_announced_with_the_reason_and_the_server_serves_the_grace(service, tmp_path):
    service.statuses["default"] = {"stop": {"reason": "expired", "at": "2026-01-01T01:00:00Z",
                                            "message": "its paid time ended"}}
    grace = 2
    env = hub_environment(service, JUPYTERHUB_CREDITS_STOP_GRACE=str(grace))
    with JupyterProcess(tmp_path, env) as server:
        async def scenario():
            socket = await subscribe(server)
            signalled = time.monotonic()
            server.process.send_signal(signal.SIGTERM)
            event = await next_event(socket)
            assert event["schema_id"] == SCHEMA_ID
            assert {k: event[k] for k in ("reason", "message", "at", "grace_seconds")} == {
                "reason": "expired", "message": "its paid time ended",
                "at": "2026-01-01T01:00:00Z", "grace_seconds": grace}
            # still serving: the page can save its documents now
            saved = requests.put(f"{server.url}/api/contents/work.txt", headers=server.headers,
                                 json={"type": "file", "format": "text", "content": "kept"},
                                 timeout=5)
            assert saved.status_code in (200, 201), saved.text
            return signalled

        signalled = asyncio.run(scenario())
        server.process.wait(grace + 20)
        stopped_after = time.monotonic() - signalled
        assert grace <= stopped_after < grace + 15, server.log()
        assert (server.root / "work.txt").read_text() == "kept"
        assert "received signal 15, stopping" in server.log()  # jupyter_server's own clean stop
        asked = service.status_requests()[-1]
        assert asked["path"] == "/services/credits/api/sessions/default"


def test_a_second_signal_stops_at_once_and_sigint_is_announced_too(service, tmp_path):
    env = hub_environment(service, JUPYTERHUB_CREDITS_STOP_GRACE="60")
    service.get_failures.extend(["drop"] * 5)  # the service cannot say why: plain words
    with JupyterProcess(tmp_path, env) as server:
        async def scenario():
            socket = await subscribe(server)
            server.process.send_signal(signal.SIGINT)
            event = await next_event(socket)
            assert (event["reason"], event["message"], event["grace_seconds"]) == \
                ("stopped", "Your server was stopped", 60)
            signalled = time.monotonic()
            server.process.send_signal(signal.SIGINT)  # impatient: no 60 s wait
            return signalled

        signalled = asyncio.run(scenario())
        server.process.wait(20)
        assert time.monotonic() - signalled < 20


@pytest.mark.slow
def test_tensorboard_behind_the_proxy_under_a_named_servers_prefix(service, tmp_path):
    env = hub_environment(service, server_name="gpu1")
    with JupyterProcess(tmp_path, env, base_url=BASE_URL) as server:
        info = requests.get(f"{server.url}/server-proxy/servers-info", headers=server.headers,
                            timeout=10).json()
        (entry,) = [s for s in info["server_processes"] if s["name"] == "tensorboard"]
        assert entry["launcher_entry"]["title"] == "TensorBoard"
        assert entry["new_browser_tab"] is True
        # the first request starts TensorBoard and waits until it answers (TensorFlow's
        # import included): allow for a busy machine
        page = requests.get(f"{server.url}/tensorboard/", headers=server.headers, timeout=150)
        assert page.status_code == 200, server.log()
        assert "<tf-tensorboard" in page.text or "TensorBoard" in page.text
        # its own links keep the prefix: an API call through the same path
        environment = requests.get(f"{server.url}/tensorboard/data/environment",
                                   headers=server.headers, timeout=30)
        assert environment.status_code == 200
        assert environment.json()["data_location"] == str(server.root)
        # the proxy does not let an anonymous browser in
        anonymous = requests.get(f"{server.url}/tensorboard/", timeout=10,
                                 allow_redirects=False)
        assert anonymous.status_code in (302, 403)
        children = Path(f"/proc/{server.process.pid}/task/{server.process.pid}/children")
        pids = [int(p) for p in children.read_text().split()] if children.exists() else []
        status = requests.get(f"{server.url}/credits/status", headers=server.headers,
                              timeout=10).json()
        assert status["tensorboard"] == {"url": f"{BASE_URL}tensorboard/"}
        # a stop with TensorBoard running is still jupyter_server's clean stop (the proxy's
        # supervisor would otherwise exit at once), and TensorBoard goes with the server
        server.process.send_signal(signal.SIGTERM)
        server.process.wait(30)
        assert "received signal 15, stopping" in server.log(), server.log()
        wait_for(lambda: not any(Path(f"/proc/{pid}").exists() for pid in pids), timeout=20,
                 what="TensorBoard to stop with its server")
