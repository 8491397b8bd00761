"""Pricing: exact integer arithmetic, ceil where we charge, floor where we promise time."""

import math
from decimal import Decimal
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from jupyterhub_credits.catalog import (
    InvalidHours,
    cost_of_seconds,
    hold_amount,
    load_catalog,
    max_affordable_hours,
    paid_seconds,
    parse_hours,
    session_rate,
)
from jupyterhub_credits.ledger.amounts import parse_amount

CATALOG = load_catalog(Path(__file__).resolve().parent.parent / "config" / "catalog.yaml")
A100 = 15_000  # units per hour in the shipped catalog

rates = st.integers(min_value=1, max_value=10**9)
four_place_hours = st.decimals(
    min_value=Decimal("0.0001"), max_value=Decimal(100_000), places=4, allow_nan=False
)


# --- rate_per_hour


def test_rate_per_hour_multiplies_the_gpu_price_by_the_count():
    assert session_rate(CATALOG, "a100", 1) == A100
    assert session_rate(CATALOG, "a100", 3) == 3 * A100
    assert session_rate(CATALOG, "t4", 2) == 2 * 5_000


def test_rate_per_hour_of_a_cpu_only_session_is_the_cpu_price():
    assert session_rate(CATALOG, "none", 0) == 1_000


@pytest.mark.parametrize(
    "gpu_type, gpus, error",
    [
        ("none", 1, ValueError),
        ("a100", 0, ValueError),
        ("a100", -1, ValueError),
        ("v100", 1, ValueError),
        ("a100", 1.0, TypeError),
        ("a100", True, TypeError),
    ],
)
def test_rate_per_hour_refuses_impossible_combinations(gpu_type, gpus, error):
    with pytest.raises(error):
        session_rate(CATALOG, gpu_type, gpus)


# --- hold_amount, cost_of_seconds, paid_seconds


def test_120_credits_hold_exactly_8_a100_hours():
    assert hold_amount(A100, Decimal(8)) == parse_amount("120")
    assert hold_amount(A100, 8) == 120_000


def test_hold_amount_rounds_up_to_the_next_unit():
    assert hold_amount(A100, Decimal("0.0001")) == 2  # 1.5 units
    assert hold_amount(1, Decimal("0.5")) == 1
    assert hold_amount(1000, Decimal("1.5")) == 1500


def test_one_second_at_15_credits_an_hour_costs_5_units():
    # 15000 units / 3600 s = 4.1666... units, rounded up.
    assert cost_of_seconds(A100, 1) == 5


@pytest.mark.parametrize(
    "rate, seconds, units",
    [
        (A100, 0, 0),
        (A100, 3600, 15_000),
        (A100, 3599, 14_996),  # 14995.83...
        (3600, 1, 1),
        (3601, 1, 2),
        (3599, 1, 1),
        (A100, Decimal("0.5"), 3),  # 2.08... units
        (A100, 8 * 3600, 120_000),
    ],
)
def test_cost_of_seconds_is_the_ceiling_of_rate_times_seconds(rate, seconds, units):
    assert cost_of_seconds(rate, seconds) == units


@pytest.mark.parametrize(
    "rate, held, seconds",
    [
        (A100, 5, 1),  # 1.2 s
        (A100, 4, 0),  # 0.96 s
        (A100, 120_000, 8 * 3600),
        (A100, 0, 0),
        (3600, 1, 1),
    ],
)
def test_paid_seconds_is_the_floor(rate, held, seconds):
    assert paid_seconds(rate, held) == seconds


@pytest.mark.parametrize("function", [hold_amount, cost_of_seconds])
def test_floats_never_touch_an_amount(function):
    with pytest.raises(TypeError):
        function(A100, 1.5)
    with pytest.raises(TypeError):
        function(15000.0, 1)


@pytest.mark.parametrize("function", [hold_amount, cost_of_seconds, paid_seconds])
def test_negative_values_are_refused(function):
    with pytest.raises(ValueError):
        function(A100, -1)
    with pytest.raises(ValueError):
        function(-1, 1)


def test_a_zero_rate_pays_for_no_definite_time():
    with pytest.raises(ValueError):
        paid_seconds(0, 100)
    with pytest.raises(ValueError):
        max_affordable_hours(0, 100)


@given(rate=rates, seconds=st.integers(min_value=0, max_value=10**8))
def test_cost_of_seconds_is_the_least_sufficient_integer(rate, seconds):
    cost = cost_of_seconds(rate, seconds)
    assert cost * 3600 >= rate * seconds
    assert (cost - 1) * 3600 < rate * seconds


@given(rate=rates, held=st.integers(min_value=0, max_value=10**12))
def test_paid_seconds_never_cost_more_than_was_held(rate, held):
    seconds = paid_seconds(rate, held)
    assert cost_of_seconds(rate, seconds) <= held
    assert cost_of_seconds(rate, seconds + 1) > held


@given(rate=rates, hours=four_place_hours)
def test_a_hold_pays_for_all_the_seconds_it_was_placed_for(rate, hours):
    held = hold_amount(rate, hours)
    assert held == cost_of_seconds(rate, hours * 3600)
    # Billing stops at whole seconds, so a hold pays for every whole second it covers.
    assert paid_seconds(rate, held) >= math.floor(hours * 3600)


# --- max_affordable_hours


def test_120_credits_afford_exactly_8_a100_hours():
    assert max_affordable_hours(A100, 120_000) == Decimal(8)
    assert max_affordable_hours(A100, 119_999) == Decimal("7.99")


def test_max_affordable_hours_floors_and_caps():
    assert max_affordable_hours(A100, 40_000) == Decimal("2.66")
    assert max_affordable_hours(A100, 40_000, places=4) == Decimal("2.6666")
    assert max_affordable_hours(A100, 10**9, max_hours=Decimal(24)) == Decimal(24)
    assert max_affordable_hours(A100, 0) == 0
    assert max_affordable_hours(A100, -5) == 0


@given(
    rate=rates,
    available=st.integers(min_value=0, max_value=10**12),
    places=st.integers(min_value=0, max_value=4),
)
def test_max_affordable_hours_is_the_longest_affordable_hold(rate, available, places):
    hours = max_affordable_hours(rate, available, places=places)
    assert hold_amount(rate, hours) <= available
    assert hold_amount(rate, hours + Decimal(1).scaleb(-places)) > available


# --- parse_hours


@pytest.mark.parametrize(
    "value, hours",
    [
        ("8", Decimal(8)),
        (8, Decimal(8)),
        ("1.5", Decimal("1.5")),
        (" 2.50 ", Decimal("2.5")),
        ("0.0001", Decimal("0.0001")),
        ("1.00000", Decimal(1)),
        (Decimal("1.25"), Decimal("1.25")),
        ("007", Decimal(7)),
    ],
)
def test_parse_hours_reads_exact_decimals(value, hours):
    assert parse_hours(value) == hours


@pytest.mark.parametrize(
    "value, words",
    [
        (1.5, "not a float"),
        ("nan", "expected a number of hours"),
        (Decimal("NaN"), "not a finite number"),
        (Decimal("Infinity"), "not a finite number"),
        ("-1", "must not be negative"),
        (-1, "must not be negative"),
        ("0", "greater than zero"),
        ("0.0000", "greater than zero"),
        ("1.00001", "at most 4 decimal places"),
        ("abc", "expected a number of hours"),
        ("", "expected a number of hours"),
        ("1e3", "expected a number of hours"),
        ("1,5", "expected a number of hours"),
        (None, "expected a number of hours"),
        (True, "expected a number of hours"),
        ([1], "expected a number of hours"),
        ("1000000", "more than 100000 hours"),
        ("9" * 5000, "more than 100000 hours"),
    ],
)
def test_parse_hours_refuses_with_a_reason(value, words):
    with pytest.raises(InvalidHours, match=words):
        parse_hours(value)
    assert issubclass(InvalidHours, ValueError)


@given(hours=four_place_hours)
def test_parse_hours_round_trips_its_text(hours):
    assert parse_hours(str(hours)) == hours
    assert parse_hours(format(hours, "f")) == hours
