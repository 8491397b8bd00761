"""May a running session buy more time? A pure decision over plain numbers.

Used by ``POST /api/sessions/{server}/extend`` and by the meter's auto-extend.
The quota checks come first (no balance lifts them), then the balance. An
extension buys at least ``min_extension_minutes`` (each one is one more hold
that settlement resolves), and the session's total paid time — its holds so
far plus the new one — must stay within ``max_hours_per_session``.
"""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal

from ..catalog import BALANCE, QUOTA, Quotas, hold_amount, max_affordable_hours, paid_seconds
from ..catalog.wording import balance_text, credits_text, hours_text, plural, price_text


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
    """The most hours a session could add now (floored to 0.01 h, or 0.0001 h when small).

    0 when that is less than the shortest extension (``min_extension_minutes``).
    """
    room = max(hold_amount(rate, quotas.max_hours_per_session) - held, 0)
    units = max(min(room, available), 0)
    hours = max_affordable_hours(rate, units)
    hours = hours if hours or not units else max_affordable_hours(rate, units, places=4)
    return hours if _long_enough(hours, quotas) else Decimal(0)


def decide_extension(*, rate: int, held: int, hours: Decimal, available: int,
                     quotas: Quotas) -> Extension:
    """Whether ``hours`` more may be held for a session at ``rate`` units/hour holding ``held``."""
    most = addable_hours(rate, held, available, quotas)
    units = hold_amount(rate, hours)
    paid = Decimal(paid_seconds(rate, held)) / 3600
    if not _long_enough(hours, quotas):
        return Extension(
            False, QUOTA,
            f"An extension buys at least {plural(quotas.min_extension_minutes, 'minute')}; "
            f"{hours_text(hours)} is less. {_at_most(most)}",
            None, most)
    if held + units > hold_amount(rate, quotas.max_hours_per_session):
        return Extension(
            False, QUOTA,
            f"This session is paid for {hours_text(paid)}; {hours_text(hours)} more would exceed "
            f"the limit of {hours_text(quotas.max_hours_per_session)} per session. "
            f"{_at_most(most)}",
            None, most)
    if units > available:
        return Extension(
            False, BALANCE,
            f"{hours_text(hours)} more cost {price_text(units)}, but the balance "
            f"available is {balance_text(available)}. {_at_most(most)}",
            None, most)
    return Extension(True, None, f"Holding {credits_text(units)} for {hours_text(hours)} more.",
                     units, most)


def _long_enough(hours: Decimal, quotas: Quotas) -> bool:
    return hours * 60 >= quotas.min_extension_minutes


def _at_most(hours: Decimal) -> str:
    if not hours:
        return "No more time can be added now."
    return f"You can add at most {hours_text(hours)} now."
