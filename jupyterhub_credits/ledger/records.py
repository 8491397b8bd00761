"""Transfers and balances as JSON-ready dicts (one shape everywhere; CSV in ``export``)."""

from __future__ import annotations

from .amounts import format_amount
from .core import Balance, Transfer
from .schema import BALANCE_NEUTRAL_KINDS


def iso(moment) -> str | None:
    return moment.isoformat().replace("+00:00", "Z") if moment is not None else None


def balance_to_dict(balance: Balance) -> dict:
    return {
        "account": balance.account,
        "available": format_amount(balance.available),
        "reserved": format_amount(balance.reserved),
        "total": format_amount(balance.total),
        "units": {"available": balance.available, "reserved": balance.reserved,
                  "total": balance.total},
    }


def transfer_to_dict(transfer: Transfer, *, account: str | None = None) -> dict:
    """A transfer; with ``account``, also its signed ``change`` to that account's balance."""
    record = {
        "id": transfer.id,
        "key": transfer.key,
        "kind": transfer.kind,
        "debit": transfer.debit_account,
        "credit": transfer.credit_account,
        "amount": format_amount(transfer.amount),
        "units": transfer.amount,
        "created_at": iso(transfer.created_at),
        "actor": transfer.actor,
        "reason": transfer.reason,
        "metadata": transfer.metadata,
        "pending_id": transfer.pending_id,
        "reversal_of": transfer.reversal_of,
    }
    if account is not None:
        change = 0
        if transfer.kind not in BALANCE_NEUTRAL_KINDS:
            change = transfer.amount if transfer.credit_account == account else -transfer.amount
        record["change"] = ("+" if change > 0 else "") + format_amount(change)
    return record


CSV_COLUMNS = ["id", "created_at", "kind", "debit", "credit", "amount", "units", "key", "actor",
               "reason", "pending_id", "reversal_of", "metadata"]
