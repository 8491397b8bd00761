"""How amounts, hours and durations read in messages: one wording for the whole product.

Prices are rounded up and balances down to the cent, so a message never
understates what something costs nor overstates what a balance buys; durations
are floored for the same reason (paid time is never overstated).
"""

from __future__ import annotations

from decimal import Decimal

from ..ledger.amounts import UNITS_PER_CREDIT, format_amount

CENT = UNITS_PER_CREDIT // 100

#: Hours are exact to 4 places (0.0001 h = 0.36 s); more would only be noise in a message.
_HOURS_PLACES = Decimal("0.0001")


def plural(number: int | Decimal, noun: str) -> str:
    """ "1 minute", "2 minutes", "0.5 minutes" (exact decimals, no trailing zeros)."""
    text = format(Decimal(number).normalize(), "f")
    return f"{text} {noun}" if number == 1 else f"{text} {noun}s"


def hours_text(hours: Decimal) -> str:
    """ "1 hour", "2.25 hours"; more than 4 decimals are rounded to 4."""
    if hours.as_tuple().exponent < -4:
        hours = hours.quantize(_HOURS_PLACES)
    return plural(hours, "hour")


def price_text(units: int) -> str:
    """A price in credits, rounded up to the cent: "12.51 credits"."""
    return credits_text(-(-units // CENT) * CENT)


def balance_text(units: int) -> str:
    """A balance in credits, rounded down to the cent (never below 0): "12.49 credits"."""
    return credits_text(max(units, 0) // CENT * CENT)


def credits_text(units: int) -> str:
    """Units as credits with 2 decimals: "12.50 credits"."""
    return f"{format_amount(units)} credits"


def duration_text(seconds: int | float | Decimal) -> str:
    """A duration, floored: "2 h 13 min", "9 min 58 s", "45 s", "0 s"."""
    seconds = max(int(seconds), 0)
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours} h {minutes} min" if minutes else f"{hours} h"
    if minutes:
        return f"{minutes} min {secs} s" if secs else f"{minutes} min"
    return f"{secs} s"
