"""Admin: the audit log of every transfer, and reversing one.

``GET /api/admin/transfers?account=&kind=&before=&limit=`` — transfers newest
first, a page at a time: ``{"transfers": [...], "next_before": id | null}``.
``account`` narrows it to one account (``alice`` reads as ``user:alice``;
``group:lab``, ``system:usage`` as written), and then each transfer also carries
``change``, its signed effect on that account. ``kind`` is a history kind
(``grants``, ``earnings``, ``sessions``, ``expiry``, ``reversals``), ``before``
a transfer id (the page of older ones; ``next_before`` gives the next page,
null at the end), ``limit`` 1-200 (default 50).

``POST /api/admin/transfers/{id}/reverse`` body ``{"reason", "key"}`` — undo
transfer ``id`` with a new one in the opposite direction, as the ledger's
``reverse`` rules say (a grant gives back only what is still free of its own lot;
a deduct or a session charge comes back whole). ``{"transfer", "duplicate",
"message"}``; the same key again answers with the first reversal; 404 for no
such transfer, 409 when it cannot be reversed (with the ledger's reason).

Both need ``custom:credits:admin``.
"""

from __future__ import annotations

from ...catalog.wording import credits_text
from ...ledger import LedgerError
from ...ledger.amounts import InvalidAmount
from ...ledger.core import account_name
from ...ledger.errors import InvalidRequest
from ...ledger.records import transfer_to_dict
from ...ledger.reports import history_kinds, history_page
from ...quoting import quote_input
from ..auth import ADMIN
from .base import APIError, APIHandler, actor_of
from .earnings import int_argument
from .grants import KEY_PREFIX, apply_admin, parse_key, parse_reason, refusal

MAX_LIMIT = 200
DEFAULT_LIMIT = 50
MAX_ID = 2**63 - 1


class TransfersAPIHandler(APIHandler):
    async def get(self):
        self.require(ADMIN)
        account = self.get_query_argument("account", "") or None
        kind = self.get_query_argument("kind", "") or None
        before = int_argument(self, "before", None, minimum=1, maximum=MAX_ID)
        limit = int_argument(self, "limit", DEFAULT_LIMIT, minimum=1, maximum=MAX_LIMIT)
        try:
            history_kinds(kind)
            name = None if account is None else account_name(account)
        except InvalidRequest as error:
            raise APIError(400, str(error)) from None
        try:
            page, next_before = await self.run(history_page, self.credits.ledger, name,
                                               kind=kind, before=before, limit=limit)
        except InvalidRequest as error:
            raise APIError(400, str(error)) from None
        self.write_json({"transfers": [transfer_to_dict(t, account=name) for t in page],
                         "next_before": next_before})


class ReverseAPIHandler(APIHandler):
    async def post(self, ref: str):
        model = self.require(ADMIN)
        body = self.json_body({"reason", "key"})
        reason = parse_reason(body)
        key = parse_key(body)
        if not ref.isascii() or not ref.isdigit() or len(ref) > 19 or not 0 < int(ref) <= MAX_ID:
            raise APIError(404, f"no such transfer: {quote_input(ref)}")
        transfer_id = int(ref)
        op = {"op": "reverse", "key": KEY_PREFIX + key, "transfer": transfer_id,
              "reason": reason}
        try:
            result = await self.run(apply_admin, self.credits.ledger, op, actor=actor_of(model))
        except (LedgerError, InvalidAmount) as error:
            raise refusal(error) from None
        reversal = result.transfer
        if result.duplicate:
            message = (f"Already done: transfer {transfer_id} was reversed by this request "
                       f"before (transfer {reversal.id}); nothing more moved.")
        else:
            message = (f"Reversed transfer {transfer_id}: {credits_text(reversal.amount)} from "
                       f"{reversal.debit_account} back to {reversal.credit_account}.")
        self.write_json({"transfer": transfer_to_dict(reversal), "duplicate": result.duplicate,
                         "message": message})


default_handlers = [
    (r"/api/admin/transfers", TransfersAPIHandler),
    (r"/api/admin/transfers/([^/]+)/reverse", ReverseAPIHandler),
]
