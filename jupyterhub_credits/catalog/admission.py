"""May this spawn start? A pure decision over plain data.

The spawner gathers the facts (the user's groups, running GPU sessions, free
GPUs, available balance) and asks two questions here:

1. ``validate_request``: is what the user asked for (``user_options``)
   something the catalog offers? Errors here are mistakes in the request.
2. ``admit``: may this user start it now? Checked in a fixed order — quota,
   then capacity, then balance — so a user always hears about the limit no
   amount of credits can lift before the one that waiting or earning can.

Nothing here reads a clock, a database or the cluster.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from decimal import Decimal
from fractions import Fraction
from typing import Any

from ..ledger.amounts import UNITS_PER_CREDIT, format_amount, format_exact
from ..quoting import quote_input
from .model import CPU_ONLY, QUOTA_KEYS, Catalog, Quotas
from .wording import balance_text, duration_text, hours_text, plural, price_text
from .pricing import (
    HOURS_DECIMAL_PLACES,
    InvalidHours,
    hold_amount,
    max_affordable_hours,
    paid_seconds,
    parse_hours,
    session_rate,
)

#: The keys of ``user_options`` a spawn request may carry, and nothing else.
USER_OPTION_KEYS = ("image", "gpu_type", "gpus", "hours")
#: Hours prepaid when a request does not say (e.g. a server started from the admin page).
DEFAULT_HOURS = Decimal(1)

QUOTA = "quota"
CAPACITY = "capacity"
BALANCE = "balance"

#: Quotas where a smaller value is the more generous one.
_SMALLER_IS_GENEROUS = frozenset({"min_prepaid_minutes", "min_extension_minutes"})


class InvalidUserOptions(ValueError):
    """``user_options`` that do not describe something the catalog offers.

    ``key`` names the offending option (one of ``USER_OPTION_KEYS``, or None
    for the request as a whole) so a form can point at the field.
    """

    def __init__(self, key: str | None, message: str):
        super().__init__(message)
        self.key = key


@dataclass(frozen=True)
class SpawnRequest:
    """A checked request: ids from the catalog, an exact duration and its rate.

    ``gpu_label`` is how messages name what runs ("A100", "CPU").
    """

    image: str
    gpu_type: str
    gpus: int
    hours: Decimal
    rate_per_hour: int
    gpu_label: str

    @property
    def uses_gpus(self) -> bool:
        return self.gpus > 0

    def user_options(self) -> dict[str, Any]:
        """The canonical ``user_options`` for this request (hours as exact text)."""
        return {
            "image": self.image,
            "gpu_type": self.gpu_type,
            "gpus": self.gpus,
            "hours": str(self.hours),
        }


@dataclass(frozen=True)
class Decision:
    """The answer of ``admit``.

    ``reason`` is None when admitted, else ``"quota"``, ``"capacity"`` or
    ``"balance"``. ``message`` is for the user. ``hold_units`` (what to hold)
    is set only when admitted. ``affordable_hours`` is set on a balance
    refusal when the balance covers at least the minimum session, so the form
    can offer that many hours instead.
    """

    ok: bool
    reason: str | None
    message: str
    rate_per_hour: int
    hold_units: int | None = None
    affordable_hours: Decimal | None = None


def validate_request(catalog: Catalog, user_options: Mapping[str, Any] | None) -> SpawnRequest:
    """Check ``user_options`` against the catalog and fill in what was left out.

    Defaults: no ``image`` → the catalog's default image; no ``gpu_type`` →
    ``"none"`` (CPU-only); no ``gpus`` → 1 with a GPU type, 0 without; no
    ``hours`` → ``DEFAULT_HOURS``. A key set to None or "" counts as left out.
    ``gpus`` may be an int or a string of digits (HTML forms send text);
    ``hours`` follows ``parse_hours`` (floats refused). Unknown keys are
    refused: a misspelt ``gpu`` must not quietly start a CPU-only session.
    """
    options = {} if user_options is None else user_options
    if not isinstance(options, Mapping):
        raise InvalidUserOptions(None, f"user_options must be a mapping, not {type(options).__name__}")
    unknown = sorted(str(key) for key in options if key not in USER_OPTION_KEYS)
    if unknown:
        raise InvalidUserOptions(
            unknown[0],
            f"unknown option {unknown[0]!r}; a spawn request has: {', '.join(USER_OPTION_KEYS)}",
        )
    given = {key: value for key, value in options.items() if value is not None and value != ""}

    requested_image = given.get("image", catalog.default_image.id)
    image_id = _catalog_id(requested_image, catalog.images)
    if image_id is None:
        choices = ", ".join(catalog.images)
        raise InvalidUserOptions(
            "image", f"unknown image {quote_input(requested_image)}; choose one of: {choices}"
        )
    image = catalog.images[image_id]

    requested_gpu_type = given.get("gpu_type", CPU_ONLY)
    gpu_type = _catalog_id(requested_gpu_type, [*catalog.gpu_types, CPU_ONLY])
    if gpu_type is None:
        choices = ", ".join([*catalog.gpu_types, CPU_ONLY])
        raise InvalidUserOptions(
            "gpu_type",
            f"unknown GPU type {quote_input(requested_gpu_type)}; choose one of: {choices}",
        )
    gpu = catalog.gpu_types.get(gpu_type)

    gpus = _gpu_count(given.get("gpus", 1 if gpu else 0))
    if gpu and gpus == 0:
        raise InvalidUserOptions(
            "gpus",
            f"a {gpu.display_name} session needs at least 1 GPU; "
            f'for no GPU choose gpu_type "{CPU_ONLY}"',
        )
    if not gpu and gpus > 0:
        raise InvalidUserOptions(
            "gpus", f"a CPU-only session has 0 GPUs, not {gpus}; choose a GPU type to get GPUs"
        )

    if not image.allows(gpu_type):
        assert gpu is not None
        if image.cpu_only:
            problem = f'{image.display_name} is CPU-only; choose gpu_type "{CPU_ONLY}"'
        else:
            names = ", ".join(catalog.gpu_types[g].display_name for g in image.gpu_types)
            problem = f"{image.display_name} does not run on {gpu.display_name}; it runs on {names}"
        raise InvalidUserOptions("gpu_type", problem)

    try:
        hours = parse_hours(given["hours"]) if "hours" in given else DEFAULT_HOURS
    except InvalidHours as error:
        raise InvalidUserOptions("hours", str(error)) from None

    return SpawnRequest(
        image=image_id,
        gpu_type=gpu_type,
        gpus=gpus,
        hours=hours,
        rate_per_hour=session_rate(catalog, gpu_type, gpus),
        gpu_label=gpu.display_name if gpu else "CPU",
    )


def _catalog_id(value: Any, known: Iterable[str]) -> str | None:
    """The catalog's own spelling of the id ``value`` names, in any letter case; None if none.

    People type "A100" for the catalog's ``a100``: ids are matched ignoring
    case (the catalog loader refuses two ids that differ only in case), and the
    request then carries the canonical id, so sessions, prices and GPU
    placement never see the user's spelling. Catalog ids are ASCII, so only
    ASCII letters fold: no Unicode look-alike (the Kelvin sign "K") names an id.
    """
    if not isinstance(value, str):
        return None
    known = list(known)
    if value in known:
        return value
    if not value.isascii():
        return None
    lowered = value.lower()
    return next((candidate for candidate in known if candidate.lower() == lowered), None)


#: A typo guard on a requested GPU count, far above any machine: a larger count is refused
#: here, before any price, quota message or ``int()`` of its text is made with it.
MAX_GPU_COUNT = 1024


def _gpu_count(value: Any) -> int:
    if isinstance(value, str):
        text = value.strip()
        # ASCII digits only: "²".isdigit() is True, yet int("²") fails; and a count too long
        # to be real is refused before int(), which rejects (slowly) thousands of digits.
        if text.isascii() and text.isdigit():
            if len(text.lstrip("0")) > len(str(MAX_GPU_COUNT)):
                raise InvalidUserOptions("gpus", f"gpus must be at most {MAX_GPU_COUNT}, "
                                             f"not {quote_input(text)}")
            value = int(text)
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidUserOptions("gpus", f"gpus must be a whole number, not {quote_input(value)}")
    if value < 0:
        raise InvalidUserOptions("gpus", f"gpus must not be negative, got {quote_input(value)}")
    if value > MAX_GPU_COUNT:
        raise InvalidUserOptions("gpus", f"gpus must be at most {MAX_GPU_COUNT}, "
                                     f"not {quote_input(value)}")
    return value


def effective_quotas(catalog: Catalog, groups: Iterable[str]) -> Quotas:
    """The quotas of a user who belongs to ``groups``.

    Each group listed in the catalog gives its own quotas: the catalog-wide
    ones with that group's overrides in place (so a group may lower a limit as
    well as raise it). A user in several such groups gets, for each quota, the
    most generous of those groups' values: the largest maximum, the smallest
    ``min_prepaid_minutes``. A user in no listed group gets the catalog-wide
    quotas. Groups the catalog does not list change nothing.
    """
    if isinstance(groups, str):
        raise TypeError("groups must be a list of group names, not one string")
    candidates = [
        catalog.groups[name].applied_to(catalog.quotas) for name in groups if name in catalog.groups
    ]
    if not candidates:
        return catalog.quotas
    values = {}
    for key in QUOTA_KEYS:
        pick = min if key in _SMALLER_IS_GENEROUS else max
        values[key] = pick(getattr(quotas, key) for quotas in candidates)
    return Quotas(**values)


def minimum_hours(quotas: Quotas) -> Decimal:
    """The shortest session one may ask for, in hours a request can carry.

    ``min_prepaid_minutes`` rounded up to ``HOURS_DECIMAL_PLACES`` (1 minute →
    0.0167 hours), so that asking for exactly this passes the quota check.
    """
    scale = 10**HOURS_DECIMAL_PLACES
    return Decimal(math.ceil(Fraction(quotas.min_prepaid_minutes) * scale / 60)).scaleb(
        -HOURS_DECIMAL_PLACES
    )


def pool_groups(catalog: Catalog, groups: Iterable[str]) -> tuple[str, ...]:
    """The user's groups whose pool account pays first, in catalog order."""
    member = set(groups)
    return tuple(name for name, group in catalog.groups.items() if group.pool and name in member)


def admit(
    request: SpawnRequest,
    *,
    quotas: Quotas,
    running_gpu_sessions: int,
    free_gpus: Mapping[str, int] | None,
    available_units: int,
) -> Decision:
    """Decide whether ``request`` may start now: quota, then capacity, then balance.

    ``quotas`` are the user's (``effective_quotas``); ``running_gpu_sessions``
    counts the user's sessions that hold GPUs now, not counting this one;
    ``free_gpus`` maps GPU type id to GPUs free right now (a type missing from
    it has none free; None skips the capacity check where it cannot be known,
    e.g. an autoscaling cluster); ``available_units`` is what the paying
    account(s) can spend, reserved funds excluded.
    """
    rate = request.rate_per_hour

    def refuse(reason: str, message: str, **extra) -> Decision:
        return Decision(ok=False, reason=reason, message=message, rate_per_hour=rate, **extra)

    # 1. Quota: limits per session and per user that no balance can lift.
    if request.gpus > quotas.max_gpus_per_session:
        return refuse(
            QUOTA,
            f"At most {plural(quotas.max_gpus_per_session, 'GPU')} per session; "
            f"you asked for {request.gpus}.",
        )
    if request.hours > quotas.max_hours_per_session:
        return refuse(
            QUOTA,
            f"At most {hours_text(quotas.max_hours_per_session)} per session; "
            f"you asked for {hours_text(request.hours)}.",
        )
    minimum_seconds = quotas.min_prepaid_minutes * 60
    if request.hours * 3600 < minimum_seconds:
        return refuse(
            QUOTA,
            f"A session is prepaid for at least {plural(quotas.min_prepaid_minutes, 'minute')}; "
            f"you asked for {duration_text(request.hours * 3600)}.",
        )
    if request.uses_gpus and running_gpu_sessions >= quotas.max_concurrent_gpu_sessions:
        return refuse(
            QUOTA,
            too_many_gpu_sessions(running_gpu_sessions, quotas.max_concurrent_gpu_sessions),
        )

    # 2. Capacity: are that many GPUs of that type free right now?
    if request.uses_gpus and free_gpus is not None:
        free = max(free_gpus.get(request.gpu_type, 0), 0)
        if free < request.gpus:
            if free == 0 and request.gpus == 1:
                detail = "no GPU is free right now"
            elif free == 0:
                detail = f"none of the {request.gpus} GPUs you asked for is free right now"
            else:
                detail = (
                    f"only {free} of the {plural(request.gpus, 'GPU')} you asked for "
                    f"{'is' if free == 1 else 'are'} free right now"
                )
            return refuse(
                CAPACITY,
                f"{request.gpu_label}: {detail}. Try fewer GPUs, another GPU type, or later.",
            )

    # 3. Balance: enough for the hours chosen, or say what it does buy.
    hold = hold_amount(rate, request.hours)
    what = _what(request)
    if available_units < hold:
        balance = max(available_units, 0)
        shortest = minimum_hours(quotas)
        shortest_cost = hold_amount(rate, shortest)
        if balance >= shortest_cost:
            affordable = max_affordable_hours(rate, balance, max_hours=quotas.max_hours_per_session)
            if affordable < shortest:  # e.g. 1 minute is 0.0167 hours, not 0.01
                affordable = max_affordable_hours(
                    rate, balance, max_hours=quotas.max_hours_per_session, places=4
                )
            buys = duration_text(paid_seconds(rate, balance))
            return refuse(
                BALANCE,
                f"{hours_text(request.hours)} of {what} cost {price_text(hold)}, "
                f"but your balance is {balance_text(balance)}, which buys {buys}. "
                f"Choose at most {hours_text(affordable)}, or earn more credits.",
                affordable_hours=affordable,
            )
        return refuse(
            BALANCE,
            f"Starting {what} needs at least {price_text(shortest_cost)} "
            f"(the shortest session, {plural(quotas.min_prepaid_minutes, 'minute')}); "
            f"your balance is {balance_text(balance)}.",
        )

    return Decision(
        ok=True,
        reason=None,
        message=f"Holding {price_text(hold)} for {hours_text(request.hours)} of {what}.",
        rate_per_hour=rate,
        hold_units=hold,
    )


# --- wording


def too_many_gpu_sessions(running: int, limit: int) -> str:
    """The refusal when ``running`` open GPU sessions already reach the ``limit``."""
    return (f"You already have {plural(running, 'GPU session')} running, the most allowed "
            f"at once ({limit}); stop one before starting another.")


def _what(request: SpawnRequest) -> str:
    """How messages name what runs, e.g. "1 × A100 (15.00 credits/hour)"."""
    units = request.rate_per_hour
    exact = format_amount(units) if units % (UNITS_PER_CREDIT // 100) == 0 else format_exact(units)
    rate = f"{exact} credits/hour"
    if request.uses_gpus:
        return f"{request.gpus} × {request.gpu_label} ({rate})"
    return f"{request.gpu_label} ({rate})"
