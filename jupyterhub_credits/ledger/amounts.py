"""Credits as exact integers.

Every amount the ledger stores is an integer count of *units*; one credit is
``UNITS_PER_CREDIT`` units. People and scripts speak decimal strings ("12.5"),
which are parsed exactly (never through a float) and refused, with a message
that says why, when they cannot be represented.
"""

from __future__ import annotations

import re
from decimal import ROUND_HALF_UP, Context, Decimal, InvalidOperation

from ..quoting import quote_input

UNITS_PER_CREDIT = 1000
#: Digits after the decimal point that one unit allows.
DECIMAL_PLACES = 3
#: No single amount may exceed this many credits: a typo guard well below int64.
MAX_CREDITS = 10**12
MAX_UNITS = MAX_CREDITS * UNITS_PER_CREDIT

_UNIT = Decimal(1).scaleb(-DECIMAL_PLACES)
_AMOUNT_CONTEXT = Context(prec=28, traps=[InvalidOperation])
_DECIMAL_TEXT = re.compile(r"^\s*([+-]?)([0-9]+)(?:\.([0-9]+))?\s*$", re.ASCII)


class InvalidAmount(ValueError):
    """An amount that is not a positive, exact, bounded number of credits."""


def parse_amount(value, *, allow_zero: bool = False) -> int:
    """Return the number of units in ``value`` (a decimal string, int or Decimal).

    Floats are refused: they cannot carry money exactly, and a caller that has
    one has already lost precision. Hostile input is refused in time
    proportional to its length, and messages quote at most a few dozen
    characters of it (``quoting.quote_input``).
    """
    example = 'expected a decimal number such as "12.5"'
    if isinstance(value, bool) or value is None:
        raise InvalidAmount(f"invalid amount {value!r}: {example}")
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
            raise InvalidAmount(f"invalid amount {quote_input(value)}: not a finite number")
        if value.adjusted() > len(str(MAX_CREDITS)):  # before formatting 1E+999999999
            raise InvalidAmount(f"invalid amount: larger than {MAX_CREDITS} credits")
        # Places are judged before formatting too: 1E-999999999 is a billion zeros in "f".
        # At most 14 digits before the point and 3 after: exact in a 28-digit context.
        exact = value.quantize(_UNIT, context=_AMOUNT_CONTEXT)
        if exact != value:
            raise InvalidAmount(
                f"invalid amount {quote_input(value)}: at most {DECIMAL_PLACES} decimal places "
                f"(1 credit = {UNITS_PER_CREDIT} units)")
        text = format(exact, "f")
    elif isinstance(value, str):
        text = value
    else:
        raise InvalidAmount(f"invalid amount {quote_input(value)}: {example}")

    shown = quote_input(text.strip())
    match = _DECIMAL_TEXT.match(text)
    if not match:
        raise InvalidAmount(f"invalid amount {shown}: {example}")
    sign, whole, fraction = match.groups()
    whole = whole.lstrip("0") or "0"
    fraction = (fraction or "").rstrip("0")
    if len(fraction) > DECIMAL_PLACES:
        raise InvalidAmount(
            f"invalid amount {shown}: at most {DECIMAL_PLACES} decimal places "
            f"(1 credit = {UNITS_PER_CREDIT} units)"
        )
    if len(whole) > len(str(MAX_CREDITS)):
        raise InvalidAmount(f"invalid amount {shown}: larger than {MAX_CREDITS} credits")
    units = int(whole) * UNITS_PER_CREDIT + int(fraction.ljust(DECIMAL_PLACES, "0") or 0)
    if sign == "-" and units:
        raise InvalidAmount(f"invalid amount {shown}: must not be negative")
    if units == 0 and not allow_zero:
        raise InvalidAmount(f"invalid amount {shown}: must be greater than zero")
    if units > MAX_UNITS:
        raise InvalidAmount(f"invalid amount {shown}: larger than {MAX_CREDITS} credits")
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

