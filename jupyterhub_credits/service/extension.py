"""May a running session buy more time? A pure decision over plain numbers.

Used by ``POST /api/sessions/{server}/extend`` and by the meter's auto-extend.
The quota check comes first (no balance lifts it), then the balance. The
session's total paid time — its holds so far plus the new one — must stay
within ``max_hours_per_session``.
"""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal

from ..catalog import BALANCE, QUOTA, Quotas, hold_amount, max_affordable_hours, paid_seconds
from ..ledger import format_amount
from ..ledger.amounts import UNITS_PER_CREDIT

CENT = UNITS_PER_CREDIT // 100


@dataclass(frozen=True)
class Extension:
    """The answer: ``ok`` with ``hold_units`` to hold, or a refusal ``reason`` and ``message``.

    ``max_hours`` is the most that could be added now (quota and balance
    both counted), so a client can offer it.
    """

    ok: bool
    reason: str | None
    message: str
    hold_units: int | None
    max_hours: Decimal


def addable_hours(rate: int, held: int, available: int, quotas: Quotas) -> Decimal:
    """The most hours a session could add now (floored to 0.01 h, or 0.0001 h when small)."""
    room = max(hold_amount(rate, quotas.max_hours_per_session) - held, 0)
    units = max(min(room, available), 0)
    hours = max_affordable_hours(rate, units)
    return hours if hours or not units else max_affordable_hours(rate, units, places=4)


def decide_extension(*, rate: int, held: int, hours: Decimal, available: int,
                     quotas: Quotas) -> Extension:
    """Whether ``hours`` more may be held for a session at ``rate`` units/hour holding ``held``."""
    most = addable_hours(rate, held, available, quotas)
    units = hold_amount(rate, hours)
    paid = Decimal(paid_seconds(rate, held)) / 3600
    if held + units > hold_amount(rate, quotas.max_hours_per_session):
        return Extension(
            False, QUOTA,
            f"This session is paid for {_hours(paid)}; {_hours(hours)} more would exceed "
            f"the limit of {_hours(quotas.max_hours_per_session)} per session. "
            f"{_at_most(most)}",
            None, most)
    if units > available:
        return Extension(
            False, BALANCE,
            f"{_hours(hours)} more cost {_credits(-(-units // CENT) * CENT)}, but the balance "
            f"available is {_credits(max(available, 0) // CENT * CENT)}. {_at_most(most)}",
            None, most)
    return Extension(True, None, f"Holding {_credits(units)} for {_hours(hours)} more.",
                     units, most)


def _hours(hours: Decimal) -> str:
    hours = hours.quantize(Decimal("0.0001")) if hours.as_tuple().exponent < -4 else hours
    text = format(hours.normalize(), "f")
    return f"{text} hour" if hours == 1 else f"{text} hours"


def _credits(units: int) -> str:
    return f"{format_amount(units)} credits"


def _at_most(hours: Decimal) -> str:
    if not hours:
        return "No more time can be added now."
    return f"You can add at most {_hours(hours)} now."
