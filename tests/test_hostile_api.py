"""The credits service under hostile input, over real HTTP, in this process.

The service is the real one (``CreditsService.make_context`` / ``make_app`` /
``make_server``: its handlers, its ``HubOAuth``, its HTTP server limits) on a
SQLite ledger; only the hub is a stand-in, a small Tornado app that answers the
two calls the service makes of it: "whose token is this?" (``GET
/hub/api/user``) and "who is this user?" (``GET /hub/api/users/{name}``).
Both run on one event loop in a background thread; the tests call them with
``requests``, as any client would.
"""

from __future__ import annotations

import json
import socket
import time
from datetime import datetime, timezone
from urllib.parse import quote

import pytest
import requests

from jupyterhub_credits.earning.decide import MAX_KEY_LENGTH
from jupyterhub_credits.earning.store import MAX_BATCH, MAX_PAYLOAD_BYTES
from jupyterhub_credits.service.api.events import MAX_BODY_BYTES
from jupyterhub_credits.service.app import CreditsService
from tests.service_thread import ACCESS, PREFIX, ServiceThread

SERVICE_TOKEN = "service-token-0123456789"
#: Nothing a refusal says should be longer than this (it quotes at most ~40 characters).
SHORT = 300


def user_model(name: str, *scopes: str) -> dict:
    return {"kind": "user", "name": name, "admin": False, "groups": [], "servers": {},
            "scopes": list(scopes)}


def own_scopes(name: str) -> tuple[str, ...]:
    return (ACCESS, *(f"custom:credits:{s}!user={name}" for s in ("read", "spend", "events")))


#: token → the hub's model of its owner.
TOKENS = {
    "alice-token": user_model("alice", *own_scopes("alice")),
    "admin-token": user_model("root", ACCESS, "custom:credits:admin"),
    # Known to the hub, but without access to the credits service.
    "outsider-token": user_model("outsider", "custom:credits:read!user=outsider"),
}
#: The hub's users, by name (what GET /hub/api/users/{name} answers).
HUB_USERS = {"alice": TOKENS["alice-token"], "a%41b": user_model("a%41b")}


class RunningService(ServiceThread):
    """The credits service on a SQLite ledger and a stand-in hub (tests/service_thread.py)."""

    def __init__(self, tmp_path, **config):
        super().__init__(f"sqlite:///{tmp_path / 'credits.sqlite'}", tokens=TOKENS,
                         users=HUB_USERS, service_token=SERVICE_TOKEN, **config)
        self.url = self.base_url + PREFIX.rstrip("/")

    def call(self, method: str, path: str, token: str | None = "alice-token", **kwargs):
        headers = kwargs.pop("headers", {})
        if token:
            headers["Authorization"] = f"token {token}"
        kwargs.setdefault("allow_redirects", False)
        return requests.request(method, self.url + path, headers=headers, timeout=60, **kwargs)


@pytest.fixture(scope="module")
def service(tmp_path_factory):
    with RunningService(tmp_path_factory.mktemp("service")) as running:
        running.context.ledger.grant("alice", 100_000, key="grant:alice", reason="test",
                                     actor="test")
        yield running


def now_iso() -> str:
    return datetime.now(timezone.utc).isoformat()


def refusal(response, status: int) -> str:
    """The message of a JSON refusal with ``status``; checks it is short."""
    assert response.status_code == status, response.text[:2000]
    body = response.json()
    assert body["status"] == status
    assert len(body["message"]) < SHORT, body["message"][:2000]
    return body["message"]


# --- huge numbers ------------------------------------------------------------------------------


@pytest.mark.parametrize("number", ["1e999999999", "1E+999999999999999999", "9" * 4000])
def test_extend_with_a_huge_number_of_hours_is_a_quick_400(service, number):
    started = time.perf_counter()
    response = service.call("POST", "/api/sessions/default/extend",
                            data=f'{{"hours": {number}}}')
    elapsed = time.perf_counter() - started
    assert "more than 100000 hours" in refusal(response, 400)
    assert elapsed < 5  # the first of them built a billion-character string on the loop


def test_bad_bodies_are_400s_with_a_message(service):
    for body in ["[" * 100_000, '{"hours": ' + "[" * 100_000, '{"' + "x" * 100_000 + '": 1}']:
        message = refusal(service.call("POST", "/api/sessions/default/extend", data=body), 400)
        assert "x" * 50 not in message
    for number in ("Infinity", "-Infinity", "NaN"):  # json.loads reads these as floats
        message = refusal(service.call("POST", "/api/sessions/default/extend",
                                       data=f'{{"hours": {number}}}'), 400)
        assert "not a float" in message
    message = refusal(service.call("POST", "/api/sessions/default/extend",
                                   json={"auto_extend": "y" * 100_000}), 400)
    assert "auto_extend" in message and "y" * 50 not in message
    # Query arguments are the caller's input too.
    message = refusal(service.call("GET", "/api/me/earnings", params={"limit": "9" * 5000}), 400)
    assert "limit" in message
    message = refusal(service.call("GET", "/api/me/earnings", params={"limit": "z" * 5000}), 400)
    assert "z" * 50 not in message
    message = refusal(service.call("GET", "/api/" + "n" * 5000), 404)
    assert "n" * 150 not in message


# --- a batch of events: one outcome each, never a 500 ------------------------------------------


def test_invalid_events_are_rejected_one_by_one_and_never_fail_the_batch(service):
    batch = [
        {"kind": "notebook_activity", "key": "huge-minutes", "time": now_iso(),
         "payload": {"active_minutes": 10 ** 400}},
        {"kind": "notebook_activity", "key": "year-zero", "time": "0001-01-01T00:00:00+01:00",
         "payload": {"active_minutes": 5}},
        {"kind": "gpu_utilization", "key": "minute-zero", "time": now_iso(),
         "payload": {"minute": "0001-01-01T00:00:00+01:00",
                     "gpus": [{"index": 0, "util": 90}]}},
        {"kind": "training_run", "key": "endless-run", "time": now_iso(),
         "payload": {"duration_s": 1e300}},
        {"kind": "training_run", "key": "huge-steps", "time": now_iso(),
         "payload": {"duration_s": 300, "steps": 10 ** 4000}},
        {"kind": 10 ** 4000, "key": "numeric-kind"},
        {"kind": "k" * 100_000, "key": "long-kind"},
        {"kind": "notebook_activity", "key": "long-field", "f" * 100_000: 1},
        {"kind": "notebook_activity", "key": "long-time", "time": "t" * 100_000},
        {"kind": "notebook_activity", "key": "deep", "time": now_iso(),
         "payload": {"active_minutes": 5, "deep": json.loads("[" * 500 + "]" * 500)}},
    ]
    response = service.call("POST", "/api/events", data=json.dumps(batch))
    assert response.status_code == 200, response.text[:2000]
    answers = response.json()
    assert [a["key"] for a in answers] == [e["key"] for e in batch]
    assert all(a["outcome"] == "rejected" for a in answers), answers
    for answer in answers:
        assert len(answer["reason"]) < SHORT, answer["reason"][:2000]
        assert not any(c * 50 in answer["reason"] for c in "kft9")
    reasons = {a["key"]: a["reason"] for a in answers}
    assert "active_minutes" in reasons["huge-minutes"]
    assert "out of range" in reasons["year-zero"] and "out of range" in reasons["minute-zero"]
    assert "duration_s" in reasons["endless-run"]
    assert "unknown event kind" in reasons["numeric-kind"]
    assert "unknown field" in reasons["long-field"]
    # The batch was stored: sent again, each is a duplicate (or, unstored, rejected again).
    again = service.call("POST", "/api/events", data=json.dumps(batch))
    assert again.status_code == 200 and len(again.json()) == len(batch)


# --- request bodies ------------------------------------------------------------------------------


def test_the_body_limit_is_the_largest_batch_and_a_config_trait():
    assert MAX_BODY_BYTES == MAX_BATCH * (MAX_PAYLOAD_BYTES + 2048) < 20_000_000
    assert CreditsService().max_body_size == MAX_BODY_BYTES
    assert CreditsService(max_body_size=1000).max_body_size == 1000


def raw_post(service, path: str, content_length: int) -> bytes:
    """Send only the headers of a POST announcing ``content_length`` bytes; the answer."""
    port = int(service.url.split(":")[2].split("/")[0])
    with socket.create_connection(("127.0.0.1", port), timeout=10) as connection:
        connection.sendall(
            f"POST {PREFIX}{path} HTTP/1.1\r\nHost: 127.0.0.1\r\n"
            f"Authorization: token alice-token\r\nContent-Type: application/json\r\n"
            f"Content-Length: {content_length}\r\n\r\n".encode())
        return connection.recv(4096)


def test_a_body_over_the_limit_is_refused_before_it_is_read(service):
    # Not one byte of the body is sent: the answer comes from the Content-Length alone
    # (before, the service waited for all 18 MB, and would have for 100 MB).
    answer = raw_post(service, "api/events", MAX_BODY_BYTES + 1)
    assert answer.startswith(b"HTTP/1.1 400"), answer


def test_a_body_just_over_a_configured_limit_is_refused(tmp_path):
    with RunningService(tmp_path, max_body_size=1000) as small:
        # Announced, not sent: the server answers and closes at once, so a client still
        # sending the body could see its connection reset instead of the answer.
        assert raw_post(small, "api/events", 1001).startswith(b"HTTP/1.1 400")
        assert small.call("POST", "/api/events", data=b"[" + b" " * 998 + b"]").json() == []


def test_the_largest_legitimate_batch_is_taken(service):
    def event(i: int) -> dict:
        key = f"max-{i:04d}-".ljust(MAX_KEY_LENGTH, "k")
        return {"kind": "notebook_activity", "key": key, "time": now_iso(),
                "payload": {"active_minutes": 1, "note": ""}}

    batch = [event(i) for i in range(MAX_BATCH)]
    padding = MAX_PAYLOAD_BYTES - len(json.dumps(batch[0]["payload"]))
    for item in batch:
        item["payload"]["note"] = "n" * padding
        assert len(json.dumps(item["payload"])) == MAX_PAYLOAD_BYTES
    body = json.dumps(batch).encode()
    assert 16_000_000 < len(body) <= MAX_BODY_BYTES
    response = service.call("POST", "/api/events", data=body)
    assert response.status_code == 200, response.text[:2000]
    assert len(response.json()) == MAX_BATCH


# --- path arguments are decoded once ------------------------------------------------------------


def open_session(service, server_name: str):
    store = service.context.sessions
    session = store.start(user="alice", server_name=server_name, account="user:alice",
                          image="tf-2.21-cpu", gpu_type="none", gpus=0, rate_per_hour=1_000,
                          hold_units=1_000, actor="test")
    return store.mark_ready(session.key)


@pytest.mark.parametrize("server_name", ["a%2Fb", "a%b", "50%25 off"])
def test_a_server_name_with_percent_signs_is_addressed_as_itself(service, server_name):
    open_session(service, server_name)
    response = service.call("POST", f"/api/sessions/{quote(server_name, safe='')}/extend",
                            json={"auto_extend": True})
    assert response.status_code == 200, response.text
    assert response.json()["session"]["server"] == server_name


def test_a_user_name_with_percent_signs_is_addressed_as_itself(service):
    # "a%41b" in the URL is a%2541b; decoded twice it became "aAb", a user the hub does not know.
    path = "/api/users/" + quote("a%41b", safe="")
    response = service.call("GET", path, token="admin-token")
    assert response.status_code == 200, response.text
    assert response.json()["user"] == "a%41b"
    frozen = service.call("POST", "/api/accounts/" + quote("a%41b", safe="") + "/freeze",
                          token="admin-token", json={"reason": "test"})
    assert frozen.status_code == 200, frozen.text
    assert service.context.earning.is_frozen("a%41b")
    assert not service.context.earning.is_frozen("aAb")
    assert "no such user" in refusal(
        service.call("GET", "/api/users/" + quote("z" * 5000), token="admin-token"), 404)


# --- the home page identifies its caller without blocking ---------------------------------------


def test_the_home_page_asks_the_hub_without_blocking_the_event_loop(service, monkeypatch):
    def blocking_call(*args, **kwargs):
        raise AssertionError("a synchronous hub round trip on the event loop")

    # HubAuth's synchronous path (get_user(sync=True)) runs through _synchronize.
    monkeypatch.setattr(service.hub_auth, "_synchronize", blocking_call)
    home = service.call("GET", "/")
    assert home.status_code == 200 and "My credits" in home.text, home.text
    anonymous = service.call("GET", "/", token=None)
    assert anonymous.status_code == 302 and "/hub/api/oauth2/authorize" in \
        anonymous.headers["Location"]
    assert service.call("GET", "/", token="outsider-token").status_code == 403
    assert service.call("GET", "/api/me").status_code == 200
