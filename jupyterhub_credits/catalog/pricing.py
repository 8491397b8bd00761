"""What sessions cost: exact integer arithmetic over ledger units.

Rates are integer units per hour; durations are whole seconds or exact
``Decimal`` hours. Every function here rounds in the platform's favour where it
charges (``ceil``) and in the user's favour where it promises time (``floor``),
so that a hold always covers the time it is said to pay for and billing never
runs past what was held. No float ever touches an amount.
"""

from __future__ import annotations

import math
import re
from decimal import Context, Decimal, InvalidOperation
from fractions import Fraction

from ..quoting import quote_input
from .model import CPU_ONLY, Catalog

SECONDS_PER_HOUR = 3600
#: Digits after the decimal point a user may give for hours (0.0001 h = 0.36 s).
HOURS_DECIMAL_PLACES = 4
#: A typo guard: no request or quota is this long (over 11 years).
MAX_HOURS = Decimal(100_000)

_HOURS_QUANTUM = Decimal(1).scaleb(-HOURS_DECIMAL_PLACES)
_HOURS_CONTEXT = Context(prec=28, traps=[InvalidOperation])
_HOURS_TEXT = re.compile(r"^\s*([+-]?)([0-9]+)(?:\.([0-9]+))?\s*$", re.ASCII)


class InvalidHours(ValueError):
    """A number of hours that is not a positive, exact decimal with at most 4 places."""


def parse_hours(value, *, unit: str = "hours") -> Decimal:
    """Return ``value`` (a decimal string, int or Decimal) as exact ``Decimal`` hours.

    Floats are refused for the same reason as in ``parse_amount``: "0.1" as a
    float is not 0.1, and hours turn into money. ``unit`` names what is parsed
    in messages (the catalog reads minutes with the same rules).

    Hostile input is refused in time proportional to its length: an int or a
    Decimal is judged by its size before it is written out (``1E+999999999``
    is 12 characters that expand to a billion digits), and a message quotes at
    most ``QUOTE_LIMIT`` characters of what was sent.
    """
    example = f'a number of {unit} such as "1.5"'
    if isinstance(value, bool) or value is None:
        raise InvalidHours(f"invalid {unit} {value!r}: expected {example}")
    if isinstance(value, float):
        raise InvalidHours(f"invalid {unit} {quote_input(value)}: give {unit} as a decimal "
                           f'string ("1.5"), not a float')
    if isinstance(value, int):
        if abs(value) > MAX_HOURS:  # before str(): a huge int is slow (or refused) to print
            raise InvalidHours(f"invalid {unit} {quote_input(value)}: "
                               f"more than {MAX_HOURS} {unit}")
        text = str(value)
    elif isinstance(value, Decimal):
        text = _decimal_text(value, unit)
    elif isinstance(value, str):
        text = value
    else:
        raise InvalidHours(f"invalid {unit} {quote_input(value)}: expected {example}")

    match = _HOURS_TEXT.match(text)
    shown = quote_input(text.strip())
    if not match:
        raise InvalidHours(f"invalid {unit} {shown}: expected {example}")
    sign, whole, fraction = match.groups()
    fraction = (fraction or "").rstrip("0")
    if len(fraction) > HOURS_DECIMAL_PLACES:
        raise InvalidHours(
            f"invalid {unit} {shown}: at most {HOURS_DECIMAL_PLACES} decimal places"
        )
    if len(whole.lstrip("0")) > len(str(MAX_HOURS)):
        raise InvalidHours(f"invalid {unit} {shown}: more than {MAX_HOURS} {unit}")
    hours = Decimal(f"{whole}.{fraction}" if fraction else whole)
    if sign == "-" and hours:
        raise InvalidHours(f"invalid {unit} {shown}: must not be negative")
    if not hours:
        raise InvalidHours(f"invalid {unit} {shown}: must be greater than zero")
    if hours > MAX_HOURS:
        raise InvalidHours(f"invalid {unit} {shown}: more than {MAX_HOURS} {unit}")
    return hours


def _decimal_text(value: Decimal, unit: str) -> str:
    """``value`` in fixed-point text, refused first if that text would be out of all bounds.

    ``format(value, "f")`` writes every digit (``1E+999999999``: a billion
    characters; ``1E-999999999``: as many zeros), so size and places are read
    from the Decimal's own exponent and digits, which cost nothing.
    """
    shown = quote_input(value)
    if not value.is_finite():
        raise InvalidHours(f"invalid {unit} {shown}: not a finite number")
    if not value:
        return "0"  # 0E-999999999 is zero too, and "0" says so without a billion zeros
    if value < 0:
        raise InvalidHours(f"invalid {unit} {shown}: must not be negative")
    if value.adjusted() >= len(str(MAX_HOURS)):
        raise InvalidHours(f"invalid {unit} {shown}: more than {MAX_HOURS} {unit}")
    # Below 10**6 with 4 places: at most 10 digits, exact in a 28-digit context.
    places = value.quantize(_HOURS_QUANTUM, context=_HOURS_CONTEXT)
    if places != value:
        raise InvalidHours(f"invalid {unit} {shown}: at most {HOURS_DECIMAL_PLACES} "
                           "decimal places")
    return format(places, "f")


def session_rate(catalog: Catalog, gpu_type: str, gpus: int) -> int:
    """Units per hour for ``gpus`` GPUs of ``gpu_type``, or the CPU price for "none"."""
    if isinstance(gpus, bool) or not isinstance(gpus, int):
        raise TypeError(f"gpus must be an int, not {type(gpus).__name__}")
    if gpu_type == CPU_ONLY:
        if gpus != 0:
            raise ValueError(f'a CPU-only session (gpu_type "{CPU_ONLY}") has 0 GPUs, not {gpus}')
        return catalog.cpu.price_per_hour
    try:
        gpu = catalog.gpu_types[gpu_type]
    except KeyError:
        raise ValueError(f"unknown GPU type {gpu_type!r}") from None
    if gpus < 1:
        raise ValueError(f"a {gpu.display_name} session needs at least 1 GPU, not {gpus}")
    return gpu.price_per_gpu_hour * gpus


def hold_amount(rate_per_hour: int, hours: Decimal | int) -> int:
    """Units to hold for ``hours`` at ``rate_per_hour``: ceil(rate × hours)."""
    return math.ceil(_rate(rate_per_hour) * _exact(hours, "hours"))


def cost_of_seconds(rate_per_hour: int, seconds: int | Decimal) -> int:
    """Units owed for ``seconds`` of use: ceil(rate × seconds / 3600), billed per second."""
    return math.ceil(_rate(rate_per_hour) * _exact(seconds, "seconds") / SECONDS_PER_HOUR)


def paid_seconds(rate_per_hour: int, held_units: int) -> int:
    """Whole seconds that ``held_units`` pay for at ``rate_per_hour`` (floor).

    ``cost_of_seconds(rate, paid_seconds(rate, held)) <= held`` always holds,
    so a session stopped at its paid time never owes more than its hold.
    """
    rate = _rate(rate_per_hour)
    if rate == 0:
        raise ValueError("a rate of 0 units per hour pays for unlimited time")
    held = _exact(held_units, "held_units")
    return math.floor(held * SECONDS_PER_HOUR / rate)


def max_affordable_hours(
    rate_per_hour: int,
    available_units: int,
    *,
    max_hours: Decimal | None = None,
    places: int = 2,
) -> Decimal:
    """The most hours ``available_units`` buy, floored to ``places`` decimals.

    Capped at ``max_hours`` (the quota) when given. The result ``h`` always
    satisfies ``hold_amount(rate, h) <= available_units``, so the spawn form can
    offer it as the top of its hours range.
    """
    if not 0 <= places <= HOURS_DECIMAL_PLACES:
        raise ValueError(f"places must be between 0 and {HOURS_DECIMAL_PLACES}")
    rate = _rate(rate_per_hour)
    if rate == 0:
        raise ValueError("a rate of 0 units per hour buys unlimited time")
    scale = 10**places
    steps = max(available_units, 0) * scale // rate
    hours = Decimal(steps).scaleb(-places)
    if max_hours is not None and hours > max_hours:
        return max_hours
    return hours


def _rate(rate_per_hour: int) -> int:
    if isinstance(rate_per_hour, bool) or not isinstance(rate_per_hour, int):
        raise TypeError(
            f"a rate must be an int number of units per hour, not {rate_per_hour!r}"
        )
    if rate_per_hour < 0:
        raise ValueError(f"a rate must not be negative, got {rate_per_hour}")
    return rate_per_hour


def _exact(value, name: str) -> Fraction:
    """``value`` as an exact Fraction; floats are refused (they are not exact)."""
    if isinstance(value, bool) or not isinstance(value, (int, Decimal)):
        raise TypeError(f"{name} must be an int or Decimal, not {value!r}")
    if isinstance(value, Decimal) and not value.is_finite():
        raise ValueError(f"{name} must be finite, got {value!r}")
    if value < 0:
        raise ValueError(f"{name} must not be negative, got {value}")
    return Fraction(value)
