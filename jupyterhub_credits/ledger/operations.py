"""Ledger operations as JSON objects: the ``apply`` format for scripts and bulk grants.

One operation a line, one result a line, in order; a bad line gets an error
result and never stops the rest. The operation's content, not its
spelling, identifies a retry: ``"10.5"`` and ``"10.50"`` are the same amount.
"""

from __future__ import annotations

import json
from datetime import timedelta
from decimal import Decimal, InvalidOperation
from typing import IO, Iterable, Iterator

from ..quoting import ELLIPSIS, QUOTE_LIMIT, quote_input
from .amounts import InvalidAmount, parse_amount
from .core import Ledger, TransferResult, account_name
from .errors import InvalidRequest, LedgerError

#: Required and optional fields of each operation (besides "op" and "key").
OPERATIONS = {
    "grant": ({"user", "amount", "reason"}, {"expires_in_days", "metadata"}),
    "deduct": ({"user", "amount", "reason"}, {"metadata"}),
    "hold": ({"user", "amount"}, {"timeout_s", "reason", "metadata"}),
    "post": ({"hold"}, {"amount", "reason", "metadata"}),
    "void": ({"hold"}, {"reason", "metadata"}),
    "reverse": ({"transfer", "reason"}, {"metadata"}),
}

MAX_DAYS = 36500
#: Whole numbers in metadata stay ints up to this many digits (beyond: decimal text).
_MAX_INT_DIGITS = 30
MAX_TIMEOUT_S = 10 * 365 * 86400


def _positive_number(value, name: str, maximum: int) -> Decimal:
    if isinstance(value, bool) or not isinstance(value, (int, Decimal, str)):
        raise InvalidRequest(f"{name} must be a number, not {quote_input(value)}")
    try:
        number = Decimal(value)
    except InvalidOperation:
        raise InvalidRequest(f"{name} must be a number, not {quote_input(value)}") from None
    if not number.is_finite() or number <= 0 or number > maximum:
        raise InvalidRequest(f"{name} must be a number between 0 and {maximum}, "
                             f"not {quote_input(value)}")
    return number


def _cut(text: str, limit: int = QUOTE_LIMIT) -> str:
    return text if len(text) <= limit else text[:limit] + ELLIPSIS


def _text(op: dict, name: str, *, required: bool = False) -> str:
    value = op.get(name, "")
    if not isinstance(value, str) or (required and not value.strip()):
        raise InvalidRequest(f"{name} must be a non-empty string")
    if "\x00" in value:  # PostgreSQL cannot store it in text: refuse it here, in words
        raise InvalidRequest(f"{name} must not contain NUL characters")
    return value


def _metadata(op: dict) -> dict | None:
    value = op.get("metadata")
    if value is not None and not isinstance(value, dict):
        raise InvalidRequest("metadata must be a JSON object")
    return _plain(value)


def _plain(value):
    """JSON-storable copy: Decimals from the parser become ints or strings."""
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_plain(v) for v in value]
    if isinstance(value, Decimal):
        # int() of 1E+999999999 would write a billion digits: only modest whole numbers
        # become ints; anything else stays its (short, scientific) decimal text.
        if value.is_finite() and value.adjusted() < _MAX_INT_DIGITS \
                and value == value.to_integral_value():
            return int(value)
        return str(value)
    return value


def apply_operation(ledger: Ledger, op, *, actor: str) -> TransferResult:
    """Carry out one operation; raises LedgerError (or InvalidAmount) when refused."""
    if not isinstance(op, dict):
        raise InvalidRequest("each line must be a JSON object")
    kind = op.get("op")
    if kind not in OPERATIONS:
        raise InvalidRequest(f"unknown op {quote_input(kind)}; "
                             f"expected one of {', '.join(OPERATIONS)}")
    required, optional = OPERATIONS[kind]
    missing = sorted(required - op.keys())
    if "key" not in op:
        missing.insert(0, "key")
    if missing:
        raise InvalidRequest(f"{kind}: missing {', '.join(missing)}")
    unknown = sorted(op.keys() - required - optional - {"op", "key"})
    if unknown:
        raise InvalidRequest(f"{kind}: unknown field "
                             f"{', '.join(_cut(str(name)) for name in unknown[:5])}")
    key = op["key"]
    if not isinstance(key, str):
        raise InvalidRequest("key must be a string")

    # What identifies a retry: the request with amounts normalised to units.
    fingerprint = {name: _plain(value) for name, value in op.items() if name != "key"}
    amount = None
    if "amount" in op:
        amount = parse_amount(op["amount"])
        fingerprint["amount"] = amount
    metadata = _metadata(op)
    reason = _text(op, "reason", required=kind in ("grant", "deduct", "reverse"))

    if kind == "grant":
        expires_at = None
        if op.get("expires_in_days") is not None:
            days = _positive_number(op["expires_in_days"], "expires_in_days", MAX_DAYS)
            expires_at = ledger.clock() + timedelta(days=float(days))
        return ledger.grant(_user(op), amount, key=key, reason=reason, actor=actor,
                            expires_at=expires_at, metadata=metadata, fingerprint=fingerprint)
    if kind == "deduct":
        return ledger.deduct(_user(op), amount, key=key, reason=reason, actor=actor,
                             metadata=metadata, fingerprint=fingerprint)
    if kind == "hold":
        timeout = None
        if op.get("timeout_s") is not None:
            seconds = _positive_number(op["timeout_s"], "timeout_s", MAX_TIMEOUT_S)
            timeout = timedelta(seconds=float(seconds))
        return ledger.hold(_user(op), amount, key=key, reason=reason, actor=actor,
                           timeout=timeout, metadata=metadata, fingerprint=fingerprint)
    if kind == "post":
        return ledger.post(_ref(op, "hold"), amount, key=key, reason=reason, actor=actor,
                           metadata=metadata, fingerprint=fingerprint)
    if kind == "void":
        return ledger.void(_ref(op, "hold"), key=key, reason=reason, actor=actor,
                           metadata=metadata, fingerprint=fingerprint)
    transfer = op["transfer"]
    if isinstance(transfer, bool) or not isinstance(transfer, (str, int)):
        raise InvalidRequest("transfer must be a transfer key (string) or id (integer)")
    return ledger.reverse(transfer, key=key, reason=reason, actor=actor, metadata=metadata,
                          fingerprint=fingerprint)


def _user(op: dict) -> str:
    if not isinstance(op["user"], str):
        raise InvalidRequest("user must be a string")
    return account_name(op["user"])


def _ref(op: dict, name: str) -> str:
    if not isinstance(op[name], str) or not op[name]:
        raise InvalidRequest(f"{name} must be the key of a transfer")
    return op[name]


def result_line(key, result: TransferResult | None = None, error: str | None = None,
                line: int | None = None) -> dict:
    record: dict = {"key": key}
    if error is None:
        record.update(ok=True, transfer=result.transfer.id, duplicate=result.duplicate)
    else:
        record.update(ok=False, error=error)
    if line is not None:
        record["line"] = line
    return record


def _parse_line(line: str):
    """One line as JSON (numbers as exact Decimals); InvalidRequest when it is not JSON."""
    try:
        return json.loads(line, parse_float=Decimal)
    except json.JSONDecodeError as error:
        raise InvalidRequest(f"invalid JSON: {error.msg} at column {error.colno}") from None
    except ValueError:  # an integer of more than 4,300 digits, which Python will not read
        raise InvalidRequest("invalid JSON: a number with too many digits") from None
    except RecursionError:  # "[" * 100_000
        raise InvalidRequest("invalid JSON: nested too deeply") from None


def apply_lines(ledger: Ledger, lines: Iterable[str], *, actor: str) -> Iterator[dict]:
    """One result for each input line, in order, whatever goes wrong with any of them."""
    for number, line in enumerate(lines, start=1):
        line = line.rstrip("\r\n")
        key = None
        try:
            if not line.strip():
                raise InvalidRequest("empty line")
            op = _parse_line(line)
            if isinstance(op, dict) and isinstance(op.get("key"), str):
                key = op["key"]
            result = apply_operation(ledger, op, actor=actor)
        except (LedgerError, InvalidAmount) as error:
            yield result_line(key, error=str(error), line=number)
        except RecursionError:  # metadata nested deeper than can be copied
            yield result_line(key, error="metadata is nested too deeply", line=number)
        else:
            yield result_line(key, result, line=number)


def apply_stream(ledger: Ledger, source: IO[str], out: IO[str], *, actor: str) -> int:
    """Apply every line of ``source``, writing results to ``out``; returns the failures."""
    failures = 0
    for record in apply_lines(ledger, source, actor=actor):
        failures += not record["ok"]
        out.write(json.dumps(record) + "\n")
        out.flush()
    return failures
