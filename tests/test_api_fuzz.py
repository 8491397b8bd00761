"""The credits API under generated input (schemathesis): never a server error.

Every operation in the shipped ``openapi.yaml`` gets requests schemathesis
builds from the spec — valid ones and deliberately invalid ones (wrong types,
out-of-range numbers, odd path segments, missing or extra fields) — sent to the
credits service of this module's own real hub (tests/realhub.py), once with the
admin's token (so the admin operations run, destructive ones included: this
hub is thrown away) and once with a plain user's. An answer of 500 or more
fails, whatever the caller: bad input is a 4xx with a message; and every
status must be one the spec documents for the operation.

Random generation rarely hits the text a database cannot store, so every
operation also gets it on purpose (``test_hostile_text_is_refused_not_a_500``):
each path parameter, string query parameter and text field of a body that the
operation would otherwise accept is replaced, one at a time, by a NUL
character (PostgreSQL text cannot hold it) and by a lone UTF-16 surrogate
(valid JSON as ``"\\ud800"``, not encodable as UTF-8).

Kept short and reproducible: examples per operation are capped
(``MAX_EXAMPLES``), generation is deterministic (the same cases every run), and
nothing goes to the network but this hub: no schemathesis cache or reports, no
example database, the spec read from the file (no remote references).
"""

from __future__ import annotations

import json
import uuid
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timezone
from pathlib import Path
from typing import NamedTuple

import pytest
import requests
import schemathesis
import yaml
from schemathesis.config import SchemathesisConfig
from schemathesis.specs.openapi.checks import status_code_conformance

import jupyterhub_credits.service.api as api_package

pytestmark = [pytest.mark.postgres, pytest.mark.slow]

SPEC_PATH = Path(api_package.__file__).parent / "openapi.yaml"
#: Fuzzing examples per operation and caller (the examples and coverage phases add their own).
MAX_EXAMPLES = 8

CONFIG = {
    "generation": {"max-examples": MAX_EXAMPLES, "deterministic": True, "database": "none"},
    "phases": {"stateful": {"enabled": False}},
    "cache": {"enabled": False},
    "reports": {"junit": {"enabled": False}, "har": {"enabled": False},
                "vcr": {"enabled": False}},
}


@pytest.fixture(scope="module")
def callers(hub):
    """The admin's token and a plain user's (carol: credits and a running CPU server)."""
    hub.grant("carol", 100)
    with ThreadPoolExecutor(1) as pool:  # her server starts while the tokens are made
        spawned = pool.submit(hub.running_server, "carol", image="tf-2.21-cpu", gpu_type="none",
                              gpus=0, hours="1")
        tokens = {"admin": hub.user_token("admin"), "carol": hub.user_token("carol")}
        assert spawned.result() is not None
    return tokens


@pytest.fixture(scope="module")
def path_values(hub, callers):
    """Path parameters that name real things: carol, her server, a transfer of hers."""
    response = hub.api("POST", "/groups/fuzzers", json={"users": ["carol"]})  # a pool below
    assert response.status_code == 201, response.text
    grant = hub.ledger.grant("carol", 5_000, key="fuzz:reversible", reason="fuzz", actor="test")
    return {"user": "carol", "server": "default", "id": str(grant.transfer.id)}


# --- hostile text, on purpose ---------------------------------------------------------------

#: Text for a JSON body: NUL, and a lone surrogate (json.dumps writes it as "\ud800").
HOSTILE_TEXT = {"nul": "a\x00b", "surrogate": "\ud800"}
#: The same, as already-encoded URL text (a surrogate's would-be UTF-8 bytes are invalid).
HOSTILE_URL = {"nul": "a%00b", "surrogate": "%ED%A0%80"}
METHODS = ("get", "put", "post", "delete", "patch")


class Request(NamedTuple):
    """A request an operation accepts (or refuses only late: a server carol lacks)."""

    body: object = None
    params: dict | None = None  # path parameter values replacing ``path_values``


#: Requests that the writes with a body accept. In a body, "k" becomes a fresh key for each
#: request (the same key again answers as a duplicate before any text reaches the database)
#: and "NOW" the time. Carol's own stop names a server she lacks (her session is for the
#: operations after it); the admin's ends her session (the spec lists it after the others).
VALID: dict[tuple[str, str], list[Request]] = {
    ("POST", "/api/sessions/{server}/extend"): [
        Request({"hours": "0.25", "key": "k"}), Request({"auto_extend": False, "key": "k"})],
    ("POST", "/api/events"): [Request([
        {"kind": "notebook_activity", "key": "k", "time": "NOW",
         "payload": {"active_minutes": 1}},
        {"kind": "training_run", "key": "k",
         "payload": {"duration_s": 60, "logdir": "runs/1", "metrics": {"loss": 0.5}}}])],
    ("POST", "/api/accounts/{user}/freeze"): [Request({"reason": "fuzz"})],
    ("POST", "/api/sessions/{server}/stop"): [Request({"key": "k"}, {"server": "other"})],
    ("POST", "/api/admin/sessions/{user}/{server}/stop"): [Request({"reason": "fuzz", "key": "k"})],
    ("POST", "/api/admin/grant"): [
        Request({"user": "carol", "amount": "1", "reason": "fuzz", "key": "k",
                 "expires_in_days": 30}),
        Request({"pool": "fuzzers", "amount": "1", "reason": "fuzz", "key": "k"})],
    ("POST", "/api/admin/deduct"): [
        Request({"user": "carol", "amount": "0.01", "reason": "fuzz", "key": "k"})],
    ("POST", "/api/admin/bulk/preview"): [
        Request({"operation": "grant", "amount": "1", "reason": "fuzz", "users": ["carol"]}),
        Request({"operation": "grant", "amount": "1", "reason": "fuzz", "group": "fuzzers"}),
        Request({"operation": "deduct", "amount": "1", "reason": "fuzz",
                 "csv": "user,amount,reason\ncarol,0.01,fuzz\n"})],
    ("POST", "/api/admin/bulk"): [
        Request({"operation": "grant", "amount": "1", "reason": "fuzz", "users": ["carol"],
                 "key": "k"}),
        Request({"operation": "grant", "amount": "1", "reason": "fuzz",
                 "csv": "carol,0.01,fuzz\n", "key": "k"})],
    ("POST", "/api/admin/transfers/{id}/reverse"): [Request({"reason": "fuzz", "key": "k"})],
    ("POST", "/api/admin/verify"): [Request({})],
}


def spec_operations() -> list[tuple[str, str, dict]]:
    """(METHOD, path, operation with the path item's parameters) in the spec's order."""
    spec = yaml.safe_load(SPEC_PATH.read_text())
    operations = []
    for path, item in (spec.get("paths") or {}).items():
        for method, operation in item.items():
            if method in METHODS:
                parameters = [*item.get("parameters", []), *operation.get("parameters", [])]
                operations.append((method.upper(), path, {**operation, "parameters": parameters}))
    return operations


def text_fields(value, at=()):
    """Where ``value`` holds text: each place a tuple of keys and indexes."""
    if isinstance(value, str):
        yield at
    elif isinstance(value, dict):
        for key, item in value.items():
            yield from text_fields(item, (*at, key))
    elif isinstance(value, list):
        for index, item in enumerate(value):
            yield from text_fields(item, (*at, index))


def replaced(value, at, text):
    if not at:
        return text
    copy = dict(value) if isinstance(value, dict) else list(value)
    copy[at[0]] = replaced(value[at[0]], at[1:], text)
    return copy


def filled(value):
    """``value`` with each "k" a fresh key and each "NOW" the time."""
    if value == "k":
        return f"fuzz-{uuid.uuid4().hex}"
    if value == "NOW":
        return datetime.now(timezone.utc).isoformat()
    if isinstance(value, dict):
        return {key: filled(item) for key, item in value.items()}
    if isinstance(value, list):
        return [filled(item) for item in value]
    return value


def hostile_variants(method: str, path: str, operation: dict, path_values: dict):
    """(what, path values, query, body) of each request with one hostile text in it."""
    for request in VALID.get((method, path)) or [Request()]:
        values = {**path_values, **(request.params or {})}
        for parameter in operation["parameters"]:
            name, where = parameter.get("name"), parameter.get("in")
            for kind, text in HOSTILE_URL.items():
                if where == "path":
                    yield f"path {name} {kind}", {**values, name: text}, "", request.body
                elif where == "query" and parameter.get("schema", {}).get("type") == "string":
                    yield f"query {name} {kind}", values, f"?{name}={text}", request.body
        for at in text_fields(request.body):
            for kind, text in HOSTILE_TEXT.items():
                yield (f"body {'.'.join(map(str, at))} {kind}", values, "",
                       replaced(request.body, at, text))


OPERATIONS = spec_operations()


def test_every_write_with_a_body_has_a_valid_request():
    """So a new write's text fields get the hostile text too."""
    with_body = {(m, p) for m, p, operation in OPERATIONS if "requestBody" in operation}
    missing = sorted(with_body - set(VALID))
    assert not missing, f"writes with a body and no VALID request: {missing}"


@pytest.mark.parametrize("method, path, operation", OPERATIONS,
                         ids=[f"{m} {p}" for m, p, _ in OPERATIONS])
def test_hostile_text_is_refused_not_a_500(hub, callers, path_values, method, path, operation):
    failures = []
    for what, values, query, body in hostile_variants(method, path, operation, path_values):
        url = f"{hub.url}/services/credits" + path.format(**values) + query
        data = None if body is None else json.dumps(filled(body))
        for who, token in callers.items():
            response = requests.request(
                method, url, data=data, timeout=30,
                headers={"Authorization": f"token {token}", "Content-Type": "application/json"})
            if response.status_code >= 500:
                failures.append(f"{what} as {who}: {method} {path.format(**values)}{query} "
                                f"{data or ''} -> {response.status_code} {response.text[:120]}")
    assert not failures, f"{len(failures)} server errors:\n" + "\n".join(failures)


# --- generated input (schemathesis) ---------------------------------------------------------


#: Read at collection, so an operation added to the spec is fuzzed without a change here.
schema = schemathesis.openapi.from_path(SPEC_PATH, config=SchemathesisConfig.from_dict(CONFIG))


@schema.parametrize()
def test_no_server_errors(case, hub, callers):
    base_url = f"{hub.url}/services/credits"
    for who, token in callers.items():
        response = case.call(base_url=base_url, headers={"Authorization": f"token {token}"},
                             timeout=30)
        # (pytest 9.2 gives every operation's item the same node id: the message names it.)
        assert response.status_code < 500, (
            f"{case.operation.label} as {who}: {response.status_code} {response.text[:300]}\n"
            f"{case.as_curl_command(base_url=base_url)}")
        # And the status is one the spec lists for the operation.
        case.validate_response(response, checks=[status_code_conformance])
