"""My credits (``/services/credits/``): one person's money, sessions and earnings on one page.

What it shows, all read on the server from the same read models as the API
(``ledger.reports``, the session store, the earning service), in one thread
off the event loop:

- the balance (available, reserved) and the credits that expire soon (the lots
  that hold them, with their dates);
- the running sessions: image, GPU type × count, rate, cost so far, time left
  (``static/my_credits.js`` counts it down every second and polls ``api/me``
  every 30 s), with Extend and Stop — both through the JSON API, so the page
  itself moves no credits;
- the history of transfers, newest first, paged by transfer id (``?before=``)
  and filtered by history kind (``?kind=``); a bad value is a 400 page that
  says what is allowed;
- today's earnings per rule against the rule's caps, the earning rules in
  words, and the week's leaderboard.

``build_my_credits`` is a plain function of the service context (no Tornado),
so it can be tested and timed on its own; the handler only checks who asks
and what they ask for.
"""

from __future__ import annotations

from datetime import timedelta
from decimal import Decimal

from tornado import web

from ...catalog.model import CPU_ONLY
from ...catalog.wording import credits_text, duration_text, plural
from ...earning.rules import (
    DAILY_LOGIN,
    EFFICIENCY_BONUS,
    MODEL_LIKED,
    MODEL_PUBLISHED,
    MODEL_REUSED,
    NOTEBOOK_ACTIVITY,
    SIGNUP,
    TRAINING_RUN,
    EarningRules,
    earning_rules,
)
from ...ledger import LedgerError, format_amount
from ...ledger.core import user_account
from ...ledger.errors import InvalidRequest
from ...ledger.records import iso, transfer_to_dict
from ...ledger.reports import (
    HISTORY_KINDS,
    account_summary,
    expiring_within,
    history_page,
    lots_of,
)
from ...quoting import quote_input
from ..auth import READ, SPEND, has_scope, is_user
from ..models import session_to_dict
from .base import PageHandler, page_error

#: History filters in the order the page offers them: (``?kind=`` value, label).
KIND_FILTERS = (
    ("grants", "Grants"),
    ("earnings", "Earnings"),
    ("sessions", "Sessions"),
    ("expiry", "Expiry"),
    ("reversals", "Reversals"),
)
assert {kind for kind, _ in KIND_FILTERS} == set(HISTORY_KINDS)
#: Transfers on one page of the history.
PAGE_SIZE = 25
#: Credits that expire within this many days are "expiring soon" (as ``api/me/lots``).
SOON_DAYS = 30
#: Lots listed under "Expiring soon" (an account rarely has more; the total counts all).
LOTS_SHOWN = 20
#: The leaderboard's window and length.
LEADERBOARD_DAYS = 7
LEADERS_SHOWN = 10
MAX_TRANSFER_ID = 2**63 - 1

#: How the page names each earning rule.
RULE_TITLES = {
    SIGNUP: "Signup bonus",
    DAILY_LOGIN: "Daily login",
    NOTEBOOK_ACTIVITY: "Active notebook time",
    TRAINING_RUN: "Training runs",
    EFFICIENCY_BONUS: "Efficiency bonus",
    MODEL_PUBLISHED: "Publishing a model",
    MODEL_REUSED: "Your model reused",
    MODEL_LIKED: "Your model liked",
}

#: How a transfer reads in the history, by kind (the reason follows, where there is one).
KIND_WORDS = {
    "grant": "Granted",
    "deduct": "Deducted",
    "earn": "Earned",
    "hold": "Reserved for a session",
    "post": "Charged for a session",
    "void": "Reservation released",
    "expire": "Expired",
    "reverse": "Reversed",
}

#: The session store's and ledger's reasons for session transfers, in the page's words.
SESSION_REASONS = {
    "session start": "paid time at the start",
    "session extension": "an extension",
    "session user": "you stopped it",
    "session admin": "an administrator stopped it",
    "session expired": "its paid time ended",
    "session gpu_idle": "its GPUs stayed idle",
    "session stopped": "its server was stopped",
    "session server_gone": "its server was gone",
    "session refused": "its start was refused",
    "session ended during extension": "it ended during an extension",
    "remainder of partial post": "the unused rest",
    "hold timed out": "the reservation timed out",
}
#: Kinds that move credits between available and reserved, not in or out of the balance.
NEUTRAL_KINDS = ("hold", "void")


# --- reading ------------------------------------------------------------------------------


def build_my_credits(context, user: str, *, kind: str | None = None,
                     before: int | None = None) -> dict:
    """Everything the page shows for hub user ``user`` (blocking: run it in a thread).

    ``kind``: a history kind (``grants``, ``earnings``, ``sessions``, ``expiry``,
    ``reversals``) or None for all; ``before``: a transfer id, the history page
    after it. A bad ``kind`` or ``before`` raises ``InvalidRequest`` naming what
    is allowed. A hub name that cannot hold credits gets ``{"cannot_hold": why}``
    and nothing else to show.
    """
    try:
        account = user_account(user)
    except InvalidRequest as error:
        return {"user": user, "cannot_hold": str(error)}
    if before is not None and (isinstance(before, bool) or not isinstance(before, int)
                               or not 1 <= before <= MAX_TRANSFER_ID):
        raise InvalidRequest(f"before must be a transfer id (a whole number from 1), "
                             f"not {quote_input(before)}")
    now = context.clock()
    transfers, next_before = history_page(context.ledger, account, kind=kind, before=before,
                                          limit=PAGE_SIZE)
    try:
        balance = context.ledger.balance(account)
    except LedgerError:  # no account yet: nothing granted, nothing spent
        balance = None
    summary = account_summary(context.ledger, account) if balance is not None else None
    lots = lots_of(context.ledger, account) if balance is not None else []
    soon = [lot for lot in lots
            if lot.expires_at is not None and lot.available > 0
            and now < lot.expires_at <= now + timedelta(days=SOON_DAYS)]
    notices = context.notices()
    sessions = [_session(context, session_to_dict(s, now, notice=notices.get(s.key)))
                for s in context.sessions.open_sessions(user)]
    return {
        "user": user,
        "account": account,
        "cannot_hold": None,
        "now": iso(now),
        "available": format_amount(balance.available if balance else 0),
        "reserved": format_amount(balance.reserved if balance else 0),
        "total": format_amount(balance.total if balance else 0),
        # Lifetime totals: earned (less reversed earnings), spent on sessions (less refunds).
        "earned": format_amount(summary.earned if summary else 0),
        "spent": format_amount(summary.spent if summary else 0),
        "expiring_soon": format_amount(expiring_within(lots, now, SOON_DAYS)),
        "soon_days": SOON_DAYS,
        "expiring_lots": [_lot(lot) for lot in soon[:LOTS_SHOWN]],
        "more_lots": max(len(soon) - LOTS_SHOWN, 0),
        "sessions": sessions,
        "history": {
            "kind": kind,
            "before": before,
            "next_before": next_before,
            "transfers": [_transfer(t, account) for t in transfers],
        },
        **_earning(context, user),
    }


def _lot(lot) -> dict:
    return {"id": lot.id, "available": format_amount(lot.available),
            "expires_at": iso(lot.expires_at), "created_at": iso(lot.created_at),
            "kind": lot.kind, "reason": lot.reason}


def _session(context, record: dict) -> dict:
    """A session as ``api/me`` shows it, plus the catalog's names for its image and GPUs."""
    image = context.catalog.images.get(record["image"])
    record["image_name"] = image.display_name if image is not None else record["image"]
    if record["gpu_type"] == CPU_ONLY or not record["gpus"]:
        record["hardware"] = "CPU only"
    else:
        gpu = context.catalog.gpu_types.get(record["gpu_type"])
        name = gpu.display_name if gpu is not None else record["gpu_type"]
        record["hardware"] = f"{name} × {record['gpus']}"
    left = record["seconds_left"]
    record["time_left"] = duration_text(left) if left is not None else None
    return record


def _transfer(transfer, account: str) -> dict:
    record = transfer_to_dict(transfer, account=account)
    record["what"] = KIND_WORDS.get(transfer.kind, transfer.kind)
    if transfer.kind == "reverse" and transfer.reversal_of is not None:
        record["what"] = f"Reversal of transfer #{transfer.reversal_of}"
    if transfer.kind == "expire" and transfer.reason == "credits expired":
        record["reason"] = ""  # "Expired" says it
    if transfer.kind in ("hold", "post", "void"):
        record["reason"] = SESSION_REASONS.get(transfer.reason, transfer.reason)
    record["neutral"] = transfer.kind in NEUTRAL_KINDS
    record["incoming"] = record["change"].startswith("+")
    return record


def _earning(context, user: str) -> dict:
    """Today's earnings against the caps, the rules in words, and the week's leaders."""
    earning = context.earning
    rules = earning.rules if earning is not None else _catalog_rules(context)
    today, leaders, since = None, [], None
    if earning is not None:
        today = earning.today(user)
        today["rules"] = [_today_row(row) for row in today["rules"] if row["enabled"]]
        since, rows = earning.recent_leaders(LEADERBOARD_DAYS, LEADERS_SHOWN)
        leaders = [{"rank": row["rank"], "user": row["user"], "points": row["points"],
                    "me": row["user"] == user} for row in rows]
    return {
        "earning_today": today,
        "how_to_earn": how_to_earn(rules) if rules is not None else [],
        "claims_cap": (credits_text(rules.max_claims_per_day) if rules is not None else None),
        "leaders": leaders,
        "leaders_since": iso(since),
        "leaderboard_days": LEADERBOARD_DAYS,
    }


def _catalog_rules(context) -> EarningRules | None:
    try:
        return earning_rules(context.catalog)
    except Exception:  # noqa: BLE001 - the catalog loaded; its earning section is checked there
        return None


def _today_row(row: dict) -> dict:
    """A rule's earnings today with its caps in words: "1 of 1 today", "0.50 of 1.00 credits"."""
    limits = []
    if row["rule"] == SIGNUP:
        limits.append("once per person")
    elif row["max_per_day"] is not None:
        limits.append(f"{row['count']} of {row['max_per_day']} a day")
    if row["max_units_per_day"] is not None:
        limits.append(f"{row['points']} of {format_amount(row['max_units_per_day'])} credits "
                      "a day")
    capped = (row["max_per_day"] is not None and row["count"] >= row["max_per_day"]) or (
        row["max_units_per_day"] is not None and row["units"] >= row["max_units_per_day"])
    return {"rule": row["rule"], "title": RULE_TITLES.get(row["rule"], row["rule"]),
            "count": row["count"], "points": row["points"],
            "limit": "; ".join(limits) or "no daily limit", "capped": capped}


def how_to_earn(rules: EarningRules) -> list[dict]:
    """The enabled earning rules in words, in the catalog's order."""
    lines = []
    for rule in rules.rules.values():
        if not rule.enabled:
            continue
        lines.append({"rule": rule.name, "title": RULE_TITLES.get(rule.name, rule.name),
                      "text": rule_text(rule)})
    return lines


def rule_text(rule) -> str:
    """One rule in words, e.g. "1.00 credits for logging in; at most once a day."."""
    amount = credits_text(rule.points)
    what = {
        SIGNUP: f"{amount} once, when you first log in",
        DAILY_LOGIN: f"{amount} for logging in",
        NOTEBOOK_ACTIVITY: f"{amount} per minute of active notebook time while a session runs",
        TRAINING_RUN: (f"{amount} per training run of at least "
                       f"{duration_text(rule.min_duration_s)} (the Keras callback reports it)"),
        EFFICIENCY_BONUS: (f"{amount} more for a counted training run whose GPUs were at least "
                           f"{rule.min_utilization}% busy (measured over at least "
                           f"{rule.min_coverage_percent}% of its minutes)"),
        MODEL_PUBLISHED: f"{amount} for publishing a model to the gallery",
        MODEL_REUSED: f"{amount} each time someone reuses one of your models",
        MODEL_LIKED: f"{amount} each time someone likes one of your models",
    }.get(rule.name, f"{amount} per {rule.name}")
    limits = []
    if rule.name != SIGNUP:
        if rule.max_per_day == 1:
            limits.append("at most once a day")
        elif rule.max_per_day is not None:
            limits.append(f"at most {rule.max_per_day} times a day")
        if rule.max_points_per_day is not None:
            limits.append(f"at most {credits_text(rule.max_points_per_day)} a day")
        if rule.min_interval_s:
            limits.append(f"{duration_text(rule.min_interval_s)} apart at the least")
    if rule.expires_after_days is not None:
        limits.append(f"they expire {plural(Decimal(rule.expires_after_days), 'day')} after "
                      "they are earned")
    return what + ("; " + ", ".join(limits) if limits else "") + "."


# --- the page -----------------------------------------------------------------------------


class MyCreditsHandler(PageHandler):
    @web.authenticated
    async def get(self):
        model = self.current_user
        name = model.get("name")
        if not is_user(model):
            raise page_error(403, f"service {quote_input(name, 60)} has no credits of its own.")
        groups = model.get("groups") or ()
        if not has_scope(model, READ, name, groups):
            raise page_error(403, f"user {quote_input(name, 60)} may not see credits here (it "
                                  f"needs the scope {READ}); ask a hub administrator.")
        kind = self._kind()
        before = self._before()
        try:
            data = await self.run(build_my_credits, self.credits, name, kind=kind,
                                  before=before)
        except InvalidRequest as error:
            raise page_error(400, str(error)) from None
        data.pop("user")  # the template's ``user`` is the hub page's (the navigation bar's)
        self.render_page("my_credits.html", kinds=KIND_FILTERS,
                         can_spend=has_scope(model, SPEND, name, groups), **data)

    def _kind(self) -> str | None:
        kind = self.get_query_argument("kind", "").strip() or None
        if kind is not None and kind not in HISTORY_KINDS:
            raise page_error(400, f"The history has no filter {quote_input(kind, 60)}; "
                                  f"the filters are {', '.join(HISTORY_KINDS)}.")
        return kind

    def _before(self) -> int | None:
        text = self.get_query_argument("before", "").strip()
        if not text:
            return None
        if len(text) > 19 or not text.isdigit() or not 1 <= int(text) <= MAX_TRANSFER_ID:
            raise page_error(400, f"before must be a transfer id (a whole number from 1), "
                                  f"not {quote_input(text, 60)}.")
        return int(text)


routes = [("", MyCreditsHandler)]
