"""Parsing and formatting credit amounts: exact decimal text <-> integer units."""

from __future__ import annotations

from decimal import Decimal

import pytest

from jupyterhub_credits.ledger import (
    UNITS_PER_CREDIT,
    InvalidAmount,
    format_amount,
    format_exact,
    parse_amount,
)
from jupyterhub_credits.ledger.amounts import MAX_CREDITS, MAX_UNITS


def test_units_per_credit():
    assert UNITS_PER_CREDIT == 1000
    assert MAX_UNITS == 10**12 * 1000


@pytest.mark.parametrize(
    ("value", "units"),
    [
        ("12.5", 12_500),
        ("12.50", 12_500),
        ("12.500", 12_500),
        ("0.001", 1),
        ("0.01", 10),
        ("1", 1_000),
        ("007", 7_000),
        ("+3", 3_000),
        ("  4.25  ", 4_250),
        ("\t1\n", 1_000),
        # Trailing zeros carry no precision: the value is exactly representable.
        ("1.2300", 1_230),
        ("2.000000", 2_000),
        (1, 1_000),
        (250, 250_000),
        (Decimal("12.5"), 12_500),
        (Decimal("0.001"), 1),
        (Decimal("1.10"), 1_100),
        (Decimal("1E+3"), 1_000_000),  # a Decimal object, not text: its value is exact
        (str(MAX_CREDITS), MAX_UNITS),
        (MAX_CREDITS, MAX_UNITS),
        ("999999999999.999", MAX_UNITS - 1),
    ],
)
def test_parse_valid(value, units):
    assert parse_amount(value) == units
    assert isinstance(parse_amount(value), int)


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("1.2345", "at most 3 decimal places"),
        ("0.0001", "at most 3 decimal places"),
        (Decimal("0.0005"), "at most 3 decimal places"),
        ("-1", "must not be negative"),
        ("-0.001", "must not be negative"),
        (-5, "must not be negative"),
        (Decimal("-2.5"), "must not be negative"),
        ("0", "must be greater than zero"),
        ("0.000", "must be greater than zero"),
        ("-0", "must be greater than zero"),
        (0, "must be greater than zero"),
        (Decimal(0), "must be greater than zero"),
        ("NaN", "expected a decimal number"),
        ("nan", "expected a decimal number"),
        ("inf", "expected a decimal number"),
        ("Infinity", "expected a decimal number"),
        (Decimal("NaN"), "not a finite number"),
        (Decimal("Infinity"), "not a finite number"),
        (Decimal("-Infinity"), "not a finite number"),
        ("1e3", "expected a decimal number"),
        ("1E3", "expected a decimal number"),
        ("1.5e-2", "expected a decimal number"),
        ("abc", "expected a decimal number"),
        ("", "expected a decimal number"),
        ("   ", "expected a decimal number"),
        ("1,5", "expected a decimal number"),
        ("1 000", "expected a decimal number"),
        ("1_000", "expected a decimal number"),
        ("1.", "expected a decimal number"),
        ("1.2.3", "expected a decimal number"),
        ("--1", "expected a decimal number"),
        ("0x10", "expected a decimal number"),
        ("12 credits", "expected a decimal number"),
        (1.5, "not a float"),
        (0.1, "not a float"),
        (float("nan"), "not a float"),
        (True, "expected a decimal number"),
        (False, "expected a decimal number"),
        (None, "expected a decimal number"),
        ([1], "expected a decimal number"),
        (b"12", "expected a decimal number"),
        ("1000000000000.001", "larger than"),
        ("1000000000001", "larger than"),
        ("99999999999999", "larger than"),
        (MAX_CREDITS + 1, "larger than"),
        (Decimal("1E+13"), "larger than"),
    ],
)
def test_parse_refused(value, message):
    with pytest.raises(InvalidAmount, match=message):
        parse_amount(value)


def test_invalid_amount_is_a_value_error():
    assert issubclass(InvalidAmount, ValueError)


@pytest.mark.parametrize("value", ["0", "0.000", 0, Decimal(0), "-0"])
def test_parse_zero_allowed_when_asked(value):
    assert parse_amount(value, allow_zero=True) == 0


def test_allow_zero_still_refuses_negative():
    with pytest.raises(InvalidAmount, match="negative"):
        parse_amount("-1", allow_zero=True)


@pytest.mark.parametrize(
    "value",
    [
        "9" * 5000,
        10**5000,
    ],
    ids=["many-digits-text", "huge-int"],
)
def test_parse_huge_input_is_refused_with_invalid_amount(value):
    # Python refuses int<->str conversions past 4300 digits with a plain ValueError;
    # parse_amount promises InvalidAmount (with a message) for anything it cannot take.
    with pytest.raises(InvalidAmount):
        parse_amount(value)


def test_many_leading_zeros_are_still_the_small_number_they_spell():
    # Past 4300 digits Python's int() refuses text; the zeros are dropped first.
    assert parse_amount("0" * 5000 + "1") == 1000


def test_message_names_the_input():
    with pytest.raises(InvalidAmount, match=r"'1\.2345'"):
        parse_amount("1.2345")
    with pytest.raises(InvalidAmount, match=r"'-3'"):
        parse_amount(" -3 ")


@pytest.mark.parametrize(
    ("units", "text"),
    [
        (0, "0.00"),
        (1, "0.00"),
        (4, "0.00"),
        (5, "0.01"),  # half-up at the third decimal
        (1_004, "1.00"),
        (1_005, "1.01"),
        (1_015, "1.02"),
        (1_025, "1.03"),  # half-up, not banker's rounding
        (12_500, "12.50"),
        (12_345, "12.35"),
        (999_995, "1000.00"),
        (1_000, "1.00"),
        (MAX_UNITS, "1000000000000.00"),
        (-1_005, "-1.01"),
        (-12_500, "-12.50"),
    ],
)
def test_format_amount(units, text):
    assert format_amount(units) == text


@pytest.mark.parametrize(
    ("units", "places", "text"),
    [(12_345, 0, "12"), (12_500, 0, "13"), (12_345, 1, "12.3"), (12_350, 1, "12.4"),
     (12_345, 3, "12.345")],
)
def test_format_amount_places(units, places, text):
    assert format_amount(units, places) == text


@pytest.mark.parametrize(
    ("units", "text"),
    [(0, "0.000"), (1, "0.001"), (12_500, "12.500"), (12_345, "12.345"), (1_000, "1.000"),
     (MAX_UNITS, "1000000000000.000"), (-7, "-0.007")],
)
def test_format_exact(units, text):
    assert format_exact(units) == text


@pytest.mark.parametrize("units", [1, 7, 10, 999, 1_000, 12_345, 12_500, 10**9 + 1, MAX_UNITS])
def test_exact_round_trip(units):
    assert parse_amount(format_exact(units)) == units
