"""Credits as exact integers.

Every amount the ledger stores is an integer count of *units*; one credit is
``UNITS_PER_CREDIT`` units. People and scripts speak decimal strings ("12.5"),
which are parsed exactly (never through a float) and refused, with a message
that says why, when they cannot be represented.
"""

from __future__ import annotations

import re
from decimal import ROUND_HALF_UP, Decimal

UNITS_PER_CREDIT = 1000
#: Digits after the decimal point that one unit allows.
DECIMAL_PLACES = 3
#: No single amount may exceed this many credits: a typo guard well below int64.
MAX_CREDITS = 10**12
MAX_UNITS = MAX_CREDITS * UNITS_PER_CREDIT

_DECIMAL_TEXT = re.compile(r"^\s*([+-]?)([0-9]+)(?:\.([0-9]+))?\s*$", re.ASCII)


class InvalidAmount(ValueError):
    """An amount that is not a positive, exact, bounded number of credits."""


def parse_amount(value, *, allow_zero: bool = False) -> int:
    """Return the number of units in ``value`` (a decimal string, int or Decimal).

    Floats are refused: they cannot carry money exactly, and a caller that has
    one has already lost precision.
    """
    if isinstance(value, bool) or value is None:
        raise InvalidAmount(f"invalid amount {value!r}: expected a decimal number such as \"12.5\"")
    if isinstance(value, float):
        raise InvalidAmount(
            f"invalid amount {value!r}: give credits as a decimal string (\"12.5\"), not a float"
        )
    if isinstance(value, int):
        if abs(value) > MAX_CREDITS:  # before str(): Python refuses to print huge ints
            raise InvalidAmount(f"invalid amount: larger than {MAX_CREDITS} credits")
        text = str(value)
    elif isinstance(value, Decimal):
        if not value.is_finite():
            raise InvalidAmount(f"invalid amount {value!r}: not a finite number")
        if value.adjusted() > len(str(MAX_CREDITS)):  # before formatting 1E+999999999
            raise InvalidAmount(f"invalid amount: larger than {MAX_CREDITS} credits")
        text = format(value, "f")
    elif isinstance(value, str):
        text = value
    else:
        raise InvalidAmount(f"invalid amount {value!r}: expected a decimal number such as \"12.5\"")

    match = _DECIMAL_TEXT.match(text)
    if not match:
        raise InvalidAmount(f"invalid amount {text!r}: expected a decimal number such as \"12.5\"")
    sign, whole, fraction = match.groups()
    whole = whole.lstrip("0") or "0"
    fraction = (fraction or "").rstrip("0")
    if len(fraction) > DECIMAL_PLACES:
        raise InvalidAmount(
            f"invalid amount {text.strip()!r}: at most {DECIMAL_PLACES} decimal places "
            f"(1 credit = {UNITS_PER_CREDIT} units)"
        )
    if len(whole) > len(str(MAX_CREDITS)):
        raise InvalidAmount(f"invalid amount {text.strip()!r}: larger than {MAX_CREDITS} credits")
    units = int(whole) * UNITS_PER_CREDIT + int(fraction.ljust(DECIMAL_PLACES, "0") or 0)
    if sign == "-" and units:
        raise InvalidAmount(f"invalid amount {text.strip()!r}: must not be negative")
    if units == 0 and not allow_zero:
        raise InvalidAmount(f"invalid amount {text.strip()!r}: must be greater than zero")
    if units > MAX_UNITS:
        raise InvalidAmount(f"invalid amount {text.strip()!r}: larger than {MAX_CREDITS} credits")
    return units


def to_decimal(units: int) -> Decimal:
    """The exact value of ``units`` in credits."""
    return Decimal(units).scaleb(-DECIMAL_PLACES)


def format_amount(units: int, places: int = 2) -> str:
    """Credits as a decimal string for display, rounded half-up to ``places``."""
    quantum = Decimal(1).scaleb(-places)
    return str(to_decimal(units).quantize(quantum, rounding=ROUND_HALF_UP))


def format_exact(units: int) -> str:
    """Credits as a decimal string with every digit a unit carries ("12.500")."""
    return str(to_decimal(units).quantize(Decimal(1).scaleb(-DECIMAL_PLACES)))

