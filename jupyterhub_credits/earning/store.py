"""Recording events: decide each one, store it with its outcome, earn through the ledger.

``EarningService.record(user, events, source=...)`` takes a batch, answers one
outcome per event in order, and stores every event it decided (earned, capped
or rejected, with the reason) under ``(user, key)``: the same key sent again
answers "duplicate" and earns nothing twice. A user's batches are decided one
at a time (the user's row in ``credits_earning_users`` is locked), so caps and
the daily bound on claims hold under concurrent requests.

Credits move in a second step, through ``Ledger.earn`` into the user's account
(``user_account``: ``user:`` + the hub name) under the key ``ledger_key(user,
event key)``: if the process stops between the two, the next retry of the event
(or ``pay_pending``) makes the same transfer, once.

``user`` is always the hub user name, verbatim, never read as an account name:
the hub user ``user:bob`` has his own events, limits and account, not bob's.
"""

from __future__ import annotations

import hashlib
import json
import logging
import threading
from collections import OrderedDict
from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import bindparam, func, insert, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Connection

from ..ledger import Ledger, LedgerError, database
from ..ledger.amounts import format_amount
from ..ledger.core import USER_PREFIX, Transfer, user_account
from ..ledger.errors import IdempotencyConflict, InvalidRequest, UnknownTransfer
from ..ledger.records import iso
from ..ledger.schema import accounts, transfers
from ..sessions.store import SessionStore
from .decide import (
    DERIVED,
    EARNED,
    GPU_UTILIZATION,
    KIND_RULES,
    REJECTED,
    SERVER,
    SOURCES,
    Event,
    GpuSample,
    Outcome,
    RuleUsage,
    SessionSpan,
    UserState,
    apply,
    day_start,
    decide,
    parse_event,
    parse_time,
)
from .rules import EFFICIENCY_BONUS, SIGNUP, EarningRules, default_rules
from .schema import earning_users, events

log = logging.getLogger(__name__)

#: The most events one ``record`` call takes.
MAX_BATCH = 1000
#: Payloads larger than this (as JSON) are not kept (the outcome still is).
MAX_PAYLOAD_BYTES = 16_384
#: A rejected event earned nothing, yet a sender may send 120 a minute, every day: of its
#: payload no more than this is kept (a small one whole, a larger one as a summary).
MAX_REJECTED_PAYLOAD_BYTES = 256
#: Reasons we write are short; a longer one quotes what was sent, and is cut here.
MAX_REASON_CHARS = 300
#: The leaderboard looks back at most this many days.
MAX_LEADERBOARD_DAYS = 366
#: How long a computed leaderboard is served again: every page view asks for one, a year of
#: transfers is a heavy sum, and a ranking a minute old is as good.
LEADERBOARD_TTL = timedelta(seconds=60)
#: Leaderboards kept at once (one per days/limit asked), so odd parameters cannot fill memory.
MAX_CACHED_LEADERBOARDS = 32
#: The longest ``today_json`` serves a user's day again. Every single-user server polls
#: its user's status every 30 s (333 requests/s for 10,000 servers); the day's sums cost two
#: statements and about 1 ms of Python, so they are read again only when they may have
#: changed: this service recorded an event of the user's, or the caller's ``earned``
#: (the account's lifetime_earned, which every credit earned moves, from any process)
#: differs. This bound is a safety net for what those miss: an earning whose transfer is
#: not made yet (a crash; paid within a minute, which moves ``earned``), or a reversal
#: and a new earning of exactly the same amount in between.
TODAY_TTL = timedelta(minutes=5)
#: Users whose day is kept at once (about 2 KB each): 10,000 polling servers fit.
MAX_CACHED_TODAYS = 50_000
#: Event outcomes kept (``outcomes``): an outcome never changes once stored.
MAX_CACHED_OUTCOMES = 100_000
#: The key of a derived earning: ``<event key>#efficiency_bonus``.
BONUS_SUFFIX = DERIVED + EFFICIENCY_BONUS
#: Leaderboards leave out the signup bonus everyone gets.
LEADERBOARD_EXCLUDED_ACTORS = (f"rule:{SIGNUP}",)

_REASONS = {
    "signup": "signup bonus",
    "daily_login": "daily login",
    "notebook_activity": "active notebook time",
    "training_run": "training run",
    "efficiency_bonus": "efficiency bonus",
    "model_published": "model published",
    "model_reused": "model reused",
    "model_liked": "model liked",
}
_CHUNK = 400


class EarningError(ValueError):
    """A request the earning service refuses as a whole (bad source, user or batch)."""


def ledger_key(user: str, event_key: str) -> str:
    """The idempotency key of the ledger transfer an event's earning makes.

    Event keys may contain ``:``, so ``earn:<user>:<key>`` is unambiguous only
    while the user name has none (the user part ends at the first ``:``). Those
    keys stay as they always were: an event earned before this encoding existed
    is recognised by its transfer's key and never earned twice. A user name with
    ``:`` (JupyterHub allows it: ``a`` + ``b:c`` would be ``a:b`` + ``c``) is
    written with its length in front, under ``earn/``, a prefix no key of the
    first form has. Keys over 255 characters become a digest of the same parts.
    """
    if ":" not in user:
        return _earn_key("earn:", f"{user}:{event_key}")
    return _earn_key("earn/", f"{len(user)}:{user}:{event_key}")


def _legacy_ledger_key(user: str, event_key: str) -> str | None:
    """The key a user name with ``:`` had before ``ledger_key`` told the parts apart."""
    return _earn_key("earn:", f"{user}:{event_key}") if ":" in user else None


def _earn_key(prefix: str, parts: str) -> str:
    """``prefix`` + ``parts``, or + a digest of them where that is over 255 characters."""
    key = prefix + parts
    return key if len(key) <= 255 else prefix + hashlib.sha256(parts.encode()).hexdigest()


class EarningService:
    """Events → outcomes → earn transfers. Inner layer: no JupyterHub or Tornado imports."""

    def __init__(self, ledger: Ledger, rules: EarningRules | None = None,
                 sessions: SessionStore | None = None):
        self.ledger = ledger
        self.engine = ledger.engine
        self.rules = rules or default_rules()
        self.sessions = sessions or SessionStore(ledger)
        self._dialect = self.engine.dialect.name
        # (days, limit) → (computed at, since, leaders); see ``recent_leaders``.
        self._leaderboards: dict[tuple[int, int], tuple[datetime, datetime, list[dict]]] = {}
        self._leaderboards_lock = threading.Lock()
        # user → [version, today's JSON or None, computed at, day, earned]; see
        # ``today_json``.
        self._todays: OrderedDict[str, list] = OrderedDict()
        # (user, key) → the stored outcome of that event (final once stored).
        self._outcomes: OrderedDict[tuple[str, str], dict] = OrderedDict()
        self._cache_lock = threading.Lock()

    @property
    def clock(self):
        return self.ledger.clock

    # --- recording ----------------------------------------------------------------

    def record(self, user: str, batch: Sequence[Any], *, source: str) -> list[dict]:
        """Decide, store and earn a batch of ``user``'s events; one outcome dict per event.

        ``source`` is ``"hub"`` (trusted) or ``"server"`` (a single-user server's claims).
        """
        if source not in SOURCES:
            raise EarningError(f"source must be one of {', '.join(SOURCES)}, not {source!r}")
        if not isinstance(batch, (list, tuple)):
            raise EarningError("events must be a list")
        if len(batch) > MAX_BATCH:
            raise EarningError(f"at most {MAX_BATCH} events at a time, got {len(batch)}")
        name = _user(user)
        now = self.clock()
        parsed = [_checked(raw, now) for raw in batch]
        answers = database.run_with_retries(
            self.engine, lambda conn: self._decide_batch(conn, name, source, parsed, now))
        # After the commit: a read that started before it is not kept (see ``today_json``).
        self.forget_today(name)
        keys = {event.key for event in parsed if event.key is not None}
        if keys:
            self._earn(self._unpaid(name, keys))
        return answers

    def pay_pending(self, limit: int = 1000) -> int:
        """Make the ledger transfers of earned events that have none yet (after a crash)."""
        with database.read_transaction(self.engine) as conn:
            rows = conn.execute(_unpaid_query().order_by(events.c.id).limit(limit)).all()
        return self._earn(rows)

    # --- admin --------------------------------------------------------------------

    def freeze(self, user: str, *, actor: str, reason: str = "") -> None:
        """Stop ``user`` earning anything until unfrozen (their events are rejected, and kept)."""
        self._set_frozen(_user(user), True, actor, reason)
        self.forget_today(user)  # "frozen" is part of the day

    def unfreeze(self, user: str, *, actor: str) -> None:
        self._set_frozen(_user(user), False, actor, None)
        self.forget_today(user)

    def is_frozen(self, user: str) -> bool:
        with database.read_transaction(self.engine) as conn:
            return bool(conn.execute(select(earning_users.c.frozen)
                                     .where(earning_users.c.user == _user(user))).scalar())

    # --- reading ------------------------------------------------------------------

    def today(self, user: str) -> dict:
        """Today's (UTC) earnings per rule against the rule's caps, and claims against their bound."""
        name = _user(user)
        now = self.clock()
        start = day_start(now)
        with database.read_transaction(self.engine) as conn:
            usage = _usage_today(conn, name, start)
            frozen = bool(conn.execute(select(earning_users.c.frozen)
                                       .where(earning_users.c.user == name)).scalar())
        per_rule = []
        total = 0
        for rule in self.rules.rules.values():
            rows = [row for (rule_name, _), row in usage.items() if rule_name == rule.name]
            count = sum(row["count"] for row in rows)
            units = sum(row["points"] for row in rows)
            per_rule.append({
                "rule": rule.name,
                "enabled": rule.enabled,
                "count": count,
                "points": format_amount(units),
                "units": units,
                "max_per_day": rule.max_per_day,
                "max_points_per_day": (format_amount(rule.max_points_per_day)
                                       if rule.max_points_per_day is not None else None),
                "max_units_per_day": rule.max_points_per_day,
            })
            total += units
        claims = sum(row["points"] for (_, source), row in usage.items() if source == SERVER)
        return {
            "user": name,
            "day": start.date().isoformat(),
            "frozen": frozen,
            "points": format_amount(total),
            "units": total,
            "rules": per_rule,
            "claims": {"points": format_amount(claims), "units": claims,
                       "max_points": format_amount(self.rules.max_claims_per_day),
                       "max_units": self.rules.max_claims_per_day},
        }

    def today_json(self, user: str, *, earned: int | None = None) -> str:
        """``today(user)`` as JSON text, read again only when it may have changed.

        Kept as text: one string per user is nothing for the garbage collector to walk
        (10,000 users' nested dicts were a million objects, and a full collection of them
        a pause of its own), and a poll splices it into its answer without encoding it.

        ``earned`` is the user's account's ``lifetime_earned`` as the caller just read it
        (None: unknown): an entry kept with another value is out of date. The entry is
        also forgotten when this service records an event of ``user``'s (``record``) or
        freezes or unfreezes them, at midnight UTC, and after ``TODAY_TTL``. A
        computation that overlapped such a change is answered but not kept: each entry
        has a version that a change bumps, and the result is kept only if the version
        is still the one seen before reading.
        """
        name = _user(user)
        now = self.clock()
        day = day_start(now)
        with self._cache_lock:
            entry = self._todays.get(name)
            if _fresh(entry, now, day, earned):
                return entry[1]
            version = entry[0] if entry is not None else 0
        value = json.dumps(self.today(name))
        with self._cache_lock:
            entry = self._todays.get(name)
            if (entry[0] if entry is not None else 0) == version:
                self._todays[name] = [version, value, now, day, earned]
                self._todays.move_to_end(name)
                while len(self._todays) > MAX_CACHED_TODAYS:
                    self._todays.popitem(last=False)  # the least recently computed
        return value

    def cached_today_json(self, user: str, *, earned: int | None = None) -> str | None:
        """What ``today_json(user, earned=earned)`` would answer without reading, else
        None (never blocks: an event loop may call it before deciding to go to a thread)."""
        now = self.clock()
        with self._cache_lock:
            entry = self._todays.get(user)
            return entry[1] if _fresh(entry, now, day_start(now), earned) else None

    def forget_today(self, user: str) -> None:
        """Drop ``user``'s cached day: the next ``today_json`` reads it again."""
        with self._cache_lock:
            entry = self._todays.get(user)
            if entry is None:
                self._todays[user] = [1, None, None, None, None]
            else:
                entry[0] += 1
                entry[1] = None
            while len(self._todays) > MAX_CACHED_TODAYS:
                self._todays.popitem(last=False)

    def outcomes(self, user: str, keys: Sequence[str]) -> dict[str, dict]:
        """The stored outcomes of ``user``'s events with these ``keys``, by key; a key not
        (yet) stored is left out.

        ``{"key", "outcome", "points", "units", "rule", "reason"}``, the points with a
        training run's efficiency bonus, as ``record`` answered them. An outcome never
        changes once stored, so each is read once and then served from memory: only the
        keys not known yet are read (one statement).
        """
        name = _user(user)
        found = self.cached_outcomes(name, keys)
        missing = [key for key in dict.fromkeys(keys) if key not in found]
        if not missing:
            return found
        with database.read_transaction(self.engine) as conn:
            stored = _stored(conn, name, missing)
        read = {}
        for key in missing:
            row = stored.get(key)
            if row is None:
                continue
            bonus = stored.get(key + BONUS_SUFFIX)
            units = int(row["points"]) + (int(bonus["points"]) if bonus else 0)
            read[key] = {"key": key, "outcome": row["outcome"], "points": format_amount(units),
                         "units": units, "rule": row["rule"], "reason": row["reason"]}
        with self._cache_lock:
            for key, outcome in read.items():
                self._outcomes[(name, key)] = outcome
            while len(self._outcomes) > MAX_CACHED_OUTCOMES:
                self._outcomes.popitem(last=False)
        found.update(read)
        return found

    def cached_outcomes(self, user: str, keys: Sequence[str]) -> dict[str, dict]:
        """The outcomes among ``keys`` that ``outcomes`` already read, by key (never blocks)."""
        with self._cache_lock:
            return {key: cached for key in keys
                    if (cached := self._outcomes.get((user, key))) is not None}

    def history(self, user: str, *, limit: int = 50, before_id: int | None = None) -> list[dict]:
        """The user's stored events with their outcomes, newest first."""
        if limit < 1:
            raise EarningError("limit must be at least 1")
        query = (select(events).where(events.c.user == _user(user))
                 .order_by(events.c.id.desc()).limit(limit))
        if before_id is not None:
            query = query.where(events.c.id < before_id)
        with database.read_transaction(self.engine) as conn:
            return [_event_record(row) for row in conn.execute(query)]

    def gpu_minutes(self, user: str, since: datetime) -> list[tuple[datetime, float]]:
        """The user's stored GPU samples for minutes from ``since`` on: (minute, mean util %).

        One pair per stored ``gpu_utilization`` event (any of the user's servers),
        oldest first; a minute two servers reported appears twice. Read through
        the (user, received_at) index: a minute's sample arrives after it starts.
        """
        query = (select(events.c.payload)
                 .where(events.c.user == _user(user), events.c.kind == GPU_UTILIZATION,
                        events.c.outcome == EARNED, events.c.received_at >= since)
                 .order_by(events.c.id))
        with database.read_transaction(self.engine) as conn:
            samples = [_sample(payload) for (payload,) in conn.execute(query)]
        return sorted((sample.minute, sample.utilization) for sample in samples
                      if sample is not None and sample.minute >= since)

    def leaderboard(self, since: datetime | None = None, limit: int = 10) -> list[dict]:
        """Top earners since ``since``: user and credits earned (signup bonus and reversed earnings
        left out), nothing else."""
        if limit < 1:
            raise EarningError("limit must be at least 1")
        reversal = transfers.alias("reversal")
        total = func.sum(transfers.c.amount).label("units")
        query = (
            select(accounts.c.name, total)
            .select_from(transfers)
            .join(accounts, accounts.c.id == transfers.c.credit_account_id)
            .outerjoin(reversal, reversal.c.reversal_of == transfers.c.id)
            .where(transfers.c.kind == "earn", accounts.c.kind == "user",
                   transfers.c.actor.not_in(LEADERBOARD_EXCLUDED_ACTORS),
                   reversal.c.id.is_(None))
            .group_by(accounts.c.name)
            .order_by(total.desc(), accounts.c.name)
            .limit(limit)
        )
        if since is not None:
            query = query.where(transfers.c.created_at >= since)
        with database.read_transaction(self.engine) as conn:
            rows = conn.execute(query).all()
        # Only user accounts are read, each ``user_account(hub name)``: the name follows the prefix.
        return [{"rank": rank, "user": name[len(USER_PREFIX):], "points": format_amount(units),
                 "units": int(units)}
                for rank, (name, units) in enumerate(rows, start=1)]

    def recent_leaders(self, days: int, limit: int = 10) -> tuple[datetime, list[dict]]:
        """(since, leaders): the leaderboard of the last ``days`` days, computed at most once
        per ``LEADERBOARD_TTL`` for each (days, limit)."""
        if isinstance(days, bool) or not isinstance(days, int) \
                or not 1 <= days <= MAX_LEADERBOARD_DAYS:
            raise EarningError(f"days must be a whole number from 1 to {MAX_LEADERBOARD_DAYS}")
        now = self.clock()
        wanted = (days, limit)
        with self._leaderboards_lock:
            cached = self._leaderboards.get(wanted)
        if cached is not None and now - cached[0] < LEADERBOARD_TTL:
            return cached[1], cached[2]
        since = now - timedelta(days=days)
        leaders = self.leaderboard(since, limit)
        with self._leaderboards_lock:
            for stale in [k for k, (at, _, _) in self._leaderboards.items()
                          if now - at >= LEADERBOARD_TTL]:
                del self._leaderboards[stale]
            self._leaderboards.pop(wanted, None)
            while len(self._leaderboards) >= MAX_CACHED_LEADERBOARDS:
                del self._leaderboards[next(iter(self._leaderboards))]  # the oldest
            self._leaderboards[wanted] = (now, since, leaders)
        return since, leaders

    # --- internals ----------------------------------------------------------------

    def _decide_batch(self, conn: Connection, user: str, source: str, parsed: list[Event],
                      now: datetime) -> list[dict]:
        frozen = self._lock_user(conn, user)
        keys = [event.key for event in parsed if event.key is not None]
        stored = _stored(conn, user, keys)
        state = self._load_state(conn, user, now, frozen, parsed)
        answers, rows = [], []
        for event in parsed:
            if event.key is not None and event.key in stored:
                answers.append(_duplicate_answer(event.key, stored[event.key],
                                                 stored.get(event.key + BONUS_SUFFIX)))
                continue
            outcome = decide(event, source, self.rules, state, now)
            state = apply(state, event, source, outcome, now)
            if outcome.stored:
                row = _row(user, event, source, outcome, now)
                rows.append(row)
                stored[event.key] = row
                bonus = outcome.bonus
                if bonus is not None and bonus.stored:
                    bonus_row = _row(user, event, source, bonus, now)
                    bonus_row.update(key=event.key + BONUS_SUFFIX, kind=EFFICIENCY_BONUS,
                                     payload=None)
                    rows.append(bonus_row)
                    stored[bonus_row["key"]] = bonus_row
            answers.append(_answer(event, outcome))
        if rows:
            conn.execute(insert(events), rows)
        return answers

    def _lock_user(self, conn: Connection, user: str) -> bool:
        """Take the user's row lock (creating the row); whether their earning is frozen."""
        dialect_insert = postgresql.insert if self._dialect == "postgresql" else sqlite.insert
        conn.execute(dialect_insert(earning_users).values(user=user, frozen=False)
                     .on_conflict_do_nothing(index_elements=[earning_users.c.user]))
        return bool(conn.execute(select(earning_users.c.frozen)
                                 .where(earning_users.c.user == user)
                                 .with_for_update()).scalar())

    def _load_state(self, conn: Connection, user: str, now: datetime, frozen: bool,
                    parsed: list[Event]) -> UserState:
        start = day_start(now)
        today = _usage_today(conn, user, start)
        usage: dict[str, RuleUsage] = {}
        claims = minutes = 0
        for (rule, source), row in today.items():
            before = usage.get(rule, RuleUsage())
            last = max(filter(None, (before.last_at, row["last_at"])), default=None)
            usage[rule] = RuleUsage(before.count + row["count"], before.points + row["points"],
                                    last)
            if source == SERVER:
                claims += row["points"]
            minutes += row["minutes"]
        interval = timedelta(seconds=self.rules.longest_interval_s)
        if interval and now - interval < start:
            # A minimum interval reaches back into yesterday.
            for rule, last_at in conn.execute(
                    select(events.c.rule, func.max(events.c.received_at))
                    .where(events.c.user == user, events.c.outcome == EARNED,
                           events.c.points > 0, events.c.received_at >= now - interval,
                           events.c.received_at < start)
                    .group_by(events.c.rule)):
                before = usage.get(rule, RuleUsage())
                if before.last_at is None:
                    usage[rule] = RuleUsage(before.count, before.points, last_at)
        kinds = {event.kind for event in parsed if event.key is not None}
        for kind, rule in KIND_RULES.items():
            if kind in kinds and self.rules[rule].once:
                ever = conn.execute(select(func.count()).select_from(events).where(
                    events.c.user == user, events.c.rule == rule, events.c.outcome == EARNED,
                    events.c.points > 0)).scalar()
                before = usage.get(rule, RuleUsage())
                usage[rule] = RuleUsage(before.count, before.points, before.last_at, ever)
        recent = 0
        if any(event.key is not None for event in parsed):
            recent = conn.execute(select(func.count()).select_from(events).where(
                events.c.user == user, events.c.source == SERVER,
                events.c.kind != EFFICIENCY_BONUS,  # derived rows are not events sent
                events.c.received_at > now - timedelta(minutes=1))).scalar()
        # A session not yet settled still ends, at the latest, when its paid time does.
        spans = tuple(
            SessionSpan(up.ready_at, up.ends_at, up.gpus)
            for up in self.sessions.uptimes(user, min(start, now - timedelta(days=1)),
                                            connection=conn))
        samples: tuple[GpuSample, ...] = ()
        runs = [event.data["duration_s"] for event in parsed
                if event.kind == "training_run" and "duration_s" in event.data]
        bonus = self.rules.rules.get("efficiency_bonus")
        # The samples only matter to the efficiency bonus: not read when it is off.
        if runs and bonus is not None and bonus.enabled:
            window = timedelta(seconds=min(max(runs), 86400)) + timedelta(minutes=10)
            samples = tuple(filter(None, (
                _sample(payload) for (payload,) in conn.execute(
                    select(events.c.payload).where(
                        events.c.user == user, events.c.kind == GPU_UTILIZATION,
                        events.c.outcome == EARNED, events.c.received_at >= now - window)
                    .order_by(events.c.id)))))
        return UserState(usage=usage, claims_today=claims, active_minutes_today=minutes,
                         recent_claims=recent, frozen=frozen, sessions=spans, gpu_samples=samples)

    def _unpaid(self, user: str, keys: Iterable[str]) -> list:
        keys = list(keys)
        wanted = keys + [key + BONUS_SUFFIX for key in keys]
        rows = []
        with database.read_transaction(self.engine) as conn:
            for chunk in _chunks(wanted):
                rows += conn.execute(_unpaid_query().where(
                    events.c.user == user, events.c.key.in_(chunk)).order_by(events.c.id)).all()
        return rows

    def _earn(self, rows) -> int:
        """Make each earned event's transfer (idempotent) and remember its id; how many.

        An event whose key is taken by a transfer that is not its own can never be
        earned: it is recorded as rejected, so ``pay_pending`` does not retry it forever.
        """
        done, conflicts = [], []
        for row in rows:
            key = ledger_key(row.user, row.key)
            earlier = self._own_transfer(_legacy_ledger_key(row.user, row.key), row)
            if earlier is not None:
                done.append({"event_id": row.id, "transfer": earlier.id})
                continue
            try:
                result = self.ledger.earn(
                    user_account(row.user), int(row.points), key=key, rule=row.rule,
                    reason=_REASONS.get(row.rule, row.rule), expires_at=row.expires_at,
                    metadata={"event": row.key, "kind": row.kind})
            except IdempotencyConflict as error:
                taken = self._transfer(key)
                if taken is None:  # a concurrent writer: the next retry sees what it did
                    log.warning("could not earn %s for %s's event %r: %s", row.points, row.user,
                                row.key, error)
                elif _is_own_earn(taken, row):  # made earlier with other details
                    done.append({"event_id": row.id, "transfer": taken.id})
                else:
                    log.error("%s's event %r cannot be earned: its ledger key %r is taken by "
                              "transfer %s", row.user, row.key, key, taken.id)
                    conflicts.append({"event_id": row.id, "reason": _bounded(
                        f"not earned: its ledger key is taken by transfer {taken.id}")})
                continue
            except LedgerError as error:
                log.warning("could not earn %s for %s's event %r: %s", row.points, row.user,
                            row.key, error)
                continue
            done.append({"event_id": row.id, "transfer": result.transfer.id})
        if done or conflicts:
            with database.write_transaction(self.engine) as conn:
                if done:
                    conn.execute(update(events).where(events.c.id == bindparam("event_id"),
                                                      events.c.transfer_id.is_(None))
                                 .values(transfer_id=bindparam("transfer")), done)
                if conflicts:
                    conn.execute(update(events).where(events.c.id == bindparam("event_id"),
                                                      events.c.transfer_id.is_(None))
                                 .values(outcome=REJECTED, points=0,
                                         reason=bindparam("reason")), conflicts)
        return len(done)

    def _transfer(self, key: str | None) -> Transfer | None:
        if key is None:
            return None
        try:
            return self.ledger.get_transfer(key)
        except UnknownTransfer:
            return None

    def _own_transfer(self, key: str | None, row) -> Transfer | None:
        """The transfer under ``key`` if it is this event's earning, else None."""
        transfer = self._transfer(key)
        return transfer if transfer is not None and _is_own_earn(transfer, row) else None

    def _set_frozen(self, user: str, frozen: bool, actor: str, reason: str | None) -> None:
        values = {"frozen": frozen, "frozen_at": self.clock() if frozen else None,
                  "frozen_by": actor if frozen else None,
                  "frozen_reason": reason if frozen else None}
        dialect_insert = postgresql.insert if self._dialect == "postgresql" else sqlite.insert
        statement = dialect_insert(earning_users).values(user=user, **values)
        statement = statement.on_conflict_do_update(index_elements=[earning_users.c.user],
                                                    set_=values)
        with database.write_transaction(self.engine) as conn:
            conn.execute(statement)
        log.info("earning %s for %s by %s%s", "frozen" if frozen else "unfrozen", user, actor,
                 f": {reason}" if reason else "")


# --- helpers --------------------------------------------------------------------------


def _fresh(entry: list | None, now: datetime, day: datetime, earned: int | None) -> bool:
    """Whether a ``today_json`` entry may be served at ``now``: same day, young enough,
    kept with the same lifetime earnings as the caller sees now."""
    return (entry is not None and entry[1] is not None and entry[3] == day
            and now - entry[2] < TODAY_TTL and entry[4] == earned)


def _user(user: str) -> str:
    """The hub user name, verbatim: the events and earning status tables are keyed by it.

    Checked only as ``user_account`` checks it (a name that cannot have an account
    cannot earn), never parsed as an account name.
    """
    try:
        user_account(user)
    except InvalidRequest as error:
        raise EarningError(str(error)) from None
    return user


def _is_own_earn(transfer: Transfer, row) -> bool:
    """Whether ``transfer`` is the earning of the stored event ``row`` (same user, same event)."""
    return (transfer.kind == "earn" and transfer.credit_account == user_account(row.user)
            and (transfer.metadata or {}).get("event") == row.key)


def _bounded(reason: str) -> str:
    return reason if len(reason) <= MAX_REASON_CHARS else reason[:MAX_REASON_CHARS - 1] + "…"


def _checked(raw: Any, now: datetime) -> Event:
    """``parse_event``, except that an event it cannot check is rejected, never raised.

    ``parse_event`` is meant never to raise; this is the last line should it
    ever do: an exception here would fail the whole batch with a 500, and the
    reporter retries 5xx answers forever, so one poison event would block every
    later event of that server.
    """
    try:
        return parse_event(raw, now)
    except Exception:  # noqa: BLE001 - logged with its traceback, answered as "rejected"
        log.exception("credits: could not check an event; rejected it")
        return Event(None, None, problem="this event could not be checked")


def _chunks(items: list, size: int = _CHUNK):
    for start in range(0, len(items), size):
        yield items[start:start + size]


def _unpaid_query():
    return select(events.c.id, events.c.user, events.c.key, events.c.kind, events.c.rule,
                  events.c.points, events.c.expires_at).where(
        events.c.outcome == EARNED, events.c.points > 0, events.c.transfer_id.is_(None))


def _usage_today(conn: Connection, user: str, start: datetime) -> dict[tuple[str, str], dict]:
    """(rule, source) → count, points, minutes and latest earning since ``start``."""
    rows = conn.execute(
        select(events.c.rule, events.c.source, func.count(), func.sum(events.c.points),
               func.coalesce(func.sum(events.c.minutes), 0), func.max(events.c.received_at))
        .where(events.c.user == user, events.c.outcome == EARNED, events.c.points > 0,
               events.c.received_at >= start)
        .group_by(events.c.rule, events.c.source))
    return {(rule, source): {"count": int(count), "points": int(points), "minutes": int(minutes),
                             "last_at": last_at}
            for rule, source, count, points, minutes, last_at in rows}


def _stored(conn: Connection, user: str, keys: list[str]) -> dict[str, Mapping]:
    """The stored events among ``keys`` (and their derived earnings), by key."""
    found: dict[str, Mapping] = {}
    wanted = keys + [key + BONUS_SUFFIX for key in keys]
    for chunk in _chunks(wanted):
        for row in conn.execute(
                select(events.c.key, events.c.kind, events.c.outcome, events.c.points,
                       events.c.rule, events.c.reason)
                .where(events.c.user == user, events.c.key.in_(chunk))):
            found[row.key] = dict(row._mapping)
    return found


def _sample(payload: Any) -> GpuSample | None:
    """The GPU sample a stored (already checked) gpu_utilization payload carries."""
    try:
        minute = parse_time(payload["minute"]).replace(second=0, microsecond=0)
        utilizations = [float(gpu["util"]) for gpu in payload["gpus"]]
        return GpuSample(minute, sum(utilizations) / len(utilizations))
    except (KeyError, TypeError, ValueError, ZeroDivisionError):
        return None


def _storable(payload: Any, limit: int = MAX_PAYLOAD_BYTES) -> dict | None:
    """``payload`` as stored: whole when its JSON fits ``limit`` bytes; else None, or (for
    ``limit`` below ``MAX_PAYLOAD_BYTES``) a summary of its size and first fields that fits."""
    if not isinstance(payload, Mapping):
        return None
    try:
        text = json.dumps(payload, allow_nan=False)
    except (TypeError, ValueError, RecursionError):
        return None
    size = len(text.encode())
    if size <= limit:
        return json.loads(text)
    if limit >= MAX_PAYLOAD_BYTES:
        return None
    summary: dict[str, Any] = {"truncated": True, "bytes": size, "fields": []}
    for name in payload:
        summary["fields"].append(str(name)[:32])
        if len(json.dumps(summary).encode()) > limit:
            summary["fields"].pop()
            break
    return summary


def _row(user: str, event: Event, source: str, outcome: Outcome, now: datetime) -> dict:
    limit = MAX_REJECTED_PAYLOAD_BYTES if outcome.outcome == REJECTED else MAX_PAYLOAD_BYTES
    return {
        "user": user, "kind": event.kind or "", "key": event.key, "time": event.time,
        "received_at": now, "source": source, "payload": _storable(event.payload, limit),
        "outcome": outcome.outcome, "points": outcome.points if outcome.outcome == EARNED else 0,
        "rule": outcome.rule, "reason": _bounded(outcome.reason), "minutes": outcome.minutes,
        "expires_at": outcome.expires_at, "transfer_id": None,
    }


def _part(outcome: Outcome) -> dict:
    units = outcome.points if outcome.outcome == EARNED else 0
    return {"outcome": outcome.outcome, "points": format_amount(units), "units": units,
            "rule": outcome.rule, "reason": _bounded(outcome.reason)}


def _answer(event: Event, outcome: Outcome) -> dict:
    """The outcome of one event as the API answers it (points include a training run's bonus)."""
    units = outcome.total_points
    answer = {"key": event.key, "kind": event.kind, **_part(outcome),
              "points": format_amount(units), "units": units}
    if outcome.bonus is not None:
        answer["bonus"] = _part(outcome.bonus)
    return answer


def _duplicate_answer(key: str, row: Mapping, bonus: Mapping | None) -> dict:
    earned = int(row["points"]) + (int(bonus["points"]) if bonus else 0)
    was = row["outcome"] + (f", {format_amount(earned)} credits" if row["outcome"] == EARNED
                            else "")
    return {"key": key, "kind": row["kind"] or None, "outcome": "duplicate", "points": "0.00",
            "units": 0, "rule": row["rule"], "reason": f"already recorded ({was}); nothing more "
                                                       "earned"}


def _event_record(row) -> dict:
    return {
        "id": row.id, "kind": row.kind, "key": row.key, "time": iso(row.time),
        "received_at": iso(row.received_at), "source": row.source, "outcome": row.outcome,
        "points": format_amount(row.points), "units": int(row.points), "rule": row.rule,
        "reason": row.reason, "minutes": row.minutes, "expires_at": iso(row.expires_at),
        "transfer_id": row.transfer_id, "payload": row.payload,
    }
