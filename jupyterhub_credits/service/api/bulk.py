"""Admin: grant or deduct for many users at once — preview first, then apply.

``POST /api/admin/bulk/preview`` body::

    {"operation": "grant" | "deduct", "amount": "5", "reason": "...",
     "expires_in_days": n,                        # grant only, optional
     and exactly one target:
     "users": ["alice", "bob"]                    # one line per name
     | "group": "dl101"                           # one line per member, asked of the hub now
     | "csv": "user,amount,reason\\nalice,5,..."}  # a line per row; header optional

answers ``{"lines": [{"line", "user", "amount", "reason", "error"}], "count", "errors",
"total"}`` and writes nothing. In the CSV an empty amount or reason cell falls back
to the body's; ``line`` is the row's line in the text (its first, for a quoted
cell over several lines), otherwise the position in the list (from 1). A line is
an error (``"error"``: why) when its user is not a hub user (checked against one
listing of the hub's users when there are many), its amount is not an amount, it
has no reason, or — for a deduct — the user's available credits, less what earlier
lines take, do not cover it. ``total`` is what the valid lines move.

``POST /api/admin/bulk`` — the same body and ``"key"``: resolves the lines the same
way again and applies each valid line as its own ledger transfer under the key
``admin:<key>:<line>``, so a line never applies partly and a bad line never stops
the others; the same key again applies nothing twice (``"duplicate"``). Answers
``{"results": [{"line", "user", "amount", "status": "applied" | "duplicate" |
"error", "transfer_id", "message"}], "applied", "duplicates", "failed", "message"}``.

At most ``MAX_LINES`` lines (413 beyond) and ``MAX_CSV_CHARS`` characters of CSV
(413). Both need ``custom:credits:admin``.
"""

from __future__ import annotations

import asyncio
import csv
import io
from dataclasses import dataclass

from ...catalog.wording import credits_text
from ...ledger import LedgerError, format_amount, parse_amount
from ...ledger.amounts import InvalidAmount
from ...ledger.core import user_account
from ...ledger.errors import InvalidRequest
from ...quoting import quote_input
from ..auth import ADMIN
from ..hub import HubUnavailable
from .base import HUB_DOWN, APIError, APIHandler, actor_of
from .grants import (
    KEY_PREFIX,
    OPERATIONS,
    apply_admin,
    check_reason,
    group_members,
    parse_days,
    parse_key,
    parse_units,
    refusal_text,
)

#: The most lines one bulk request may have.
MAX_LINES = 10_000
#: The most characters of CSV text (10,000 lines of a name, an amount and a short reason).
MAX_CSV_CHARS = 2_000_000
#: Up to this many distinct names are looked up one by one (concurrently); more, and
#: the hub's whole user list is read once instead.
FEW_USERS = 20
TARGETS = ("users", "group", "csv")
#: How much of a bad cell a line shows back (names: as long as a valid one may be).
SHOWN = 100
NAME_SHOWN = 200


@dataclass
class Line:
    line: int
    user: str
    amount: object  # as given: the text or number that ``parse_amount`` reads
    reason: str
    units: int | None = None
    error: str | None = None

    @property
    def amount_text(self) -> str:
        if self.units is not None:
            return format_amount(self.units)
        if self.amount is None:
            return ""
        return str(self.amount)[:SHOWN] if isinstance(self.amount, str) else \
            quote_input(self.amount)

    def preview(self) -> dict:
        return {"line": self.line, "user": self.user[:NAME_SHOWN], "amount": self.amount_text,
                "reason": self.reason, "error": self.error}


@dataclass
class BulkRequest:
    operation: str
    amount: object  # the body's amount, or None (CSV lines may carry their own)
    reason: str
    expires_in_days: object
    target: str
    value: object


def parse_request(body: dict) -> BulkRequest:
    """The fields every bulk request has; 400 (413 for too much) when they are wrong."""
    operation = body.get("operation")
    if operation not in OPERATIONS:
        raise APIError(400, f'"operation" must be grant or deduct, not {quote_input(operation)}')
    targets = [name for name in TARGETS if name in body]
    if len(targets) != 1:
        raise APIError(400, 'give exactly one target: "users" (a list of hub names), '
                            '"group" (a hub group) or "csv" (user,amount,reason lines)')
    target = targets[0]
    value = body[target]
    if target == "users":
        if not isinstance(value, list):
            raise APIError(400, '"users" must be a list of hub user names')
        if len(value) > MAX_LINES:
            raise APIError(413, f"too many users: {len(value)}; at most {MAX_LINES} at once")
    elif target == "group":
        if not isinstance(value, str) or not value:
            raise APIError(400, f'"group" must be a hub group name, not {quote_input(value)}')
    elif not isinstance(value, str):
        raise APIError(400, '"csv" must be the CSV text (user,amount,reason lines)')
    elif len(value) > MAX_CSV_CHARS:
        raise APIError(413, f"the CSV is too long: at most {MAX_CSV_CHARS} characters")
    amount = body.get("amount")
    if target != "csv" or amount is not None:
        parse_units(amount)  # 400 now rather than on every line
    if operation == "grant":
        parse_days(body)
    elif body.get("expires_in_days") is not None:
        raise APIError(400, '"expires_in_days" is for grants only')
    try:
        reason = check_reason(body.get("reason"), required=target != "csv")
    except InvalidRequest as error:
        raise APIError(400, str(error)) from None
    return BulkRequest(operation, amount, reason, body.get("expires_in_days"), target, value)


def csv_lines(text: str, amount, reason: str) -> list[Line]:
    """The CSV's rows as lines: ``user,amount,reason``, a header row optional, blank rows
    skipped; empty amount and reason cells take the body's."""
    reader = csv.reader(io.StringIO(text.removeprefix("\ufeff"), newline=""))
    lines: list[Line] = []
    first_row = True
    previous = 0
    try:
        for cells in reader:
            start, previous = previous + 1, reader.line_num
            if not any(cell.strip() for cell in cells):
                continue
            names = [cell.strip().lower() for cell in cells]
            if first_row and names[0] == "user" and names[1:2] in ([], ["amount"]):
                first_row = False
                continue  # the header
            first_row = False
            if len(lines) >= MAX_LINES:
                raise APIError(413, f"too many lines in the CSV; at most {MAX_LINES} at once")
            line = Line(start, cells[0].strip(), amount, reason)
            if len(cells) > 3:
                line.error = f"{len(cells)} cells; expected user,amount,reason"
            if len(cells) > 1 and cells[1].strip():
                line.amount = cells[1].strip()
            if len(cells) > 2 and cells[2].strip():
                line.reason = cells[2].strip()
            lines.append(line)
    except csv.Error as error:
        raise APIError(400, f"the CSV cannot be read at line {reader.line_num}: {error}") \
            from None
    return lines


async def resolve(handler: APIHandler, request: BulkRequest) -> list[Line]:
    """The request's lines, each with its units or its error (hub users checked)."""
    known: set[str] | None = None
    if request.target == "group":
        members = await group_members(handler, request.value)
        if len(members) > MAX_LINES:
            raise APIError(413, f"group {quote_input(request.value)} has {len(members)} members; "
                                f"at most {MAX_LINES} at once")
        # Sorted: the same members give the same line numbers (and ledger keys) on a retry.
        lines = [Line(n, name, request.amount, request.reason)
                 for n, name in enumerate(sorted(members), start=1)]
        known = set(members)
    elif request.target == "users":
        lines = []
        for n, name in enumerate(request.value, start=1):
            line = Line(n, name if isinstance(name, str) else "", request.amount, request.reason)
            if not isinstance(name, str):
                line.error = f"not a user name: {quote_input(name)}"
            lines.append(line)
    else:
        lines = csv_lines(request.value, request.amount, request.reason)

    for line in lines:
        if line.error:
            continue
        try:
            user_account(line.user)
        except InvalidRequest as error:
            line.error = str(error)
            continue
        if line.amount is None:
            line.error = 'no amount: give one in the line or in "amount"'
            continue
        try:
            line.units = parse_amount(line.amount)
        except InvalidAmount as error:
            line.error = str(error)
            continue
        try:
            check_reason(line.reason, name="reason")
        except InvalidRequest as error:
            line.error = ('no reason: give one in the line or in "reason"' if not
                          line.reason.strip() else str(error))
    if known is None:
        known = await hub_users(handler, {line.user for line in lines if not line.error})
    for line in lines:
        if not line.error and line.user not in known:
            line.error = f"no such hub user: {quote_input(line.user)}"
    for line in lines:
        if line.error:
            line.units = None
    return lines


async def hub_users(handler: APIHandler, names: set[str]) -> set[str]:
    """Which of ``names`` the hub has: a request each for a few, one listing for many."""
    hub = handler.credits.hub
    try:
        if len(names) <= FEW_USERS:
            ordered = sorted(names)
            models = await asyncio.gather(*(hub.user(name) for name in ordered))
            return {name for name, model in zip(ordered, models) if model is not None}
        return names & await hub.user_names()
    except HubUnavailable:
        raise APIError(503, HUB_DOWN) from None


def check_balances(ledger, lines: list[Line]) -> None:
    """For a deduct preview: mark lines the user's available credits (less what the lines
    before take) do not cover. Blocking: run in a thread."""
    left: dict[str, int] = {}
    for line in lines:
        if line.error:
            continue
        if line.user not in left:
            left[line.user] = ledger.available(user_account(line.user))
        if line.units > left[line.user]:
            line.error = (f"insufficient funds: {line.user} has {format_amount(left[line.user])} "
                          f"credits available, {format_amount(line.units)} needed")
            line.units = None
        else:
            left[line.user] -= line.units


def apply_lines(ledger, request: BulkRequest, lines: list[Line], key: str, actor: str
                ) -> list[dict]:
    """Each valid line as its own transfer (``admin:<key>:<line>``), in order; every line
    reported. Blocking: run in a thread."""
    results = []
    for line in lines:
        result = {"line": line.line, "user": line.user[:NAME_SHOWN],
                  "amount": line.amount_text, "status": "error", "transfer_id": None,
                  "message": line.error}
        if line.error is None:
            op = {"op": request.operation, "key": f"{KEY_PREFIX}{key}:{line.line}",
                  "user": user_account(line.user), "amount": line.amount,
                  "reason": line.reason}
            if request.operation == "grant" and request.expires_in_days is not None:
                op["expires_in_days"] = request.expires_in_days
            try:
                done = apply_admin(ledger, op, actor=actor)
            except (LedgerError, InvalidAmount) as error:
                result["message"] = refusal_text(error)
            else:
                verb = "granted" if request.operation == "grant" else "deducted"
                result.update(
                    status="duplicate" if done.duplicate else "applied",
                    transfer_id=done.transfer.id,
                    message=(f"already {verb} by this request (transfer {done.transfer.id})"
                             if done.duplicate else
                             f"{verb} {credits_text(line.units)}"))
        results.append(result)
    return results


class BulkPreviewAPIHandler(APIHandler):
    async def post(self):
        self.require(ADMIN)
        body = self.json_body({"operation", "amount", "reason", "expires_in_days", *TARGETS})
        request = parse_request(body)
        lines = await resolve(self, request)
        if request.operation == "deduct":
            await self.run(check_balances, self.credits.ledger, lines)
        errors = sum(1 for line in lines if line.error)
        self.write_json({
            "lines": [line.preview() for line in lines],
            "count": len(lines),
            "errors": errors,
            "total": format_amount(sum(line.units for line in lines if line.units is not None)),
        })


class BulkApplyAPIHandler(APIHandler):
    async def post(self):
        model = self.require(ADMIN)
        body = self.json_body({"operation", "amount", "reason", "expires_in_days", "key",
                               *TARGETS})
        request = parse_request(body)
        key = parse_key(body)
        lines = await resolve(self, request)
        results = await self.run(apply_lines, self.credits.ledger, request, lines, key,
                                 actor_of(model))
        counts = {status: sum(1 for r in results if r["status"] == status)
                  for status in ("applied", "duplicate", "error")}
        message = (f"{counts['applied']} of {len(results)} lines applied"
                   + (f", {counts['duplicate']} already applied before" if counts["duplicate"]
                      else "")
                   + (f", {counts['error']} failed" if counts["error"] else "") + ".")
        self.write_json({"results": results, "applied": counts["applied"],
                         "duplicates": counts["duplicate"], "failed": counts["error"],
                         "message": message})


default_handlers = [
    (r"/api/admin/bulk/preview", BulkPreviewAPIHandler),
    (r"/api/admin/bulk", BulkApplyAPIHandler),
]
