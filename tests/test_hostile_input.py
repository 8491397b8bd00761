"""Hostile input to the pure layers: refused quickly, with a short message, never a crash.

Each case here once was a stall (a billion-character string built on the
event loop), an exception other than the layer's own refusal (a 500 in the
service), or a message that echoed megabytes back. Timings are bounds on the
work itself (``time.perf_counter`` around one call), never sleeps.
"""

from __future__ import annotations

import time
from datetime import datetime, timezone
from decimal import Decimal
from pathlib import Path

import pytest

from jupyterhub_credits.catalog import (
    InvalidHours,
    InvalidUserOptions,
    load_catalog,
    parse_hours,
    validate_request,
)
from jupyterhub_credits.earning.decide import MAX_RUN_SECONDS, parse_event, parse_time
from jupyterhub_credits.ledger.amounts import InvalidAmount, parse_amount
from jupyterhub_credits.quoting import QUOTE_LIMIT, quote_input

CATALOG = load_catalog(Path(__file__).resolve().parent.parent / "config" / "catalog.yaml")
NOW = datetime(2026, 1, 1, 12, tzinfo=timezone.utc)
#: The most a refusal may take (the stalls it replaces took seconds to minutes).
FAST_S = 0.05
#: No message should be longer than this.
SHORT = 200


def refused(call, error, *args, **kwargs) -> str:
    """The message of ``error`` raised by ``call(*args)``; checks it came fast and short."""
    started = time.perf_counter()
    with pytest.raises(error) as raised:
        call(*args, **kwargs)
    elapsed = time.perf_counter() - started
    message = str(raised.value)
    assert elapsed < FAST_S, f"{elapsed:.3f} s"
    assert len(message) < SHORT, message[:1000]
    return message


# --- quoting -------------------------------------------------------------------------------


def test_quote_input_never_builds_or_repeats_a_long_text():
    assert quote_input("short") == "'short'"
    assert quote_input("x" * 10_000) == "'" + "x" * QUOTE_LIMIT + "…'"
    assert quote_input(12) == "12" and quote_input(None) == "None" and quote_input(True) == "True"
    started = time.perf_counter()
    assert quote_input(10 ** 100_000) == "<a number of about 100000 digits>"
    assert time.perf_counter() - started < FAST_S  # str() of it would be refused (> 4,300 digits)
    assert quote_input(Decimal("1E+999999999")) == "1E+999999999"
    assert quote_input(Decimal("1" * 100)) == "1" * QUOTE_LIMIT + "…"
    assert quote_input(["x"] * 10_000) == "<a JSON list>"
    assert quote_input({"a": 1}) == "<a JSON object>"


# --- hours ---------------------------------------------------------------------------------------

HUGE_HOURS = [
    Decimal("1e999999999"),  # {"hours": 1e999999999} read with parse_float=Decimal
    Decimal("1E+999999999999999999"),
    Decimal("-1E+999999999999999999"),
    Decimal("1E-999999999"),  # a billion zeros after the point in fixed-point form
    Decimal("1" * 1_000_000),
    "1" * 1_000_000,
    "1." + "0" * 1_000_000 + "1",
    "1e999999999",
    10 ** 4000,
    -(10 ** 4000),
    float("inf"),
    Decimal("NaN"),
]


@pytest.mark.parametrize("value", HUGE_HOURS, ids=lambda v: quote_input(v, 20))
def test_huge_hours_are_refused_fast_with_a_short_message(value):
    message = refused(parse_hours, InvalidHours, value)
    assert message.startswith("invalid hours")


def test_hours_that_are_long_but_fine_are_read_exactly():
    assert parse_hours(Decimal("1." + "0" * 1_000_000)) == 1
    assert parse_hours(Decimal("0E-999999999") + Decimal("0.25")) == Decimal("0.25")
    assert parse_hours(Decimal("1.50000")) == Decimal("1.5")
    assert parse_hours("0" * 1000 + "2") == 2
    assert "greater than zero" in refused(parse_hours, InvalidHours, Decimal("0E-999999999"))
    assert "4 decimal places" in refused(parse_hours, InvalidHours, Decimal("0.00001"))
    # Digits outside ASCII are not hours (re's \d would take Arabic-Indic digits).
    assert "expected" in refused(parse_hours, InvalidHours, "\u0663")


# --- amounts -------------------------------------------------------------------------------------


@pytest.mark.parametrize("value", [
    Decimal("1E-999999999"), Decimal("1E+999999999"), "9" * 1_000_000, "x" * 1_000_000,
    Decimal("NaN" + "1" * 1000), ["x"] * 1000, 10 ** 4000,
], ids=lambda v: quote_input(v, 20))
def test_hostile_amounts_are_refused_fast_with_a_short_message(value):
    refused(parse_amount, InvalidAmount, value)


# --- spawn options -------------------------------------------------------------------------------


@pytest.mark.parametrize("gpus", ["²", "٣", "9" * 5000, 10 ** 5000, -(10 ** 5000), "1" * 10,
                                  1025, ["1"] * 1000], ids=lambda v: quote_input(v, 20))
def test_odd_gpu_counts_are_a_clean_invalid_request(gpus):
    message = refused(validate_request, InvalidUserOptions, CATALOG,
                      {"image": "tf-2.21", "gpu_type": "a100", "gpus": gpus})
    assert message.startswith("gpus must")


def test_ordinary_gpu_counts_still_work():
    for gpus, expected in [("2", 2), (" 1 ", 1), (3, 3), ("0002", 2)]:
        request = validate_request(CATALOG, {"image": "tf-2.21", "gpu_type": "a100",
                                             "gpus": gpus})
        assert request.gpus == expected


# --- events --------------------------------------------------------------------------------------


def problem(raw) -> str:
    """The problem parse_event finds in ``raw`` (it never raises); checks it is short."""
    started = time.perf_counter()
    event = parse_event(raw, NOW)
    assert time.perf_counter() - started < FAST_S
    assert event.problem and len(event.problem) < SHORT, event.problem
    return event.problem


def test_huge_integers_in_a_payload_are_a_problem_not_an_overflow():
    # math.isfinite(10**400) raised OverflowError: a 500 for the whole batch.
    base = {"kind": "notebook_activity", "key": "k", "time": NOW.isoformat()}
    assert "active_minutes must be between" in problem({**base, "payload": {
        "active_minutes": 10 ** 400}})
    assert "about 400 digits" in problem({**base, "payload": {"active_minutes": 10 ** 400}})
    run = {"kind": "training_run", "key": "r", "time": NOW.isoformat()}
    assert "duration_s" in problem({**run, "payload": {"duration_s": 10 ** 400}})
    assert "duration_s" in problem({**run, "payload": {"duration_s": 1e300}})
    assert "duration_s" in problem({**run, "payload": {"duration_s": MAX_RUN_SECONDS + 1}})
    assert "steps" in problem({**run, "payload": {"duration_s": 300, "steps": -(10 ** 400)}})
    fine = parse_event({**run, "payload": {"duration_s": 300, "steps": 10 ** 400}}, NOW)
    assert fine.problem is None  # a huge step count is odd, but finite and harmless


@pytest.mark.parametrize("moment", ["0001-01-01T00:00:00+01:00", "9999-12-31T23:59:59-01:00"])
def test_a_time_that_leaves_the_calendar_in_utc_is_a_problem(moment):
    with pytest.raises(ValueError, match="out of range"):
        parse_time(moment)
    assert "out of range" in problem({"kind": "login", "key": "k", "time": moment})
    assert "out of range" in problem({"kind": "gpu_utilization", "key": "g", "payload": {
        "minute": moment, "gpus": [{"index": 0, "util": 50}]}})


def test_event_problems_quote_little_of_what_was_sent():
    assert "x" * 50 not in problem({"kind": "login", "key": "k", "time": "x" * 100_000})
    assert "k" * 50 not in problem({"kind": "k" * 100_000, "key": "k"})
    assert "unknown event kind" in problem({"kind": 10 ** 4000, "key": "k"})
    assert "f" * 50 not in problem({"kind": "login", "key": "k", "f" * 100_000: 1})
    assert "u" * 50 not in problem({"kind": "notebook_activity", "key": "k",
                                    "payload": {"active_minutes": "u" * 100_000}})
