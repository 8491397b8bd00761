"""Admin: give credits or take them away, once per idempotency key.

``POST /api/admin/grant`` and ``POST /api/admin/deduct``, body::

    {"user": "<hub name>" | "pool": "<hub group>", "amount": "10.5", "reason": "...",
     "key": "<1-100 characters>", "expires_in_days": n}   # expires_in_days: grant only

answer ``{"transfer": {...}, "duplicate": bool, "message": "..."}``. Needs
``custom:credits:admin`` (a user's own ``!user`` scopes never suffice). ``user``
is a hub user (404 when the hub has none by that name), ``pool`` a hub group whose
shared account (``group:<name>``) pays its members' sessions. The ledger key is
``admin:<key>``: the same key again answers with the first transfer
(``"duplicate": true``) and moves nothing; the same key with a different request
is a 409. A deduct beyond the available balance is a 402 with the ledger's message.

Also the rules every admin write of this API shares (``bulk``, ``transfers``):
the key, the reason, amounts, the hub look-ups and what each ledger refusal means.
"""

from __future__ import annotations

import re
from decimal import Decimal, InvalidOperation

from ...catalog.wording import credits_text
from ...ledger import LedgerError, parse_amount
from ...ledger.amounts import InvalidAmount
from ...ledger.core import TransferResult, account_name, user_account
from ...ledger.errors import (
    HoldNotPending,
    IdempotencyConflict,
    InsufficientFunds,
    InvalidRequest,
    NotReversible,
    UnknownAccount,
    UnknownTransfer,
)
from ...ledger.operations import MAX_DAYS, apply_operation
from ...ledger.records import transfer_to_dict
from ...quoting import quote_input
from ..auth import ADMIN
from ..hub import HubUnavailable
from .base import HUB_DOWN, APIError, APIHandler, actor_of

MAX_REASON = 1000
#: Idempotency keys (contract: 1-100 characters, e.g. a uuid4 hex made with the form).
MAX_KEY = 100
#: Admin keys live in their own namespace of ledger keys.
KEY_PREFIX = "admin:"
OPERATIONS = ("grant", "deduct")
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")


# --- the fields of an admin write ------------------------------------------------------------


def parse_key(body: dict) -> str:
    """The write's idempotency key (required); 400 unless it is text of 1-100 characters."""
    key = body.get("key")
    if not isinstance(key, str) or not 1 <= len(key) <= MAX_KEY or not key.strip() \
            or _CONTROL.search(key):
        raise APIError(400, f'"key" is required: text of 1 to {MAX_KEY} characters without '
                            f"control characters (e.g. a fresh uuid4 per form), not "
                            f"{quote_input(key)}")
    return key


def check_reason(value, *, required: bool = True, name: str = '"reason"') -> str:
    """A reason: text of at most 1000 characters, not blank when ``required``."""
    if value is None:
        value = ""
    if not isinstance(value, str) or len(value) > MAX_REASON:
        raise InvalidRequest(f"{name} must be text of at most {MAX_REASON} characters")
    if required and not value.strip():
        raise InvalidRequest(f"{name} is required: say why (it is kept with the transfer)")
    if "\x00" in value:  # PostgreSQL cannot store it in text
        raise InvalidRequest(f"{name} may not contain NUL characters")
    return value


def parse_reason(body: dict, *, required: bool = True) -> str:
    try:
        return check_reason(body.get("reason"), required=required)
    except InvalidRequest as error:
        raise APIError(400, str(error)) from None


def parse_units(value, name: str = '"amount"') -> int:
    """Units of a decimal amount (``"10.5"``), exactly as the CLI reads it; 400 otherwise."""
    if value is None:
        raise APIError(400, f'{name} is required: credits as a decimal string such as "10.5"')
    try:
        return parse_amount(value)
    except InvalidAmount as error:
        raise APIError(400, f"{name}: {error}") from None


def parse_days(body: dict) -> None:
    """``expires_in_days`` when given: a number of days between 0 and ``MAX_DAYS``."""
    value = body.get("expires_in_days")
    if value is None:
        return
    message = (f'"expires_in_days" must be a number of days between 0 and {MAX_DAYS}, '
               f"not {quote_input(value)}")
    if isinstance(value, bool) or not isinstance(value, (int, Decimal, str)):
        raise APIError(400, message)
    try:
        days = Decimal(value)
    except InvalidOperation:
        raise APIError(400, message) from None
    if not days.is_finite() or not 0 < days <= MAX_DAYS:
        raise APIError(400, message)


def check_name(value, what: str = "user") -> str:
    if not isinstance(value, str) or not value:
        raise APIError(400, f'"{what}" must be a {"group" if what == "pool" else "hub user"} '
                            f"name, not {quote_input(value)}")
    return value


# --- the hub ---------------------------------------------------------------------------------


async def group_members(handler: APIHandler, name: str) -> list[str]:
    """The members of the hub group ``name``; 404 when there is none, 503 when the hub is down."""
    try:
        members = await handler.credits.hub.group(name)
    except HubUnavailable:
        raise APIError(503, HUB_DOWN) from None
    if members is None:
        raise APIError(404, f"no such group: {quote_input(name)}")
    return members


# --- the ledger's refusals -------------------------------------------------------------------

#: What each refusal of the ledger is to a caller of the API.
REFUSAL_STATUS = (
    (InsufficientFunds, 402),
    (UnknownAccount, 402),  # an owner that never had credits has none to take
    (IdempotencyConflict, 409),
    (NotReversible, 409),
    (HoldNotPending, 409),
    (UnknownTransfer, 404),
)


def refusal(error: Exception) -> APIError:
    """The API error for a ``LedgerError`` or ``InvalidAmount`` (the ledger's own message)."""
    for kind, status in REFUSAL_STATUS:
        if isinstance(error, kind):
            break
    else:
        status = 400
    message = str(error)
    if isinstance(error, UnknownAccount):
        message = f"insufficient funds: {error.name} has no credits (it never had any)"
    return APIError(status, message)


def refusal_text(error: Exception) -> str:
    return refusal(error).message


def apply_admin(ledger, op: dict, *, actor: str) -> TransferResult:
    """One ledger operation in the ``apply`` format (as the CLI applies it): the request's
    content, amounts normalised, identifies a retry. Blocking: run in a thread."""
    return apply_operation(ledger, op, actor=actor)


def account_of(target: str, name: str) -> str:
    """The account of a hub user (``user:`` + the name, verbatim) or a group's pool."""
    if target == "pool":
        return account_name(f"group:{name}")
    return user_account(name)


# --- the handlers ----------------------------------------------------------------------------


class MoneyAPIHandler(APIHandler):
    operation = "grant"

    async def post(self):
        model = self.require(ADMIN)
        fields = {"user", "pool", "amount", "reason", "key"}
        if self.operation == "grant":
            fields.add("expires_in_days")
        body = self.json_body(fields)
        targets = [name for name in ("user", "pool") if name in body]
        if len(targets) != 1:
            raise APIError(400, 'give exactly one of "user" (a hub user) or "pool" (a hub group)')
        target = targets[0]
        name = check_name(body[target], target)
        units = parse_units(body.get("amount"))
        reason = parse_reason(body)
        key = parse_key(body)
        parse_days(body)
        try:
            account = account_of(target, name)
        except InvalidRequest as error:
            raise APIError(400, str(error)) from None
        if target == "user":
            await self.known_user(name)
        else:
            await group_members(self, name)

        op = {"op": self.operation, "key": KEY_PREFIX + key, "user": account,
              "amount": body["amount"], "reason": reason}
        if body.get("expires_in_days") is not None:
            op["expires_in_days"] = body["expires_in_days"]
        try:
            result = await self.run(apply_admin, self.credits.ledger, op, actor=actor_of(model))
        except (LedgerError, InvalidAmount) as error:
            raise refusal(error) from None
        who = name if target == "user" else f"the pool of group {name}"
        done = "Granted" if self.operation == "grant" else "Deducted"
        direction = "to" if self.operation == "grant" else "from"
        if result.duplicate:
            message = (f"Already done: this request was applied before (transfer "
                       f"{result.transfer.id}); nothing more was {done.lower()}.")
        else:
            message = f"{done} {credits_text(units)} {direction} {who}."
        self.write_json({"transfer": transfer_to_dict(result.transfer),
                         "duplicate": result.duplicate, "message": message})


class GrantAPIHandler(MoneyAPIHandler):
    operation = "grant"


class DeductAPIHandler(MoneyAPIHandler):
    operation = "deduct"


default_handlers = [
    (r"/api/admin/grant", GrantAPIHandler),
    (r"/api/admin/deduct", DeductAPIHandler),
]
