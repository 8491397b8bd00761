"""Admin: ``GET /api/admin/accounts`` — every user's account, a page at a time.

``?search=&sort=balance|spent|earned|name&order=desc|asc&page=1&per_page=50``:
``search`` is a case-insensitive substring of the hub name (``%`` and ``_`` mean
themselves); ``per_page`` 1-200. The answer::

    {"accounts": [{"user", "account", "available", "reserved", "total", "earned",
                   "spent"}], "total": N, "page", "per_page", "sort", "order"}

``total`` counts the matching accounts (all pages). Only user accounts are listed
(never group pools or system accounts); the figures are the ledger's cached totals
(``ledger.reports.accounts_page``), so a page costs the same at 100,000 accounts.
Needs ``custom:credits:admin``.
"""

from __future__ import annotations

import re

from ...ledger import format_amount
from ...ledger.errors import InvalidRequest
from ...ledger.reports import ACCOUNT_SORTS, ORDERS, AccountRow, accounts_page
from ...quoting import quote_input
from ..auth import ADMIN
from .base import APIError, APIHandler
from .earnings import int_argument

MAX_PER_PAGE = 200
DEFAULT_PER_PAGE = 50
#: Deep enough for any list a person pages through; keeps OFFSET bounded.
MAX_PAGE = 100_000
#: A search longer than any hub name finds nothing anyway.
MAX_SEARCH = 200
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")


def account_row(row: AccountRow) -> dict:
    return {
        "user": row.name,
        "account": row.account,
        "available": format_amount(row.available),
        "reserved": format_amount(row.reserved),
        "total": format_amount(row.balance),
        "earned": format_amount(row.earned),
        "spent": format_amount(row.spent),
    }


def _choice(handler: APIHandler, name: str, default: str, allowed) -> str:
    value = handler.get_query_argument(name, None) or default
    if value not in allowed:
        raise APIError(400, f"{name} must be one of {', '.join(allowed)}, not {quote_input(value)}")
    return value


class AccountsAPIHandler(APIHandler):
    async def get(self):
        self.require(ADMIN)
        search = self.get_query_argument("search", "") or ""
        if len(search) > MAX_SEARCH:
            raise APIError(400, f"search must be at most {MAX_SEARCH} characters")
        if _CONTROL.search(search):  # no name has one; PostgreSQL refuses NUL outright
            raise APIError(400, "search may not contain control characters")
        sort = _choice(self, "sort", "balance", tuple(ACCOUNT_SORTS))
        order = _choice(self, "order", "desc", ORDERS)
        page = int_argument(self, "page", 1, minimum=1, maximum=MAX_PAGE)
        per_page = int_argument(self, "per_page", DEFAULT_PER_PAGE, minimum=1,
                                maximum=MAX_PER_PAGE)
        try:
            rows, total = await self.run(accounts_page, self.credits.ledger, search=search,
                                         sort=sort, order=order, offset=(page - 1) * per_page,
                                         limit=per_page)
        except InvalidRequest as error:
            raise APIError(400, str(error)) from None
        self.write_json({"accounts": [account_row(row) for row in rows], "total": total,
                         "page": page, "per_page": per_page, "sort": sort, "order": order})


default_handlers = [(r"/api/admin/accounts", AccountsAPIHandler)]
