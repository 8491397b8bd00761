"""One wording for amounts, hours and durations in every message."""

from decimal import Decimal

from jupyterhub_credits.catalog.wording import (
    balance_text,
    credits_text,
    duration_text,
    hours_text,
    plural,
    price_text,
)


def test_durations_are_floored_and_short():
    assert [duration_text(s) for s in (0, 45, 60, 598, 3600, 7500, 7979.9, -3)] == [
        "0 s", "45 s", "1 min", "9 min 58 s", "1 h", "2 h 5 min", "2 h 12 min", "0 s"]


def test_prices_round_up_and_balances_down_to_the_cent():
    assert price_text(12_501) == "12.51 credits"
    assert price_text(12_500) == "12.50 credits"
    assert balance_text(12_509) == "12.50 credits"
    assert balance_text(-5) == "0.00 credits"
    assert credits_text(1_000) == "1.00 credits"


def test_hours_and_counts():
    assert hours_text(Decimal(1)) == "1 hour"
    assert hours_text(Decimal("2.250")) == "2.25 hours"
    assert hours_text(Decimal("0.123456")) == "0.1235 hours"
    assert plural(1, "minute") == "1 minute"
    assert plural(Decimal("0.5"), "minute") == "0.5 minutes"
    assert plural(3, "GPU") == "3 GPUs"
