"""The admin panel's list of users: search, sort, one page of accounts.

A pure function of the service context and the query (no Tornado), so the
benchmark (``bench/pages.py``) times exactly what the page does at 100,000
users. Sorting and counting happen in the database
(``ledger.reports.accounts_page``, on the per-account totals and their
indexes); this module only checks the query and shapes one page for the
template: amounts as 2-decimal strings, page links as numbers.
"""

from __future__ import annotations

import math

from ...ledger import format_amount, reports
from ...ledger.reports import AccountRow
from ...quoting import quote_input

#: Sort keys of the page (and of ``api/admin/accounts``) → what they sort by.
SORTS = {"balance": "Balance", "spent": "Lifetime spent", "earned": "Lifetime earned",
         "name": "Name"}
ORDERS = ("desc", "asc")
MAX_PER_PAGE = 200
MAX_SEARCH = 200


class BadQuery(ValueError):
    """A query argument the page cannot use; the message says which and what it may be."""


def check_query(*, search: str, sort: str, order: str, page: int, per_page: int) -> None:
    if sort not in SORTS:
        raise BadQuery(f"sort must be one of {', '.join(SORTS)}, not {quote_input(sort)}")
    if order not in ORDERS:
        raise BadQuery(f"order must be desc or asc, not {quote_input(order)}")
    if not isinstance(page, int) or page < 1:
        raise BadQuery("page must be a whole number from 1 on")
    if not isinstance(per_page, int) or not 1 <= per_page <= MAX_PER_PAGE:
        raise BadQuery(f"per_page must be between 1 and {MAX_PER_PAGE}")
    if len(search) > MAX_SEARCH:
        raise BadQuery(f"search is at most {MAX_SEARCH} characters")


def user_row(row: AccountRow) -> dict:
    """One account of ``reports.accounts_page`` as the page shows it (and the API lists it)."""
    return {
        "user": row.name,
        "available": format_amount(row.available),
        "reserved": format_amount(row.reserved),
        "total": format_amount(row.balance),
        "earned": format_amount(row.earned),
        "spent": format_amount(row.spent),
    }


def build_admin_users(context, *, search: str = "", sort: str = "balance", order: str = "desc",
                      page: int = 1, per_page: int = 50) -> dict:
    """One page of user accounts, sorted and searched in the database.

    Returns ``{"users": [...], "total", "page", "pages", "per_page", "sort",
    "order", "search", "first", "last"}`` (``first``/``last``: the 1-based
    positions shown). A page past the end is empty, with the right ``pages``.
    """
    search = search.strip()
    check_query(search=search, sort=sort, order=order, page=page, per_page=per_page)
    rows, total = reports.accounts_page(context.ledger, search=search, sort=sort, order=order,
                                        offset=(page - 1) * per_page, limit=per_page)
    users = [user_row(row) for row in rows]
    first = (page - 1) * per_page + 1
    return {
        "users": users,
        "total": total,
        "page": page,
        "pages": max(1, math.ceil(total / per_page)),
        "per_page": per_page,
        "sort": sort,
        "order": order,
        "search": search,
        "first": first if users else 0,
        "last": first + len(users) - 1 if users else 0,
    }
