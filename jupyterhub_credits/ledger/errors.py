"""What the ledger refuses, and why, in words a person can act on."""

from .amounts import InvalidAmount


class LedgerError(Exception):
    """Base class: a request the ledger refused. Nothing was changed."""

    #: A short machine-readable code for APIs and the CLI's JSON output.
    code = "refused"


class InvalidRequest(LedgerError, ValueError):
    """Malformed input: a bad account name, a missing key, an impossible option."""

    code = "invalid"


class UnknownAccount(LedgerError):
    code = "unknown_account"

    def __init__(self, name: str):
        super().__init__(f"unknown account: {name}")
        self.name = name


class UnknownTransfer(LedgerError):
    code = "unknown_transfer"


class InsufficientFunds(LedgerError):
    code = "insufficient_funds"


class HoldNotPending(LedgerError):
    """The hold was already posted, voided or timed out: it resolves exactly once."""

    code = "hold_resolved"


class NotReversible(LedgerError):
    code = "not_reversible"


class IdempotencyConflict(LedgerError):
    """The idempotency key was already used for a different request."""

    code = "key_conflict"


__all__ = [
    "HoldNotPending",
    "IdempotencyConflict",
    "InsufficientFunds",
    "InvalidAmount",
    "InvalidRequest",
    "LedgerError",
    "NotReversible",
    "UnknownAccount",
    "UnknownTransfer",
]
