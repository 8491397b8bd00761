"""``Ledger.available``: the one place that reads "what can this account spend now"."""

import pytest
from sqlalchemy.exc import OperationalError

from jupyterhub_credits.ledger import Ledger
from test_ledger_paths import DEPLOYED_PATHS, ledger_path_over
from test_ledger_paths import db_url, ledger, ledger_options  # noqa: F401

ledger_path = ledger_path_over(DEPLOYED_PATHS)


def test_an_account_without_transfers_has_nothing_available(ledger):
    assert ledger.available("user:nobody-yet") == 0


def test_available_counts_what_is_reserved(ledger):
    ledger.grant("user:alice", 5_000, key="g1", reason="test", actor="admin:test")
    ledger.hold("user:alice", 2_000, key="h1", actor="system:test")
    assert ledger.available("user:alice") == 3_000


def test_an_unreadable_ledger_is_an_error_not_a_zero_balance(tmp_path):
    ledger = Ledger.open(f"sqlite:///{tmp_path / 'ledger.sqlite'}")
    (tmp_path / "ledger.sqlite").unlink()
    (tmp_path / "ledger.sqlite").mkdir()  # the database file is gone: reading must fail loudly
    ledger.engine.dispose()
    with pytest.raises(OperationalError):
        ledger.available("user:alice")
    ledger.close()
