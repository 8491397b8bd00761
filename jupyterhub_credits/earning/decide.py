"""How much one event earns: a pure decision over plain data.

``parse_event`` checks an event as it arrives (``{"kind", "key", "time",
"payload"}``); ``decide`` turns it into an ``Outcome`` — earned (points, rule),
capped, duplicate or rejected, each with the reason — from the rules, what the
user has earned so far (``UserState``: today's earnings per rule, their
sessions, GPU utilisation samples) and the time now; ``apply`` folds the
outcome into the state, so a batch is decided event by event. Nothing here
reads a clock, a database or the network.

Events from the hub itself (``source="hub"``) are trusted. Events from a
single-user server (``source="server"``) are *claims* by a process the user
controls, so each is checked against what the hub knows: a claim earns only
while that user has a running session and only for what that session could
have done, and everything claims earn in one UTC day is bounded by
``EarningRules.max_claims_per_day`` whatever the claims say.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from datetime import datetime, time, timedelta, timezone
from types import MappingProxyType
from typing import Any

from ..ledger.amounts import format_amount
from ..quoting import quote_input
from .rules import (
    DAILY_LOGIN,
    EFFICIENCY_BONUS,
    MODEL_LIKED,
    MODEL_PUBLISHED,
    MODEL_REUSED,
    NOTEBOOK_ACTIVITY,
    SIGNUP,
    TRAINING_RUN,
    EarningRules,
    Rule,
)

HUB = "hub"
SERVER = "server"
SOURCES = (HUB, SERVER)

EARNED = "earned"
CAPPED = "capped"
DUPLICATE = "duplicate"
REJECTED = "rejected"
#: The outcomes an event is stored with (a duplicate is answered from the stored one).
STORED_OUTCOMES = (EARNED, CAPPED, REJECTED)

#: Event kinds and the rule each one feeds.
KIND_RULES: Mapping[str, str] = MappingProxyType({
    "signup": SIGNUP,
    "login": DAILY_LOGIN,
    "notebook_activity": NOTEBOOK_ACTIVITY,
    "training_run": TRAINING_RUN,
    "model_published": MODEL_PUBLISHED,
    "model_reused": MODEL_REUSED,
    "model_liked": MODEL_LIKED,
})
#: Stored as evidence for the efficiency bonus; earns nothing itself.
GPU_UTILIZATION = "gpu_utilization"
KINDS = (*KIND_RULES, GPU_UTILIZATION)

#: Joins an event's key and the key of an earning derived from it (the efficiency
#: bonus of a training run: ``<key>#efficiency_bonus``); refused in event keys.
DERIVED = "#"
MAX_KEY_LENGTH = 200
#: How far a claimed time may lie ahead of the service's clock before it is refused.
CLOCK_SKEW = timedelta(minutes=5)
#: Events claiming to be older than this are refused (a retry comes sooner).
MAX_EVENT_AGE = timedelta(days=1)
MAX_ACTIVE_MINUTES = 24 * 60
#: A typo guard on a training run's duration_s: far longer than any session, and small
#: enough that the time arithmetic on it (``timedelta(seconds=...)``) cannot overflow.
MAX_RUN_SECONDS = 366 * 24 * 3600
MAX_GPUS = 64

_KEY = re.compile(rf"^[^\s#\x00-\x1f\x7f]{{1,{MAX_KEY_LENGTH}}}$")
_EVENT_FIELDS = ("kind", "key", "time", "payload")


# --- plain data -------------------------------------------------------------------


@dataclass(frozen=True)
class Event:
    """An event as parsed: ``problem`` says why it cannot earn (then other fields may be None).

    ``payload`` is what the sender gave (stored as is); ``data`` holds the
    checked values a rule uses (``active_minutes``, ``duration_s``, ``minute``,
    ``utilization``).
    """

    kind: str | None
    key: str | None
    time: datetime | None = None
    payload: Mapping[str, Any] | None = None
    data: Mapping[str, Any] = field(default_factory=lambda: MappingProxyType({}))
    problem: str | None = None


@dataclass(frozen=True)
class SessionSpan:
    """When one of the user's sessions was up: ready (billed from) until ended (None: still up),
    and how many GPUs it had (0: CPU only)."""

    ready_at: datetime
    ended_at: datetime | None = None
    gpus: int = 0


@dataclass(frozen=True)
class GpuSample:
    """One minute of GPU utilisation: the mean over the server's GPUs, in percent."""

    minute: datetime
    utilization: float


@dataclass(frozen=True)
class RuleUsage:
    """A rule's earnings for one user: today's count and units, the latest, and (``once``) ever."""

    count: int = 0
    points: int = 0
    last_at: datetime | None = None
    ever: int = 0


@dataclass(frozen=True)
class UserState:
    """What the decision needs to know about one user, now."""

    usage: Mapping[str, RuleUsage] = field(default_factory=lambda: MappingProxyType({}))
    #: Units earned today from claims (source "server").
    claims_today: int = 0
    #: Active notebook minutes already credited today.
    active_minutes_today: int = 0
    #: Claims stored in the last minute (the rate limit).
    recent_claims: int = 0
    frozen: bool = False
    sessions: tuple[SessionSpan, ...] = ()
    gpu_samples: tuple[GpuSample, ...] = ()


@dataclass(frozen=True)
class Outcome:
    """What one event earned, and why.

    ``stored`` is False for answers that leave no record (an event without a
    usable key; one refused by the rate limit, which may be sent again later).
    A training run's ``bonus`` is the outcome of its efficiency bonus, earned
    under its own rule. ``minutes`` are the active minutes a notebook_activity
    event was credited with; ``sample`` the GPU utilisation a gpu_utilization
    event recorded.
    """

    outcome: str
    points: int = 0
    rule: str | None = None
    reason: str = ""
    expires_at: datetime | None = None
    stored: bool = True
    minutes: int | None = None
    sample: GpuSample | None = None
    bonus: Outcome | None = None

    @property
    def total_points(self) -> int:
        """Units earned, bonus included."""
        bonus = self.bonus.points if self.bonus and self.bonus.outcome == EARNED else 0
        return (self.points if self.outcome == EARNED else 0) + bonus


def earned(points: int, rule: str | None, *, reason: str = "", expires_at: datetime | None = None,
           **extra) -> Outcome:
    return Outcome(EARNED, points, rule, reason, expires_at, **extra)


def capped(reason: str, rule: str | None = None) -> Outcome:
    return Outcome(CAPPED, 0, rule, reason)


def duplicate(reason: str = "already recorded", rule: str | None = None) -> Outcome:
    return Outcome(DUPLICATE, 0, rule, reason, stored=False)


def rejected(reason: str, rule: str | None = None, *, stored: bool = True) -> Outcome:
    return Outcome(REJECTED, 0, rule, reason, stored=stored)


# --- time ---------------------------------------------------------------------------


def day_start(now: datetime) -> datetime:
    """Midnight UTC of ``now``'s day: daily caps count from here."""
    now = now.astimezone(timezone.utc)
    return datetime.combine(now.date(), time(0), tzinfo=timezone.utc)


def parse_time(value: Any) -> datetime:
    """An ISO 8601 timestamp; one without an offset is taken as UTC."""
    if not isinstance(value, str):
        raise ValueError(f"expected an ISO 8601 timestamp, got {type(value).__name__}")
    text = value.strip()
    if text.endswith(("Z", "z")):
        text = text[:-1] + "+00:00"
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise ValueError(f"not an ISO 8601 timestamp: {quote_input(value)}") from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=timezone.utc)
    try:
        return moment.astimezone(timezone.utc)
    except OverflowError:  # 0001-01-01T00:00:00+01:00 is before year 1 in UTC
        raise ValueError(f"timestamp out of range: {quote_input(value)}") from None


# --- parsing ------------------------------------------------------------------------


def parse_event(raw: Any, now: datetime) -> Event:
    """Check one event's envelope and payload; never raises."""
    if not isinstance(raw, Mapping):
        return Event(None, None, problem="an event is a JSON object with kind, key, time, payload")
    key = raw.get("key")
    if not isinstance(key, str) or not _KEY.match(key):
        return Event(_kind_text(raw.get("kind")), None,
                     problem=f"every event needs a key: 1-{MAX_KEY_LENGTH} characters, "
                             f"no spaces or '{DERIVED}'")
    kind = _kind_text(raw.get("kind"))
    payload = raw.get("payload")
    if payload is None:
        payload = {}
    event = Event(kind, key, payload=payload if isinstance(payload, Mapping) else None)
    unknown = sorted(str(name) for name in raw if name not in _EVENT_FIELDS)
    if unknown:
        return replace(event, problem=f"unknown field {quote_input(unknown[0])}; an event has "
                                      f"{', '.join(_EVENT_FIELDS)}")
    if kind not in KINDS:
        return replace(event, problem=f"unknown event kind {quote_input(raw.get('kind'))}; "
                                      "expected one of "
                                      f"{', '.join(KINDS)}")
    claimed = None
    if raw.get("time") is not None:
        try:
            claimed = _recent(parse_time(raw["time"]), now, "time")
        except ValueError as error:
            return replace(event, problem=str(error))
    event = replace(event, time=claimed)
    if not isinstance(payload, Mapping):
        return replace(event, problem="payload must be a JSON object")
    try:
        data = _PAYLOAD_CHECKS.get(kind, _no_data)(payload, now)
    except ValueError as error:
        return replace(event, problem=f"payload: {error}")
    return replace(event, data=MappingProxyType(data))


def _kind_text(kind: Any) -> str | None:
    return kind if isinstance(kind, str) and 0 < len(kind) <= 64 else None


def _recent(moment: datetime, now: datetime, what: str) -> datetime:
    if moment > now + CLOCK_SKEW:
        raise ValueError(f"{what} {moment.isoformat()} lies in the future")
    if moment < now - MAX_EVENT_AGE:
        raise ValueError(f"{what} {moment.isoformat()} is more than a day old")
    return moment


def _number(payload: Mapping, name: str, *, minimum: float, maximum: float | None = None,
            whole: bool = False, required: bool = True) -> float | int | None:
    value = payload.get(name)
    if value is None:
        if required:
            raise ValueError(f"{name} is missing")
        return None
    kinds = (int,) if whole else (int, float)
    # An int is always finite, and math.isfinite would overflow converting a 400-digit one
    # to a float; comparing it with the bounds below is exact at any size.
    if isinstance(value, bool) or not isinstance(value, kinds) \
            or (isinstance(value, float) and not math.isfinite(value)):
        raise ValueError(f"{name} must be a {'whole ' if whole else ''}number, "
                         f"got {quote_input(value)}")
    if value < minimum or (maximum is not None and value > maximum):
        bound = f"between {minimum} and {maximum}" if maximum is not None else f"at least {minimum}"
        raise ValueError(f"{name} must be {bound}, got {quote_input(value)}")
    return value


def _no_data(payload: Mapping, now: datetime) -> dict:
    return {}


def _activity(payload: Mapping, now: datetime) -> dict:
    return {"active_minutes": _number(payload, "active_minutes", minimum=1,
                                      maximum=MAX_ACTIVE_MINUTES, whole=True)}


def _training_run(payload: Mapping, now: datetime) -> dict:
    duration = _number(payload, "duration_s", minimum=0, maximum=MAX_RUN_SECONDS)
    if duration <= 0:
        raise ValueError("duration_s must be greater than 0")
    for name in ("epochs", "steps"):
        _number(payload, name, minimum=0, whole=True, required=False)
    if payload.get("metrics") is not None and not isinstance(payload["metrics"], Mapping):
        raise ValueError("metrics must be an object of final metric values")
    if payload.get("logdir") is not None and not isinstance(payload["logdir"], str):
        raise ValueError("logdir must be text")
    return {"duration_s": float(duration)}


def _gpu_utilization(payload: Mapping, now: datetime) -> dict:
    try:
        minute = _recent(parse_time(payload.get("minute")), now, "minute")
    except ValueError as error:
        raise ValueError(f"minute: {error}") from None
    gpus = payload.get("gpus")
    if not isinstance(gpus, list) or not 1 <= len(gpus) <= MAX_GPUS:
        raise ValueError(f"gpus must be a list of 1 to {MAX_GPUS} GPUs")
    utilizations = []
    for position, gpu in enumerate(gpus):
        if not isinstance(gpu, Mapping):
            raise ValueError(f"gpus[{position}] must be an object")
        try:
            _number(gpu, "index", minimum=0, whole=True)
            utilizations.append(_number(gpu, "util", minimum=0, maximum=100))
            _number(gpu, "mem_used_mb", minimum=0, required=False)
        except ValueError as error:
            raise ValueError(f"gpus[{position}].{error}") from None
    return {"minute": minute.replace(second=0, microsecond=0),
            "utilization": sum(utilizations) / len(utilizations), "gpus": len(utilizations)}


_PAYLOAD_CHECKS = {
    "notebook_activity": _activity,
    "training_run": _training_run,
    GPU_UTILIZATION: _gpu_utilization,
}


# --- sessions -----------------------------------------------------------------------


def sessions_up(sessions: tuple[SessionSpan, ...], at: datetime,
                grace: timedelta = timedelta(0)) -> list[SessionSpan]:
    """The sessions up at ``at`` (an end less than ``grace`` ago counts)."""
    return [span for span in sessions if span.ready_at <= at
            and (span.ended_at is None or at <= span.ended_at + grace)]


def running_session(sessions: tuple[SessionSpan, ...], at: datetime,
                    grace: timedelta = timedelta(0)) -> SessionSpan | None:
    """The longest-running of the sessions up at ``at`` (an end less than ``grace`` ago counts)."""
    up = sessions_up(sessions, at, grace)
    return min(up, key=lambda span: span.ready_at) if up else None


def run_end(event: Event, now: datetime) -> datetime:
    """When a training run ended: its claimed time, never later than now."""
    return min(event.time, now) if event.time is not None else now


def uptime(span: SessionSpan, now: datetime) -> timedelta:
    end = now if span.ended_at is None else min(now, span.ended_at)
    return max(timedelta(0), end - span.ready_at)


def minutes_up(sessions: tuple[SessionSpan, ...], start: datetime, end: datetime) -> int:
    """Whole minutes between ``start`` and ``end`` during which any of the sessions was up."""
    spans = sorted((max(span.ready_at, start), min(span.ended_at or end, end))
                   for span in sessions)
    total = timedelta(0)
    current_start = current_end = None
    for lo, hi in spans:
        if hi <= lo:
            continue
        if current_end is None or lo > current_end:
            if current_end is not None:
                total += current_end - current_start
            current_start, current_end = lo, hi
        else:
            current_end = max(current_end, hi)
    if current_end is not None:
        total += current_end - current_start
    return int(total.total_seconds() // 60)


# --- the decision ---------------------------------------------------------------------


def decide(event: Event, source: str, rules: EarningRules, state: UserState,
           now: datetime) -> Outcome:
    """The outcome of one event that is not a duplicate (the caller checks keys first)."""
    if source not in SOURCES:
        raise ValueError(f"source must be one of {', '.join(SOURCES)}, not {source!r}")
    if event.key is None:
        return rejected(event.problem or "no key", stored=False)
    if source == SERVER and state.recent_claims >= rules.rate_limit_per_minute:
        return rejected(f"rate limit: at most {rules.rate_limit_per_minute} events a minute "
                        "from a single-user server; send it again later", stored=False)
    if state.frozen:
        return rejected("earning frozen")
    if event.problem:
        return rejected(event.problem)
    grace = timedelta(seconds=rules.session_grace_s)
    if event.kind == GPU_UTILIZATION:
        minute = event.data["minute"]
        # The sample covers the minute that starts at ``minute``.
        up = (sessions_up(state.sessions, minute, grace)
              + sessions_up(state.sessions, minute + timedelta(minutes=1), grace))
        if not up:
            return rejected("no running session at that minute")
        # Evidence for the efficiency bonus only counts from GPUs the user was given.
        gpus = max(span.gpus for span in up)
        if gpus == 0:
            return rejected("GPU utilisation from a session without GPUs")
        if event.data["gpus"] > gpus:
            return rejected(f"the sample reports {event.data['gpus']} GPUs; the session at that "
                            f"minute has {gpus}")
        return earned(0, None, reason="recorded (GPU utilisation earns nothing itself)",
                      sample=GpuSample(minute, event.data["utilization"]))

    rule = rules[KIND_RULES[event.kind]]
    if not rule.enabled:
        return rejected(f"the {rule.name} rule is switched off", rule.name)
    if rule.trusted_only and source != HUB:
        return rejected(f"{event.kind} events are accepted from the hub only", rule.name)

    minutes = None
    wanted = rule.points
    session = running_session(state.sessions, now, grace)
    if session is None and source == SERVER:
        return rejected("no running session: claims count only while a session runs", rule.name)
    if rule.name == NOTEBOOK_ACTIVITY:
        claimed = event.data["active_minutes"]
        available = minutes_up(state.sessions, day_start(now), now) - state.active_minutes_today
        if available <= 0:
            return rejected(f"no session time left to account for: {state.active_minutes_today} "
                            "active minutes already credited today", rule.name)
        minutes = min(claimed, available)
        wanted = minutes * rule.points
    elif rule.name == TRAINING_RUN:
        duration = event.data["duration_s"]
        if duration < rule.min_duration_s:
            return rejected(f"run too short: {duration:.0f} s; runs of at least "
                            f"{rule.min_duration_s} s count", rule.name)
        if session is None:
            return rejected("no running session: a training run counts only while a session "
                            "runs", rule.name)
        # The whole run must fit in a session that was up when the run ended, no slack.
        end = run_end(event, now)
        ran_in = running_session(state.sessions, end, grace)
        up = uptime(ran_in, end) if ran_in is not None else timedelta(0)
        if timedelta(seconds=duration) > up:
            return rejected(f"run longer than the session: {duration:.0f} s claimed, the session "
                            f"had been up {up.total_seconds():.0f} s when it ended", rule.name)

    outcome = _award(rule, wanted, source, rules, state, now)
    if outcome.outcome == EARNED and minutes is not None:
        outcome = replace(outcome, minutes=minutes)
        if minutes < event.data["active_minutes"]:
            outcome = replace(outcome, reason=_join(
                f"{minutes} of {event.data['active_minutes']} active minutes credited "
                "(no more than the session was up)", outcome.reason))
    if rule.name == TRAINING_RUN and outcome.outcome == EARNED:
        after = apply(state, event, source, outcome, now)
        outcome = replace(outcome, bonus=_efficiency(event, source, rules, after, now))
    return outcome


def _award(rule: Rule, wanted: int, source: str, rules: EarningRules, state: UserState,
           now: datetime) -> Outcome:
    """Earn ``wanted`` units under ``rule``, within its caps and the claims bound."""
    usage = state.usage.get(rule.name, RuleUsage())
    if rule.once and usage.ever >= 1:
        return capped(f"{rule.name} is granted once per user, and was already", rule.name)
    if rule.min_interval_s and usage.last_at is not None \
            and now - usage.last_at < timedelta(seconds=rule.min_interval_s):
        return capped(f"too soon: {rule.name} earns at most once every {rule.min_interval_s} s",
                      rule.name)
    if rule.max_per_day is not None and usage.count >= rule.max_per_day:
        return capped(f"daily cap reached: {rule.name} earns at most {rule.max_per_day} "
                      f"time{'s' if rule.max_per_day != 1 else ''} a day", rule.name)
    points, limited = wanted, ""
    if rule.max_points_per_day is not None:
        left = rule.max_points_per_day - usage.points
        if left <= 0:
            return capped(f"daily cap reached: {rule.name} earns at most "
                          f"{format_amount(rule.max_points_per_day)} credits a day", rule.name)
        if left < points:
            points, limited = left, f"limited to the {rule.name} daily cap"
    if source == SERVER:
        left = rules.max_claims_per_day - state.claims_today
        if left <= 0:
            return capped(f"daily bound reached: claims from a single-user server earn at most "
                          f"{format_amount(rules.max_claims_per_day)} credits a day", rule.name)
        if left < points:
            points, limited = left, "limited to the daily bound on claims"
    expires_at = (now + timedelta(days=rule.expires_after_days)
                  if rule.expires_after_days is not None else None)
    return earned(points, rule.name, reason=limited, expires_at=expires_at)


def _efficiency(event: Event, source: str, rules: EarningRules, state: UserState,
                now: datetime) -> Outcome | None:
    """The efficiency bonus of a counted training run: its GPUs were busy while it ran."""
    rule = rules[EFFICIENCY_BONUS]
    if not rule.enabled:
        return None
    if rule.trusted_only and source != HUB:
        return rejected("the efficiency bonus is granted on the hub's measurements only",
                        rule.name, stored=False)
    duration = event.data["duration_s"]
    end = run_end(event, now)
    start = end - timedelta(seconds=duration)
    by_minute: dict[datetime, list[float]] = {}
    for sample in state.gpu_samples:
        if start - timedelta(minutes=1) <= sample.minute <= end:
            by_minute.setdefault(sample.minute, []).append(sample.utilization)
    run_minutes = max(1, math.ceil(duration / 60))
    needed = max(1, math.ceil(run_minutes * rule.min_coverage_percent / 100))
    if len(by_minute) < needed:
        return rejected(f"GPU utilisation was reported for {len(by_minute)} of the run's "
                        f"{run_minutes} minutes; {needed} needed", rule.name, stored=False)
    mean = sum(sum(values) / len(values) for values in by_minute.values()) / len(by_minute)
    if mean < rule.min_utilization:
        return rejected(f"mean GPU utilisation {mean:.0f}% is below {rule.min_utilization}%",
                        rule.name, stored=False)
    return _award(rule, rule.points, source, rules, state, now)


def apply(state: UserState, event: Event, source: str, outcome: Outcome,
          now: datetime) -> UserState:
    """``state`` after ``outcome`` was recorded (unchanged by answers that store nothing)."""
    if not outcome.stored:
        return state
    usage = dict(state.usage)
    claims = state.claims_today
    for part in (outcome, outcome.bonus):
        if part is None or part.outcome != EARNED or not part.points:
            continue
        before = usage.get(part.rule, RuleUsage())
        usage[part.rule] = RuleUsage(before.count + 1, before.points + part.points, now,
                                     before.ever + 1)
        if source == SERVER:
            claims += part.points
    return replace(
        state,
        usage=MappingProxyType(usage),
        claims_today=claims,
        active_minutes_today=state.active_minutes_today + (
            outcome.minutes if outcome.outcome == EARNED and outcome.minutes else 0),
        recent_claims=state.recent_claims + (1 if source == SERVER else 0),
        gpu_samples=state.gpu_samples + ((outcome.sample,) if outcome.sample else ()),
    )


def _join(*parts: str) -> str:
    return "; ".join(part for part in parts if part)
