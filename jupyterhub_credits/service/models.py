"""The JSON shapes of the credits API, built from plain data (no I/O here).

Amounts are decimal strings (``format_amount``), times ISO 8601 UTC with
``Z``, names as everywhere else: ``available``, ``reserved``, ``paid_until``,
``gpu_type``. A server is named ``""`` for the default one, shown as
``server_label`` "default" and addressed as ``default`` in URLs.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from datetime import datetime
from decimal import Decimal

from ..catalog import Catalog, Quotas
from ..ledger import Balance, format_amount
from ..ledger.core import user_account
from ..ledger.records import iso
from ..sessions.store import Session

#: How URLs and labels name the ``""`` (default) server.
DEFAULT_SERVER = "default"


def server_from_path(segment: str) -> str:
    """``default`` in a URL means the default server, whose name is ``""``."""
    return "" if segment == DEFAULT_SERVER else segment


def server_label(name: str) -> str:
    return name or DEFAULT_SERVER


def session_to_dict(session: Session, now: datetime, *, notice: str | None = None) -> dict:
    """A session as ``/api/me`` lists it; ``notice`` is the meter's last word on it, if any.

    A session that has ended (e.g. the answer of a stop) also carries ``charged``,
    ``ended_at`` and ``end_reason``; its time left is 0 and its cost what it was charged.
    """
    if session.ended_at is not None:
        now = min(now, session.ended_at)
    record = {
        "id": session.id,
        "server": session.server_name,
        "server_label": server_label(session.server_name),
        "image": session.image,
        "gpu_type": session.gpu_type,
        "gpus": session.gpus,
        "account": session.account,
        "rate_per_hour": format_amount(session.rate_per_hour),
        "held": format_amount(session.held),
        "requested_at": iso(session.requested_at),
        "ready_at": iso(session.ready_at),
        "paid_until": iso(session.paid_until),
        "seconds_left": session.seconds_left(now),
        "cost_so_far": format_amount(session.cost_until(now)),
        "state": session.state,
        "auto_extend": session.auto_extend,
        # Warning thresholds (seconds before paid_until) already given, largest first.
        "warnings": sorted(session.warned_thresholds or [], reverse=True),
    }
    if session.ended_at is not None:
        record["seconds_left"] = 0
        record["ended_at"] = iso(session.ended_at)
        record["end_reason"] = session.end_reason
    if session.charged is not None:
        record["charged"] = format_amount(session.charged)
        record["cost_so_far"] = record["charged"]
    if notice:
        record["notice"] = notice
    return record


def account_to_dict(user: str, balance: Balance | None, sessions: Iterable[Session],
                    now: datetime, notices: Mapping[str, str] | None = None) -> dict:
    """``/api/me`` and ``/api/users/{user}``: a hub user's balance and open sessions."""
    notices = notices or {}
    return {
        "user": user,
        "account": user_account(user),
        "available": format_amount(balance.available if balance else 0),
        "reserved": format_amount(balance.reserved if balance else 0),
        "total": format_amount(balance.total if balance else 0),
        "sessions": [session_to_dict(s, now, notice=notices.get(s.key)) for s in sessions],
        "now": iso(now),
    }


def quotas_to_dict(quotas: Quotas) -> dict:
    return {
        "max_gpus_per_session": quotas.max_gpus_per_session,
        "max_hours_per_session": format(quotas.max_hours_per_session.normalize(), "f"),
        "max_concurrent_gpu_sessions": quotas.max_concurrent_gpu_sessions,
        "min_prepaid_minutes": format(Decimal(quotas.min_prepaid_minutes).normalize(), "f"),
        "min_extension_minutes": format(Decimal(quotas.min_extension_minutes).normalize(), "f"),
    }


def catalog_to_dict(catalog: Catalog, quotas: Quotas, free: Mapping[str, int] | None,
                    total: Mapping[str, int] | None) -> dict:
    """``/api/catalog``: what can be started, its price, and (where known) free GPUs.

    ``free`` / ``total`` None means the service cannot know (e.g. a cluster
    that autoscales): each GPU type then shows ``free: null``.
    """
    return {
        "images": [{
            "id": image.id,
            "display_name": image.display_name,
            "description": image.description,
            "tensorflow": image.tensorflow,
            "cuda": image.cuda,
            "gpu_types": list(image.gpu_types),
            "default": image.default,
        } for image in catalog.images.values()],
        "gpu_types": [{
            "id": gpu.id,
            "display_name": gpu.display_name,
            "description": gpu.description,
            "price_per_gpu_hour": format_amount(gpu.price_per_gpu_hour),
            "free": None if free is None else free.get(gpu.id, 0),
            "total": None if total is None else total.get(gpu.id, 0),
        } for gpu in catalog.gpu_types.values()],
        "cpu": {"price_per_hour": format_amount(catalog.cpu.price_per_hour)},
        "quotas": quotas_to_dict(quotas),
    }
