"""Cross-site request forgery: a browser's cookie alone never makes a credits write.

One real hub for the module (tests/realhub.py). alice and the admin log in
the way a browser does: the hub's login form, then the credits page, which
runs the service's OAuth dance and leaves the service's cookie and its
``_xsrf`` cookie. For every write in ``openapi.yaml`` (POST, PUT, PATCH,
DELETE), sent with a body that would change something: without the
``X-XSRFToken`` header, with a wrong one or with another person's, the
service refuses it (401/403; HubOAuth then ignores the cookie) and the
credits database is as it was; with the token the page hands its scripts
(``data-xsrf`` on ``#credits-page``) it is done. A caller with a token
(``Authorization: token ...``) needs no XSRF token: no browser sends that
header by itself.
"""

from __future__ import annotations

import re
from concurrent.futures import ThreadPoolExecutor
from html.parser import HTMLParser
from pathlib import Path
from typing import Callable, NamedTuple

import pytest
import requests
import yaml
from sqlalchemy import MetaData, select

import jupyterhub_credits.service.api as api_package
from tests.realhub import log_in

pytestmark = [pytest.mark.postgres, pytest.mark.slow]

SPEC_PATH = Path(api_package.__file__).parent / "openapi.yaml"
WRITE_METHODS = ("post", "put", "patch", "delete")
#: Columns the meter moves on its own while sessions run: not a write of the request's.
VOLATILE = {"billed_until", "warnings"}
REFUSED = (401, 403)


def admin_freeze(hub, world):
    """Make alice frozen, so that lifting the freeze would change something."""
    response = hub.credits_api("POST", "/accounts/alice/freeze", token=world["admin_token"],
                               json={"reason": "xsrf test"})
    assert response.status_code == 200, response.text


class Write(NamedTuple):
    """A write as a browser page would send it: who, with what body and path values."""

    browser: str  # "alice" or "admin"
    body: object = None
    params: dict | None = None
    prepare: Callable | None = None  # (hub, world): set the stage so the write would act
    acts: bool = True  # accepted, it changes the credits database


def grant_body(key: str) -> dict:
    return {"user": "alice", "amount": "2", "reason": "xsrf test", "key": key}


#: Every cookie-authenticated write, with a body that changes the ledger if accepted.
WRITES: dict[tuple[str, str], Write] = {
    ("POST", "/api/events"): Write("alice", body=[
        {"kind": "notebook_activity", "key": "xsrf-event", "payload": {"active_minutes": 1}}]),
    ("POST", "/api/sessions/{server}/extend"): Write("alice", body={"hours": "0.5"}),
    ("POST", "/api/sessions/{server}/stop"): Write("alice", body={}),
    ("POST", "/api/admin/grant"): Write("admin", body=grant_body("xsrf-grant")),
    ("POST", "/api/admin/deduct"): Write("admin", body=grant_body("xsrf-deduct")),
    ("POST", "/api/admin/bulk/preview"): Write("admin", acts=False, body={
        "operation": "grant", "amount": "1", "reason": "xsrf test", "users": ["alice"]}),
    ("POST", "/api/admin/bulk"): Write("admin", body={
        "operation": "grant", "amount": "1", "reason": "xsrf test", "users": ["alice", "bob"],
        "key": "xsrf-bulk"}),
    ("POST", "/api/admin/transfers/{id}/reverse"):
        Write("admin", body={"reason": "xsrf test", "key": "xsrf-reverse"}),
    ("POST", "/api/admin/sessions/{user}/{server}/stop"):
        Write("admin", body={"reason": "xsrf test"}, params={"user": "bob"}),
    ("POST", "/api/admin/verify"): Write("admin", body={}, acts=False),  # starts a check
    ("POST", "/api/accounts/{user}/freeze"): Write("admin", body={"reason": "xsrf test"}),
    ("DELETE", "/api/accounts/{user}/freeze"): Write("admin", prepare=admin_freeze),
    ("POST", "/api/accounts/{user}/unfreeze"): Write("admin", body={}, prepare=admin_freeze),
}


def spec_writes() -> set[tuple[str, str]]:
    spec = yaml.safe_load(SPEC_PATH.read_text())
    return {(method.upper(), path) for path, item in (spec.get("paths") or {}).items()
            for method in item if method in WRITE_METHODS}


class CreditsPage(HTMLParser):
    """The ``data-xsrf`` attribute of ``#credits-page``."""

    xsrf: str | None = None

    def handle_starttag(self, tag, attrs):
        attributes = dict(attrs)
        if attributes.get("id") == "credits-page":
            self.xsrf = attributes.get("data-xsrf")


def browser_login(hub, user: str) -> tuple[requests.Session, str]:
    """``user``'s browser, logged in at the hub and the service; the page's XSRF token."""
    browser, answer = log_in(hub.url, user)
    assert answer.status_code == 200, answer.text[:500]
    page = browser.get(f"{hub.url}/services/credits/", timeout=30)
    assert page.status_code == 200 and page.url == f"{hub.url}/services/credits/", \
        (page.status_code, page.url, page.text[:500])
    parser = CreditsPage()
    parser.feed(page.text)
    assert parser.xsrf, "My credits has no data-xsrf on #credits-page"
    assert parser.xsrf == browser.cookies.get("_xsrf", path="/services/credits/")
    return browser, parser.xsrf


def snapshot(hub) -> dict[str, list]:
    """Every row of the credits database, less what the meter moves by itself."""
    metadata = MetaData()
    metadata.reflect(hub.ledger.engine)
    rows = {}
    with hub.ledger.engine.connect() as conn:
        for name, table in sorted(metadata.tables.items()):
            columns = [c for c in table.columns if c.name not in VOLATILE]
            rows[name] = sorted(map(repr, conn.execute(select(*columns)).all()))
    return rows


def changes(before: dict, after: dict) -> dict:
    return {name: {"gone": sorted(set(before.get(name, [])) - set(rows)),
                   "new": sorted(set(rows) - set(before.get(name, [])))}
            for name, rows in after.items() if rows != before.get(name)}


# --- the hub's people ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def world(hub):
    """alice and bob with credits and a running CPU server each; browsers for alice and admin."""
    hub.grant("alice", 50)
    hub.grant("bob", 50)
    reversible = hub.ledger.grant("alice", 3_000, key="xsrf:reversible", reason="to reverse",
                                  actor="test").transfer
    # Both at once: the hub answers a spawn request only when the server is up (or slow).
    with ThreadPoolExecutor(2) as pool:
        spawns = pool.map(lambda user: hub.spawn(user, image="tf-2.21-cpu", gpu_type="none",
                                                 gpus=0, hours="1"), ("alice", "bob"))
        assert all(r.status_code in (201, 202) for r in spawns)
    for user in ("alice", "bob"):
        hub.wait_ready(user)
    alice, alice_xsrf = browser_login(hub, "alice")
    admin, admin_xsrf = browser_login(hub, "admin")
    return {"browsers": {"alice": alice, "admin": admin},
            "xsrf": {"alice": alice_xsrf, "admin": admin_xsrf},
            "values": {"user": "alice", "server": "default", "id": str(reversible.id)},
            "admin_token": hub.user_token("admin"), "alice_token": hub.user_token("alice")}


def url_of(hub, world, path: str, params: dict | None) -> str:
    values = {**world["values"], **(params or {})}
    return f"{hub.url}/services/credits" + re.sub(r"\{([^}]+)\}", lambda m: values[m.group(1)],
                                                  path)


def verify_state(hub, world) -> dict:
    return hub.credits_api("GET", "/admin/verify", token=world["admin_token"]).json()


# --- tests ----------------------------------------------------------------------------------


def test_every_write_in_the_spec_has_a_row():
    missing = sorted(spec_writes() - set(WRITES))
    assert not missing, f"writes in openapi.yaml without a row in WRITES: {missing}"


def test_a_cookie_reads_without_an_xsrf_token(hub, world):
    me = world["browsers"]["alice"].get(f"{hub.url}/services/credits/api/me", timeout=10)
    assert me.status_code == 200 and me.json()["user"] == "alice", me.text


@pytest.mark.parametrize("method, path", list(WRITES), ids=lambda v: v)
def test_a_cookie_write_needs_the_xsrf_token(hub, world, method, path):
    write = WRITES[(method, path)]
    if write.prepare:
        write.prepare(hub, world)
    browser = world["browsers"][write.browser]
    url = url_of(hub, world, path, write.params)
    kwargs = {} if write.body is None else {"json": write.body}
    forgeries = {
        "no token": {},
        "a wrong token": {"X-XSRFToken": "2|forged|token|0"},
        "another person's token": {
            "X-XSRFToken": world["xsrf"]["admin" if write.browser == "alice" else "alice"]},
    }
    # The verify runs in memory, not in the database: watch its state (only here, as a
    # verify started by the accepted request below may finish at any time after it).
    watch = (lambda: verify_state(hub, world)) if path == "/api/admin/verify" else dict
    for what, headers in forgeries.items():
        before, verify_before = snapshot(hub), watch()
        forged = browser.request(method, url, headers=headers, timeout=30, **kwargs)
        assert forged.status_code in REFUSED, (
            f"{method} {path} with a cookie and {what}: {forged.status_code} {forged.text[:500]}")
        assert forged.json()["status"] == forged.status_code
        assert snapshot(hub) == before, (
            f"{method} {path} with {what} changed {changes(before, snapshot(hub))}")
        assert watch() == verify_before
    # The page's token: past authorisation, and the write is done (so the snapshot sees
    # what the forgeries would have changed).
    sent = browser.request(method, url, headers={"X-XSRFToken": world["xsrf"][write.browser]},
                           timeout=30, **kwargs)
    assert 200 <= sent.status_code < 300, (
        f"{method} {path} with the page's XSRF token: {sent.status_code} {sent.text[:500]}")
    if write.acts:
        assert snapshot(hub) != before, f"{method} {path} with the page's token changed nothing"


def test_a_token_needs_no_xsrf_token(hub, world):
    events = hub.credits_api("POST", "/events", token=world["alice_token"], json=[
        {"kind": "notebook_activity", "key": "xsrf-token-event", "payload": {"active_minutes": 1}}])
    assert events.status_code == 200 and events.json()[0]["key"] == "xsrf-token-event"
    freeze = hub.credits_api("POST", "/accounts/bob/freeze", token=world["admin_token"],
                             json={"reason": "token, no xsrf"})
    assert freeze.status_code == 200 and freeze.json()["frozen"] is True
