"""The credits ledger: accounts, immutable transfers, holds and lots.

Pure Python and SQLAlchemy; never imports JupyterHub, Tornado or Kubernetes.
"""

from .amounts import UNITS_PER_CREDIT, format_amount, format_exact, parse_amount
from .core import (
    EXPIRED,
    ISSUANCE,
    USAGE,
    Balance,
    Ledger,
    SweepReport,
    Transfer,
    TransferResult,
    account_name,
)
from .errors import *  # noqa: F401,F403 - the error classes are part of the API
from .errors import __all__ as _errors
from .export import csv_chunks, defuse
from .reports import (
    HISTORY_KINDS,
    AccountRow,
    LotView,
    account_summary,
    accounts_page,
    daily_flows,
    expiring_within,
    history_page,
    lots_of,
    top_consumers,
)

__all__ = [
    "EXPIRED", "ISSUANCE", "USAGE", "UNITS_PER_CREDIT", "Balance", "Ledger", "SweepReport",
    "Transfer", "TransferResult", "account_name", "format_amount", "format_exact",
    "parse_amount", *_errors,
    # read models and the CSV export
    "HISTORY_KINDS", "AccountRow", "LotView", "account_summary", "accounts_page", "csv_chunks",
    "daily_flows", "defuse", "expiring_within", "history_page", "lots_of", "top_consumers",
]
