"""How a refusal quotes what a caller sent: never more than a few dozen characters.

Messages say what was wrong with the input, and quoting it helps, but the
input is the caller's: a 20-byte JSON number can stand for a billion digits,
and a request body can be megabytes long. ``quote_input`` shows a value in at
most ``QUOTE_LIMIT`` characters (plus an ellipsis) without ever building its
full text: huge integers are described by their size instead of printed
(Python refuses to print ones over 4,300 digits anyway), decimals by their
scientific form, containers by their JSON type.

Pure and dependency-free: every layer may use it.
"""

from __future__ import annotations

from decimal import Decimal

#: The most characters of a caller's value a message repeats.
QUOTE_LIMIT = 40
ELLIPSIS = "…"

_LOG10_2 = 0.30103


def quote_input(value, limit: int = QUOTE_LIMIT) -> str:
    """``value`` for a message: its repr, cut to ``limit`` characters with an ellipsis."""
    if isinstance(value, bool) or value is None:
        return repr(value)
    if isinstance(value, int):
        # Decided on the size before any conversion to text, which is what costs.
        if value.bit_length() > limit * 3:  # 3 bits per digit: limit digits at the least
            digits = int(value.bit_length() * _LOG10_2)
            return f"<a number of about {digits} digits>"
        return _cut(str(value), limit)
    if isinstance(value, (float, Decimal)):
        # str() of a Decimal is its scientific form ("1E+999999999"), never its expansion.
        return _cut(str(value), limit)
    if isinstance(value, str):
        if len(value) > limit:
            return repr(value[:limit] + ELLIPSIS)
        return repr(value)
    if isinstance(value, (bytes, bytearray)):
        return _cut(repr(bytes(value[:limit + 1])), limit)
    if isinstance(value, dict):
        return "<a JSON object>"
    if isinstance(value, (list, tuple)):
        return "<a JSON list>"
    return f"<{type(value).__name__}>"


def _cut(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[:limit] + ELLIPSIS


def unstorable_text(value, where: str = "the request") -> str | None:
    """Why ``value`` (parsed JSON) holds text no database column can keep, or None.

    JSON may carry ``\\u0000`` (PostgreSQL's text refuses NUL) and lone UTF-16
    surrogates such as ``\\ud800`` (no UTF-8 encoding exists): both are refused at
    the door with a message, instead of failing deep in a write. Walks the value
    iteratively (a deep body cannot exhaust the stack), keys and values alike.
    """
    pending = [(value, where)]
    while pending:
        item, place = pending.pop()
        if isinstance(item, str):
            if "\x00" in item:
                return f"{place} contains a NUL character (\\u0000), which cannot be stored"
            try:
                item.encode("utf-8")
            except UnicodeEncodeError:
                return (f"{place} contains a lone UTF-16 surrogate (such as \\ud800), "
                        "which is not text")
        elif isinstance(item, dict):
            for key, child in item.items():
                pending.append((key, place))
                pending.append((child, f"{place}: field {quote_input(key)}"
                                if isinstance(key, str) and unstorable_text(key) is None
                                else place))
        elif isinstance(item, (list, tuple)):
            pending.extend((child, place) for child in item)
    return None
