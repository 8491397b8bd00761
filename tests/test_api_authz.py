"""Who may call what: every operation of the credits API against every kind of caller.

One real hub for the module (tests/realhub.py). ``alice`` is the target user:
she has credits, a running CPU server and a stored event, each carrying a
marker no one else's answer may contain. The callers are alice herself, bob
(another user), the hub admin ("admin"), alice's single-user server (its own
``JUPYTERHUB_API_TOKEN``), nobody (no token) and a Prometheus-like service
whose only credits scope is ``custom:credits:metrics`` (with access to the
service, as the README's Prometheus role has).

``MATRIX`` is the whole policy in one table: one row per operation (method and
path as written in ``openapi.yaml``, ``/metrics`` included), one expected
answer per caller. The operations come from the spec file at test time, so an
endpoint added to the spec without a row fails
``test_every_operation_in_the_spec_has_a_row`` instead of escaping the matrix.
Writes use bodies that change nothing: no-ops, or bodies the endpoint refuses
by validation, so a 403 shows the scope is checked before the body is read,
and a caller who gets past it sees a 4xx that is not 401/403.
"""

from __future__ import annotations

import re
import secrets
from pathlib import Path
from typing import NamedTuple

import pytest
import requests
import yaml

import jupyterhub_credits.service.api as api_package

SPEC_PATH = Path(api_package.__file__).parent / "openapi.yaml"

#: The Prometheus-like caller: a service whose role has the metrics scope and, as every
#: client of a hub service needs, access to the service — no other credits scope.
METRICS_TOKEN = secrets.token_hex(24)
pytestmark = [
    pytest.mark.postgres,
    pytest.mark.slow,
    pytest.mark.hub(extra_config=f"""
        c.JupyterHub.services.append({{"name": "prometheus", "api_token": {METRICS_TOKEN!r}}})
        c.JupyterHub.load_roles.append({{
            "name": "authz-metrics-only", "services": ["prometheus"],
            "scopes": ["custom:credits:metrics", "access:services!service=credits"]}})
    """),
]

#: Markers of alice's account data: none may appear in an answer to anyone but
#: alice, her server or an admin.
SECRET_REASON = f"authz-secret-{secrets.token_hex(6)}"
SECRET_EVENT_KEY = f"authz-event-{secrets.token_hex(6)}"
ALICE_GRANT_UNITS = 4_321_987  # 4321.987 credits: a balance no one else has
ALICE_DATA = (SECRET_REASON, SECRET_EVENT_KEY, "user:alice", "4321.99", "4320.99")

CALLERS = ("self", "other", "admin", "server", "anon", "metrics")
#: The callers allowed to see alice's data.
ALICE_READERS = {"self", "admin", "server"}

#: Values for path parameters: alice, her default server, a transfer that does not exist.
PATH_VALUES = {"user": "alice", "server": "default", "id": "999999999"}
NO_SERVER = {"server": "no-such-server"}

#: A refusal by validation, not by authorisation: an empty reason, a zero amount.
BAD_MONEY = {"user": "alice", "amount": "0", "reason": "", "key": "authz-refused"}


class Row(NamedTuple):
    """One operation: what each caller gets (``CALLERS`` order), and how it is called.

    Cells: ``2xx``; an exact status (``401``, ``403``, ``404``); ``pass`` — past
    authorisation: any answer below 500 except 401 and 403 (a write refused by
    validation, or done as a no-op).
    """

    expected: str
    body: object = None
    params: dict | None = None  # path parameter values replacing PATH_VALUES
    query: dict | None = None


#: The authorisation matrix: the common rows, then every operation.
#               self   other  admin  server anon   metrics
PUBLIC      = "2xx    2xx    2xx    2xx    2xx    2xx"
USER_READ   = "2xx    2xx    2xx    2xx    401    403"  # the caller's own data
ALICE_READ  = "2xx    403    2xx    2xx    401    403"  # alice's data, asked for by name
ADMIN_ONLY  = "403    403    2xx    403    401    403"
ADMIN_WRITE = "403    403    pass   403    401    403"  # admin: refused by validation, or a no-op
MATRIX: dict[tuple[str, str], Row] = {
    ("GET", "/health"): Row(PUBLIC),
    ("GET", "/api/openapi.yaml"): Row(PUBLIC),
    ("GET", "/api/openapi.json"): Row(PUBLIC),
    ("GET", "/metrics"): Row("403    403    2xx    403    401    2xx"),
    # --- the caller's own --------------------------------------------------------------------
    ("GET", "/api/me"): Row(USER_READ),
    ("GET", "/api/me/lots"): Row(USER_READ),
    ("GET", "/api/me/history"): Row(USER_READ),
    ("GET", "/api/me/earnings"): Row(USER_READ),
    ("GET", "/api/sessions"): Row(USER_READ),
    # One server's status: always the caller's own (bob and admin have no session there).
    ("GET", "/api/sessions/{server}"): Row(USER_READ, query={"runs": SECRET_EVENT_KEY}),
    # Prices and quotas: any authenticated caller (the spec says so), services included.
    ("GET", "/api/catalog"): Row("2xx    2xx    2xx    2xx    401    2xx"),
    ("GET", "/api/leaderboard"): Row(USER_READ),
    # Own events: an empty batch stores nothing.
    ("POST", "/api/events"): Row("2xx    2xx    2xx    2xx    401    403", body=[]),
    # Own sessions: bob and admin have none; the server's token spends for its owner only
    # (extend and auto-extend from JupyterLab).
    ("POST", "/api/sessions/{server}/extend"):
        Row("2xx    404    404    2xx    401    403", body={"auto_extend": False}),
    ("POST", "/api/sessions/{server}/stop"):
        Row("404    404    404    404    401    403", body={}, params=NO_SERVER),
    # --- alice's, by name ---------------------------------------------------------------------
    ("GET", "/api/users/{user}"): Row(ALICE_READ),
    ("GET", "/api/users/{user}/lots"): Row(ALICE_READ),
    ("GET", "/api/users/{user}/history"): Row(ALICE_READ),
    ("GET", "/api/users/{user}/earnings"): Row(ALICE_READ),
    # --- admin ----------------------------------------------------------------------------------
    ("GET", "/api/admin/accounts"): Row(ADMIN_ONLY),
    ("POST", "/api/admin/grant"): Row(ADMIN_WRITE, body=BAD_MONEY),
    ("POST", "/api/admin/deduct"): Row(ADMIN_WRITE, body=BAD_MONEY),
    ("POST", "/api/admin/bulk/preview"): Row(ADMIN_WRITE, body={
        "operation": "grant", "amount": "1", "reason": "authz", "users": ["alice"]}),
    ("POST", "/api/admin/bulk"): Row(ADMIN_WRITE, body={
        "operation": "no-such-operation", "amount": "1", "reason": "authz", "users": ["alice"],
        "key": "authz-refused"}),
    ("GET", "/api/admin/transfers"): Row(ADMIN_ONLY),
    ("POST", "/api/admin/transfers/{id}/reverse"):
        Row(ADMIN_WRITE, body={"reason": "", "key": "authz-refused"}),
    ("GET", "/api/admin/sessions"): Row(ADMIN_ONLY),
    ("POST", "/api/admin/sessions/{user}/{server}/stop"):
        Row(ADMIN_WRITE, body={}, params=NO_SERVER),
    ("GET", "/api/admin/stats"): Row(ADMIN_ONLY, query={"days": "1"}),
    ("GET", "/api/admin/export.csv"): Row(ADMIN_ONLY),
    ("GET", "/api/admin/verify"): Row(ADMIN_ONLY),
    ("POST", "/api/admin/verify"): Row(ADMIN_WRITE, body={}),  # a read-only check, in the background
    ("GET", "/api/accounts/{user}/freeze"): Row(ADMIN_ONLY),
    ("POST", "/api/accounts/{user}/freeze"): Row(ADMIN_WRITE, body={"reason": 7}),
    ("DELETE", "/api/accounts/{user}/freeze"): Row(ADMIN_WRITE),  # alice is not frozen
    ("POST", "/api/accounts/{user}/unfreeze"): Row(ADMIN_WRITE, body={}),
}

METHODS = ("get", "put", "post", "delete", "patch", "head", "options")


def spec_operations() -> set[tuple[str, str]]:
    """(METHOD, path) of every operation in the shipped openapi.yaml, read now."""
    spec = yaml.safe_load(SPEC_PATH.read_text())
    return {(method.upper(), path) for path, item in (spec.get("paths") or {}).items()
            for method in item if method in METHODS}


def expected_cells(row: Row) -> dict[str, str]:
    cells = row.expected.split()
    assert len(cells) == len(CALLERS), row
    return dict(zip(CALLERS, cells))


def status_matches(cell: str, status: int) -> bool:
    if cell == "2xx":
        return 200 <= status < 300
    if cell == "pass":
        return status < 500 and status not in (401, 403)
    return status == int(cell)


def concrete_path(template: str, params: dict | None) -> str:
    values = {**PATH_VALUES, **(params or {})}

    def value(match: re.Match) -> str:
        name = match.group(1)
        assert name in values, f"no value for path parameter {{{name}}} in {template}"
        return values[name]

    return re.sub(r"\{([^}]+)\}", value, template)


# --- the hub's callers and alice's data --------------------------------------------------------


@pytest.fixture(scope="module")
def tokens(hub):
    """Each caller's token (None: no token); alice has credits, a server and an event."""
    hub.ledger.grant("alice", ALICE_GRANT_UNITS, key="authz:alice", reason=SECRET_REASON,
                     actor="test")
    alice = hub.user_token("alice")
    session = hub.running_server("alice", image="tf-2.21-cpu", gpu_type="none", gpus=0,
                                 hours="1")
    assert session is not None
    server = hub.server_environment("alice")["JUPYTERHUB_API_TOKEN"]
    stored = hub.credits_api("POST", "/events", token=alice, json=[
        {"kind": "notebook_activity", "key": SECRET_EVENT_KEY,
         "payload": {"active_minutes": 1}}])
    assert stored.status_code == 200, stored.text
    return {"self": alice, "other": hub.user_token("bob"), "admin": hub.user_token("admin"),
            "server": server, "anon": None, "metrics": METRICS_TOKEN}


def call(hub, caller_token: str | None, method: str, path: str, row: Row) -> requests.Response:
    headers = {"Authorization": f"token {caller_token}"} if caller_token else {}
    kwargs = {} if row.body is None else {"json": row.body}
    return requests.request(method, f"{hub.url}/services/credits{path}", headers=headers,
                            params=row.query, timeout=30, allow_redirects=False, **kwargs)


# --- the matrix --------------------------------------------------------------------------------


def test_every_operation_in_the_spec_has_a_row():
    missing = sorted(spec_operations() - set(MATRIX))
    assert not missing, f"operations in openapi.yaml without a row in MATRIX: {missing}"


def test_every_row_is_documented_in_the_spec():
    """The contract's endpoints, ``/metrics`` included, are all in openapi.yaml."""
    undocumented = sorted(set(MATRIX) - spec_operations())
    assert not undocumented, f"rows of MATRIX missing from openapi.yaml: {undocumented}"


def test_the_markers_are_in_alices_own_answers(hub, tokens):
    """The leak check looks for something that is there when the data is shown."""
    own = {path: hub.credits_api("GET", path, token=tokens["self"])
           for path in ("/me", "/me/earnings", "/me/history")}
    assert own["/me"].json()["available"] == "4320.99", own["/me"].text
    assert SECRET_EVENT_KEY in own["/me/earnings"].text
    assert SECRET_REASON in own["/me/history"].text, own["/me/history"].text[:500]


@pytest.mark.parametrize("caller", CALLERS)
@pytest.mark.parametrize("method, path", sorted(MATRIX), ids=lambda v: v)
def test_matrix(hub, tokens, method, path, caller):
    row = MATRIX[(method, path)]
    cell = expected_cells(row)[caller]
    response = call(hub, tokens[caller], method, concrete_path(path, row.params), row)
    assert status_matches(cell, response.status_code), (
        f"{method} {path} as {caller}: expected {cell}, got {response.status_code}: "
        f"{response.text[:500]}")
    if response.status_code >= 400:
        error = response.json()  # every error is JSON {"status", "message"}
        assert error["status"] == response.status_code and error["message"], error
    if caller not in ALICE_READERS:
        spec = SPEC_PATH.read_text()  # its examples may hold a marker ("user:alice")
        leaked = [marker for marker in ALICE_DATA
                  if marker in response.text and marker not in spec]
        assert not leaked, f"{method} {path} as {caller} shows alice's data {leaked}"
