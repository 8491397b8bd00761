"""GPU usage read from the sessions table: GPU-hours per UTC day, latest GPU utilisation.

For the admin's statistics and session list. Reads only (one read transaction each);
no JupyterHub imports.
"""

from __future__ import annotations

from collections import defaultdict
from datetime import date, datetime, time, timedelta, timezone
from decimal import ROUND_HALF_UP, Decimal
from typing import Iterable

from sqlalchemy import DateTime, func, or_, select, type_coerce
from sqlalchemy.engine import Engine

from ..earning.decide import GPU_UTILIZATION, parse_time
from ..earning.schema import events
from ..ledger import database
from ..ledger.reports import day_window
from .schema import sessions

#: Hours are reported to the hundredth.
HOURS_PLACES = Decimal("0.01")
#: Keys per IN (...) list, well below every backend's limit on bound parameters.
_CHUNK = 500


def _split_by_day(start: datetime, end: datetime) -> Iterable[tuple[date, float]]:
    """(day, seconds) of the span ``start``..``end``, one pair per day it touches."""
    while start < end:
        next_day = datetime.combine(start.date() + timedelta(days=1), time(0), start.tzinfo)
        stop = min(end, next_day)
        yield start.date(), (stop - start).total_seconds()
        start = stop


def gpu_hours_by_day(engine: Engine, *, days: int, now: datetime
                     ) -> list[tuple[date, str, Decimal]]:
    """``(UTC day, GPU type, GPU-hours)`` for the last ``days`` days, oldest first.

    A GPU session counts from ``ready_at`` to ``ended_at`` (an open one: to
    ``billed_until``, where the meter has billed it), times its GPUs, each day's share
    on its own day. Only (day, GPU type) pairs with GPU time are listed, by day then type.
    """
    _, start = day_window(days, now)
    now = now.astimezone(timezone.utc)
    ends = func.coalesce(sessions.c.ended_at, sessions.c.billed_until)
    # Naive UTC, as stored: thousands of rows skip the time zone conversion of UTCDateTime.
    naive = [type_coerce(column, DateTime()) for column in
             (sessions.c.ready_at, sessions.c.ended_at, sessions.c.billed_until)]
    with database.read_transaction(engine) as conn:
        rows = conn.execute(
            select(sessions.c.gpu_type, sessions.c.gpus, *naive)
            .where(sessions.c.gpus > 0, sessions.c.ready_at.is_not(None),
                   sessions.c.ready_at < now, ends.is_not(None),
                   or_(sessions.c.ended_at.is_(None), sessions.c.ended_at > start),
                   ends > start)).all()
    start, now = start.replace(tzinfo=None), now.replace(tzinfo=None)
    seconds: dict[tuple[date, str], float] = defaultdict(float)
    for gpu_type, gpus, ready_at, ended_at, billed_until in rows:
        begin, end = max(ready_at, start), min(ended_at or billed_until, now)
        if begin >= end:
            continue
        if begin.date() == end.date():  # most sessions: within one day
            seconds[begin.date(), gpu_type] += (end - begin).total_seconds() * gpus
            continue
        for day, span in _split_by_day(begin, end):
            seconds[day, gpu_type] += span * gpus
    return [(day, gpu_type, (Decimal(repr(total)) / 3600).quantize(HOURS_PLACES, ROUND_HALF_UP))
            for (day, gpu_type), total in sorted(seconds.items()) if total > 0]


def _chunks(items: list, size: int = _CHUNK) -> Iterable[list]:
    for i in range(0, len(items), size):
        yield items[i:i + size]


def _sample(key: str, payload) -> tuple[str, datetime, float] | None:
    """(server id, minute, mean utilisation %) of a stored gpu_utilization event, or None.

    The key is ``gpu_utilization:<server id>:<minute>`` (``singleuser.gpu.event_key``), the
    server id being the session's key (or ``<user>/<server name>`` where no spawner of ours
    set one); the minute is the payload's, verbatim.
    """
    try:
        minute_text = payload["minute"]
        utilizations = [float(gpu["util"]) for gpu in payload["gpus"]]
        minute = parse_time(minute_text)
        mean = sum(utilizations) / len(utilizations)
    except (KeyError, TypeError, ValueError, ZeroDivisionError):
        return None
    prefix, suffix = GPU_UTILIZATION + ":", ":" + str(minute_text)
    server = key[len(prefix):-len(suffix)] if key.startswith(prefix) and key.endswith(suffix) \
        else ""
    return server, minute, mean


def latest_gpu_utilization(engine: Engine, session_keys: Iterable[str], now: datetime,
                           within_s: float = 300) -> dict[str, float]:
    """``{session key: percent}``: each session's latest GPU sample received in the last
    ``within_s`` seconds (mean over its GPUs, to a tenth). Sessions without one are left out.

    Samples are the ``gpu_utilization`` events the user's servers send (stored by the
    earning service, read through its (user, received_at) index). Each names its server
    in its key; a sample naming none of the user's listed sessions counts for the user's
    session when just one is listed. Only the session's own user's samples count.
    """
    keys = list(dict.fromkeys(session_keys))
    if not keys:
        return {}
    since = now - timedelta(seconds=within_s)
    with database.read_transaction(engine) as conn:
        listed = []
        for chunk in _chunks(keys):
            listed.extend(conn.execute(
                select(sessions.c.key, sessions.c.user, sessions.c.server_name)
                .where(sessions.c.key.in_(chunk))).all())
        by_user: dict[str, list] = defaultdict(list)
        for row in listed:
            by_user[row.user].append(row)
        found = []
        for chunk in _chunks(sorted(by_user)):
            found.extend(conn.execute(
                select(events.c.user, events.c.key, events.c.payload)
                .where(events.c.user.in_(chunk), events.c.kind == GPU_UTILIZATION,
                       events.c.outcome == "earned", events.c.received_at >= since)
                .order_by(events.c.id)).all())
    latest: dict[str, tuple[datetime, float]] = {}
    for event in found:
        sample = _sample(event.key, event.payload)
        if sample is None:
            continue
        server, minute, mean = sample
        mine = by_user[event.user]
        target = next((row.key for row in mine
                       if server in (row.key, f"{row.user}/{row.server_name}")), None)
        if target is None and len(mine) == 1:
            target = mine[0].key
        if target is not None and (target not in latest or minute >= latest[target][0]):
            latest[target] = (minute, mean)
    return {key: round(mean, 1) for key, (_, mean) in latest.items()}
