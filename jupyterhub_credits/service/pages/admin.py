"""The admin panel: ``admin`` (sections as tabs) and ``admin/users/{user}`` (one user).

Only callers with ``custom:credits:admin`` unfiltered see it; anyone else gets
the 403 page in the hub's look. The panel is a set of sections chosen with
``?tab=`` on the server (a Bootstrap nav), so each request reads only what its
section shows and every section has a URL to share:

- ``users`` — search, sort and page through user accounts (``admin_users``);
- ``grant`` — grant or deduct: one user, a list, each member of a hub group,
  a group's pool account, or a CSV file; a preview, then Confirm;
- ``audit`` — every transfer, newest first, filterable by kind, with Reverse;
- ``sessions`` — every open session with its GPU utilisation, and Stop;
- ``catalog`` — images, prices, quotas (per group too), GPU capacity;
- ``charts`` — credits issued vs spent, GPU-hours by type, top consumers (SVG);
- ``export`` — the transfers as CSV between two dates, and ``verify`` on demand.

Reads are server-rendered here from the read models (``ledger.reports``,
``sessions.usage``), off the event loop; every write goes through the JSON
API from ``static/admin.js`` (confirmation first, the form's idempotency key,
the admin as the actor), so the page moves no credits itself.
"""

from __future__ import annotations

from datetime import timedelta

from tornado import web

from ...catalog import effective_quotas
from ...catalog.model import CPU_ONLY
from ...ledger import LedgerError, format_amount, reports
from ...ledger.core import user_account
from ...ledger.errors import InvalidRequest
from ...ledger.records import iso, transfer_to_dict
from ...quoting import quote_input
from ...sessions import usage
from .. import charts
from ..api.catalog import capacity
from ..auth import ADMIN, has_scope
from ..hub import HubUnavailable
from ..models import quotas_to_dict, server_label, session_to_dict
from .admin_users import SORTS, BadQuery, build_admin_users
from .base import PageHandler, page_error

#: The sections of the panel, in the order of its nav: (``?tab=`` value, title).
TABS = (
    ("users", "Users"),
    ("grant", "Grant & deduct"),
    ("audit", "Audit log"),
    ("sessions", "Live sessions"),
    ("catalog", "Catalog"),
    ("charts", "Charts"),
    ("export", "Export & verify"),
)
#: History kinds (contract names) in the order the filters show them.
KIND_FILTERS = ("grants", "earnings", "sessions", "expiry", "reversals")
#: Transfer kinds the ledger can reverse (see ``Ledger.reverse``).
REVERSIBLE = ("grant", "deduct", "earn", "post")
CHART_DAYS = 30
PAGE_SIZE = 50
#: Pages of users beyond any real hub (keeps the offset far from the database's limits).
MAX_PAGE_NUMBER = 10**7
LOTS_SHOWN = 200


# --- reading (plain functions of the service context; run in a thread) ------------------

def transfer_rows(transfers, *, account: str | None = None) -> list[dict]:
    """Transfers for a table: the API's shape, plus whether a newer one on the page reversed it."""
    reversed_here = {t.reversal_of for t in transfers if t.reversal_of is not None}
    rows = []
    for transfer in transfers:
        row = transfer_to_dict(transfer, account=account)
        row["reversible"] = transfer.kind in REVERSIBLE and transfer.id not in reversed_here
        row["reversed"] = transfer.id in reversed_here
        rows.append(row)
    return rows


def audit_log(context, *, kind: str | None, before: int | None, account: str | None = None
              ) -> dict:
    transfers, next_before = reports.history_page(context.ledger, account, kind=kind,
                                                  before=before, limit=PAGE_SIZE)
    return {"transfers": transfer_rows(transfers, account=account), "next_before": next_before,
            "kind": kind, "before": before}


def live_sessions(context) -> dict:
    """Every open session, with its user and latest GPU utilisation (where sampled)."""
    now = context.clock()
    sessions = context.sessions.open_sessions()
    utilisation = usage.latest_gpu_utilization(context.ledger.engine, [s.key for s in sessions],
                                               now)
    rows = []
    for session in sessions:
        row = session_to_dict(session, now, notice=context.notices().get(session.key))
        row["user"] = session.user
        value = utilisation.get(session.key)
        row["gpu_utilization"] = None if value is None else round(value)
        rows.append(row)
    rows.sort(key=lambda row: (row["user"], row["server"]))
    return {"sessions": rows, "now": iso(now)}


def catalog_view(context) -> dict:
    """The catalog as it is loaded: what can be started, what it costs, limits, capacity."""
    catalog = context.catalog
    free, total = capacity(context.allocator)
    return {
        "images": list(catalog.images.values()),
        "gpu_types": [{
            "id": gpu.id, "display_name": gpu.display_name, "description": gpu.description,
            "price": format_amount(gpu.price_per_gpu_hour),
            "free": None if free is None else free.get(gpu.id, 0),
            "total": None if total is None else total.get(gpu.id, 0),
        } for gpu in catalog.gpu_types.values()],
        "cpu_price": format_amount(catalog.cpu.price_per_hour),
        "quotas": quotas_to_dict(catalog.quotas),
        "groups": [{
            "name": group.name, "pool": group.pool,
            "overrides": sorted(group.quotas),
            "quotas": quotas_to_dict(effective_quotas(catalog, [group.name])),
        } for group in catalog.groups.values()],
        "source": catalog.source,
    }


def chart_data(context, days: int = CHART_DAYS) -> dict:
    """The three charts as inline SVG, from the same reads as ``api/admin/stats``."""
    now = context.clock()
    flows = reports.daily_flows(context.ledger, days=days, now=now)
    dates = [row[0] for row in flows]  # every day of the window, zeros included
    gpu_hours = usage.gpu_hours_by_day(context.ledger.engine, days=days, now=now)
    top = reports.top_consumers(context.ledger, days=days, now=now, limit=10)
    names = {gpu.id: gpu.display_name for gpu in context.catalog.gpu_types.values()}
    return {
        "days": days,
        "flows_svg": charts.flows_chart(flows),
        "gpu_hours_svg": charts.gpu_hours_chart(gpu_hours, dates, names),
        "top_svg": charts.top_consumers_chart(top, days=days),
        "issued": format_amount(sum(int(row[1]) for row in flows)),
        "spent": format_amount(sum(int(row[2]) for row in flows)),
    }


def user_detail(context, user: str, *, kind: str | None, before: int | None) -> dict:
    """One user's page: balance and totals, lots, open sessions, history, today's earnings."""
    now = context.clock()
    account = user_account(user)
    try:
        balance = context.ledger.balance(account)
    except LedgerError:  # nothing granted or spent yet: no account
        balance = None
    summary = reports.account_summary(context.ledger, account)
    lots = reports.lots_of(context.ledger, account)[:LOTS_SHOWN] if balance else []
    sessions = [{**session_to_dict(s, now, notice=context.notices().get(s.key)), "user": user}
                for s in context.sessions.open_sessions(user)]
    earning = None
    if context.earning is not None:
        earning = context.earning.today(user)
        earning["history"] = context.earning.history(user, limit=20)
    return {
        # Not "user": the hub's page.html reads ``user`` as the viewer (navigation bar).
        "person": user,
        "account": account,
        "available": format_amount(balance.available if balance else 0),
        "reserved": format_amount(balance.reserved if balance else 0),
        "total": format_amount(balance.total if balance else 0),
        "earned": format_amount(summary.earned if summary else 0),
        "spent": format_amount(summary.spent if summary else 0),
        "lots": [_lot(lot) for lot in lots],
        "sessions": sessions,
        "history": audit_log(context, kind=kind, before=before, account=account),
        "earning": earning,
        "now": iso(now),
    }


def _lot(lot) -> dict:
    remaining, reserved = int(lot.remaining), int(lot.reserved)
    return {"id": lot.id, "amount": format_amount(int(lot.amount)),
            "remaining": format_amount(remaining), "reserved": format_amount(reserved),
            "available": format_amount(remaining - reserved),
            "expires_at": iso(lot.expires_at), "created_at": iso(lot.created_at),
            "kind": lot.kind, "reason": lot.reason}


# --- the handlers -----------------------------------------------------------------------

class AdminPage(PageHandler):
    """What both admin pages share: admins only, query arguments checked into a 400 page."""

    def require_admin(self) -> dict:
        model = self.current_user
        if not has_scope(model, ADMIN):
            raise page_error(403, f"The credits admin panel is for credits administrators (scope "
                     f"custom:credits:admin); {model.get('kind', 'user')} "
                     f"{quote_input(model.get('name'), 60)} is not one.")
        return model

    def int_argument(self, name: str, default: int | None, maximum: int = 2**63 - 1
                     ) -> int | None:
        text = self.get_query_argument(name, "").strip()
        if not text:
            return default
        if len(text) > 19 or not text.isdigit() or not 1 <= int(text) <= maximum:
            raise page_error(400, f"{name} must be a whole number from 1 to {maximum}, "
                                     f"not {quote_input(text)}")
        return int(text)

    def kind_argument(self) -> str | None:
        kind = self.get_query_argument("kind", "").strip() or None
        if kind is not None and kind not in reports.HISTORY_KINDS:
            raise page_error(400, f"kind must be one of {', '.join(KIND_FILTERS)}, not "
                                     f"{quote_input(kind)}")
        return kind


class AdminHandler(AdminPage):
    @web.authenticated
    async def get(self):
        model = self.require_admin()
        tab = self.get_query_argument("tab", "users")
        if tab not in dict(TABS):
            raise page_error(404, f"the admin panel has no section {quote_input(tab)}; "
                                     f"its sections: {', '.join(dict(TABS))}")
        values = await getattr(self, f"_{tab}")()
        self.render_page(f"admin_{tab}.html", tabs=TABS, tab=tab, admin=model["name"],
                         **values)

    async def _users(self) -> dict:
        try:
            data = await self.run(
                build_admin_users, self.credits,
                search=self.get_query_argument("search", ""),
                sort=self.get_query_argument("sort", "balance"),
                order=self.get_query_argument("order", "desc"),
                page=self.int_argument("page", 1, maximum=MAX_PAGE_NUMBER),
                per_page=self.int_argument("per_page", 50, maximum=200))
        except BadQuery as error:
            raise page_error(400, str(error)) from None
        return {"page_data": data, "sorts": SORTS}

    async def _grant(self) -> dict:
        pools = [group.name for group in self.credits.catalog.groups.values() if group.pool]
        return {"pools": pools}

    async def _audit(self) -> dict:
        kind, before = self.kind_argument(), self.int_argument("before", None)
        return {"log": await self.run(audit_log, self.credits, kind=kind, before=before),
                "kinds": KIND_FILTERS}

    async def _sessions(self) -> dict:
        return await self.run(live_sessions, self.credits)

    async def _catalog(self) -> dict:
        return {"catalog": await self.run(catalog_view, self.credits), "cpu_only": CPU_ONLY}

    async def _charts(self) -> dict:
        return await self.run(chart_data, self.credits)

    async def _export(self) -> dict:
        today = self.credits.clock().date()
        return {"since": (today - timedelta(days=30)).isoformat(), "until": today.isoformat()}


class AdminUserHandler(AdminPage):
    @web.authenticated
    async def get(self, name: str):
        model = self.require_admin()
        kind, before = self.kind_argument(), self.int_argument("before", None)
        try:
            hub_user = await self.credits.hub.user(name)
        except HubUnavailable:
            raise page_error(503, "The hub is not answering; try again shortly.") from None
        if hub_user is None:
            raise page_error(404, f"The hub has no user {quote_input(name, 60)}."
                                )
        try:
            detail = await self.run(user_detail, self.credits, name, kind=kind, before=before)
        except InvalidRequest as error:  # a hub name that cannot hold credits
            raise page_error(400, str(error)) from None
        detail["groups"] = hub_user.get("groups") or []
        detail["server_label"] = server_label
        self.render_page("admin_user.html", tabs=TABS, tab="users", admin=model["name"],
                         kinds=KIND_FILTERS, **detail)


routes = [
    (r"admin/?", AdminHandler),
    (r"admin/users/([^/]+)", AdminUserHandler),
]
