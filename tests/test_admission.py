"""Admission: is the request valid, and may it start now (quota → capacity → balance)?"""

import dataclasses
from decimal import Decimal
from pathlib import Path
from types import MappingProxyType

import pytest
from hypothesis import given
from hypothesis import strategies as st

from jupyterhub_credits.catalog import (
    BALANCE,
    CAPACITY,
    DEFAULT_HOURS,
    QUOTA,
    GroupPolicy,
    InvalidUserOptions,
    Quotas,
    admit,
    effective_quotas,
    hold_amount,
    load_catalog,
    minimum_hours,
    pool_groups,
    validate_request,
)

CATALOG = load_catalog(Path(__file__).resolve().parent.parent / "config" / "catalog.yaml")
QUOTAS = CATALOG.quotas  # 3 GPUs, 24 hours, 2 concurrent GPU sessions, 1 minute minimum
PLENTY = {"t4": 8, "a100": 8, "h100": 8}


def request(**options):
    return validate_request(CATALOG, options)


def decide(spawn, *, quotas=QUOTAS, running=0, free=PLENTY, available=10**9):
    return admit(
        spawn,
        quotas=quotas,
        running_gpu_sessions=running,
        free_gpus=free,
        available_units=available,
    )


def with_groups(**groups):
    return dataclasses.replace(
        CATALOG,
        groups=MappingProxyType(
            {
                name: GroupPolicy(name=name, quotas=MappingProxyType(overrides), pool=pool)
                for name, (overrides, pool) in groups.items()
            }
        ),
    )


# --- validate_request


def test_an_empty_request_gets_the_documented_defaults():
    for options in ({}, None, {"image": None, "gpu_type": "", "gpus": None, "hours": None}):
        spawn = validate_request(CATALOG, options)
        assert spawn.image == CATALOG.default_image.id
        assert (spawn.gpu_type, spawn.gpus, spawn.hours) == ("none", 0, DEFAULT_HOURS)
        assert spawn.rate_per_hour == CATALOG.cpu.price_per_hour


def test_a_gpu_type_without_a_count_means_one_gpu():
    spawn = request(gpu_type="a100", hours="8")
    assert (spawn.gpus, spawn.hours, spawn.rate_per_hour) == (1, Decimal(8), 15_000)
    assert spawn.gpu_label == "A100"


def test_form_text_is_accepted_and_the_canonical_options_round_trip():
    spawn = request(image="tf-2.17", gpu_type="h100", gpus="2", hours="1.50")
    assert (spawn.gpus, spawn.hours) == (2, Decimal("1.5"))
    assert spawn.user_options() == {
        "image": "tf-2.17",
        "gpu_type": "h100",
        "gpus": 2,
        "hours": "1.5",
    }
    assert validate_request(CATALOG, spawn.user_options()) == spawn


def cpu_only_h100_catalog():
    images = dict(CATALOG.images)
    images["tf-2.17"] = dataclasses.replace(images["tf-2.17"], gpu_types=("t4", "a100"))
    return dataclasses.replace(CATALOG, images=MappingProxyType(images))


@pytest.mark.parametrize(
    "options, key, words",
    [
        (
            {"gpu": "a100"},
            "gpu",
            "unknown option 'gpu'; a spawn request has: image, gpu_type, gpus, hours",
        ),
        ({"image": "tf-1.15"}, "image", "unknown image 'tf-1.15'; choose one of: tf-2.21"),
        ({"image": ["tf-2.21"]}, "image", "unknown image"),
        (
            {"gpu_type": "v100"},
            "gpu_type",
            "unknown GPU type 'v100'; choose one of: t4, a100, h100, none",
        ),
        (
            {"image": "tf-2.21-cpu", "gpu_type": "a100"},
            "gpu_type",
            'is CPU-only; choose gpu_type "none"',
        ),
        ({"gpu_type": "a100", "gpus": "two"}, "gpus", "gpus must be a whole number"),
        ({"gpu_type": "a100", "gpus": 1.0}, "gpus", "gpus must be a whole number"),
        ({"gpu_type": "a100", "gpus": True}, "gpus", "gpus must be a whole number"),
        ({"gpu_type": "a100", "gpus": -1}, "gpus", "must not be negative"),
        ({"gpu_type": "a100", "gpus": 0}, "gpus", "needs at least 1 GPU"),
        ({"gpu_type": "none", "gpus": 2}, "gpus", "a CPU-only session has 0 GPUs"),
        ({"gpus": 1}, "gpus", "a CPU-only session has 0 GPUs"),
        ({"hours": 1.5}, "hours", "not a float"),
        ({"hours": "abc"}, "hours", "expected a number of hours"),
        ({"hours": "0"}, "hours", "greater than zero"),
        ({"hours": "-2"}, "hours", "must not be negative"),
        ({"hours": "1.23456"}, "hours", "at most 4 decimal places"),
    ],
)
def test_invalid_requests_say_which_option_is_wrong(options, key, words):
    with pytest.raises(InvalidUserOptions) as caught:
        validate_request(CATALOG, options)
    assert caught.value.key == key
    assert words in str(caught.value)


def test_a_gpu_type_the_image_does_not_run_on_is_refused():
    with pytest.raises(
        InvalidUserOptions, match=r"TensorFlow 2\.17 .* does not run on H100; it runs on T4, A100"
    ):
        validate_request(cpu_only_h100_catalog(), {"image": "tf-2.17", "gpu_type": "h100"})


def test_user_options_must_be_a_mapping():
    with pytest.raises(InvalidUserOptions):
        validate_request(CATALOG, ["image"])


# --- admit: success


def test_120_credits_start_8_a100_hours_and_hold_all_of_it():
    decision = decide(request(gpu_type="a100", hours="8"), available=120_000)
    assert decision.ok and decision.reason is None
    assert decision.hold_units == 120_000
    assert decision.rate_per_hour == 15_000
    assert (
        decision.message == "Holding 120.00 credits for 8 hours of 1 × A100 (15.00 credits/hour)."
    )


def test_the_reference_limit_of_3_a100_for_24_hours_is_admitted():
    decision = decide(request(gpu_type="a100", gpus=3, hours=24), available=3 * 24 * 15_000)
    assert decision.ok
    assert decision.hold_units == 1_080_000


def test_cpu_sessions_ignore_gpu_limits_and_capacity():
    decision = decide(request(hours="2"), running=99, free={}, available=2_000)
    assert decision.ok and decision.hold_units == 2_000


def test_unknown_capacity_is_not_checked():
    assert decide(request(gpu_type="h100", gpus=3), free=None).ok


# --- admit: quota


@pytest.mark.parametrize(
    "options, running, words",
    [
        ({"gpu_type": "a100", "gpus": 4}, 0, "At most 3 GPUs per session; you asked for 4."),
        (
            {"gpu_type": "t4", "hours": "24.5"},
            0,
            "At most 24 hours per session; you asked for 24.5 hours.",
        ),
        ({"hours": "25"}, 0, "At most 24 hours per session"),
        (
            {"gpu_type": "t4", "hours": "0.01"},
            0,
            "prepaid for at least 1 minute; you asked for 36 s.",
        ),
        (
            {"gpu_type": "t4"},
            2,
            "You already have 2 GPU sessions running, the most allowed at once (2)",
        ),
    ],
)
def test_quota_refusals(options, running, words):
    decision = decide(request(**options), running=running)
    assert not decision.ok
    assert decision.reason == QUOTA
    assert words in decision.message
    assert decision.hold_units is None


def test_the_shortest_session_can_be_asked_for():
    assert minimum_hours(QUOTAS) == Decimal("0.0167")
    assert minimum_hours(dataclasses.replace(QUOTAS, min_prepaid_minutes=90)) == Decimal("1.5")
    assert decide(request(gpu_type="t4", hours=str(minimum_hours(QUOTAS)))).ok


# --- admit: capacity


def test_capacity_says_how_many_gpus_are_free():
    decision = decide(request(gpu_type="a100", gpus=2), free={"a100": 1})
    assert decision.reason == CAPACITY
    assert decision.message.startswith("A100: only 1 of the 2 GPUs you asked for is free right now")


@pytest.mark.parametrize("free", [{"a100": 0}, {"t4": 4}, {}, {"a100": -1}])
def test_capacity_when_no_gpu_of_that_type_is_free(free):
    decision = decide(request(gpu_type="a100", gpus=2), free=free)
    assert decision.reason == CAPACITY
    assert "none of the 2 GPUs you asked for is free right now" in decision.message
    single = decide(request(gpu_type="a100"), free=free)
    assert single.message.startswith("A100: no GPU is free right now.")


# --- admit: balance


def test_a_balance_short_of_the_hours_says_what_it_buys():
    decision = decide(request(gpu_type="a100", hours="8"), available=40_000)
    assert decision.reason == BALANCE
    assert decision.affordable_hours == Decimal("2.66")
    assert decision.message == (
        "8 hours of 1 × A100 (15.00 credits/hour) cost 120.00 credits, but your balance is "
        "40.00 credits, which buys 2 h 40 min. Choose at most 2.66 hours, "
        "or earn more credits."
    )


def test_a_balance_one_unit_short_is_refused():
    decision = decide(request(gpu_type="a100", hours="8"), available=119_999)
    assert decision.reason == BALANCE
    assert decision.affordable_hours == Decimal("7.99")


def test_a_balance_short_of_the_minimum_says_what_is_needed():
    # One minute of an A100 is 0.0167 h = 250.5 → 251 units: shown rounded up.
    decision = decide(request(gpu_type="a100"), available=250)
    assert decision.reason == BALANCE
    assert decision.affordable_hours is None
    assert decision.message == (
        "Starting 1 × A100 (15.00 credits/hour) needs at least 0.26 credits "
        "(the shortest session, 1 minute); your balance is 0.25 credits."
    )


def test_a_balance_of_just_the_minimum_is_offered_the_minimum():
    spawn = request(gpu_type="a100")
    decision = decide(spawn, available=251)
    assert decision.reason == BALANCE
    assert decision.affordable_hours == Decimal("0.0167")
    assert decide(dataclasses.replace(spawn, hours=decision.affordable_hours), available=251).ok


def test_a_negative_balance_is_shown_as_zero():
    decision = decide(request(gpu_type="a100"), available=-5_000)
    assert "your balance is 0.00 credits" in decision.message


# --- admit: the order of the checks


def test_quota_is_reported_before_capacity_and_balance():
    decision = decide(request(gpu_type="a100", gpus=4, hours="30"), free={}, available=0)
    assert decision.reason == QUOTA


def test_capacity_is_reported_before_balance():
    decision = decide(request(gpu_type="a100", gpus=2), free={"a100": 1}, available=0)
    assert decision.reason == CAPACITY


spawn_requests = st.builds(
    lambda gpu_type, gpus, hours: validate_request(
        CATALOG,
        {"gpu_type": gpu_type, "gpus": 0 if gpu_type == "none" else gpus, "hours": str(hours)},
    ),
    gpu_type=st.sampled_from(["none", "t4", "a100", "h100"]),
    gpus=st.integers(min_value=1, max_value=5),
    hours=st.decimals(min_value=Decimal("0.0001"), max_value=Decimal(30), places=4),
)


@given(
    spawn=spawn_requests,
    running=st.integers(min_value=0, max_value=3),
    free=st.dictionaries(st.sampled_from(["t4", "a100", "h100"]), st.integers(0, 4)),
    available=st.integers(min_value=-1000, max_value=2_000_000),
)
def test_an_admitted_request_fits_every_limit(spawn, running, free, available):
    decision = decide(spawn, running=running, free=free, available=available)
    quota_ok = (
        spawn.gpus <= QUOTAS.max_gpus_per_session
        and spawn.hours <= QUOTAS.max_hours_per_session
        and spawn.hours >= minimum_hours(QUOTAS)
        and (spawn.gpus == 0 or running < QUOTAS.max_concurrent_gpu_sessions)
    )
    capacity_ok = spawn.gpus == 0 or free.get(spawn.gpu_type, 0) >= spawn.gpus
    balance_ok = available >= hold_amount(spawn.rate_per_hour, spawn.hours)
    expected = (
        QUOTA
        if not quota_ok
        else CAPACITY
        if not capacity_ok
        else BALANCE
        if not balance_ok
        else None
    )
    assert decision.reason == expected
    assert decision.ok == (expected is None)
    if decision.ok:
        assert decision.hold_units == hold_amount(spawn.rate_per_hour, spawn.hours)
        assert decision.hold_units <= available


@given(spawn=spawn_requests, available=st.integers(min_value=0, max_value=2_000_000))
def test_the_hours_a_balance_refusal_offers_are_admitted(spawn, available):
    decision = decide(spawn, available=available)
    if decision.reason == BALANCE and decision.affordable_hours is not None:
        retry = dataclasses.replace(spawn, hours=decision.affordable_hours)
        assert decide(retry, available=available).ok


# --- effective quotas and pools


def test_a_user_in_no_listed_group_gets_the_catalog_quotas():
    catalog = with_groups(staff=({"max_gpus_per_session": 8}, False))
    assert effective_quotas(catalog, []) == QUOTAS
    assert effective_quotas(catalog, ["somewhere-else"]) == QUOTAS


def test_a_group_can_lower_a_quota():
    catalog = with_groups(
        guests=({"max_gpus_per_session": 1, "max_hours_per_session": Decimal(2)}, False)
    )
    quotas = effective_quotas(catalog, ["guests"])
    assert (quotas.max_gpus_per_session, quotas.max_hours_per_session) == (1, Decimal(2))
    assert quotas.max_concurrent_gpu_sessions == QUOTAS.max_concurrent_gpu_sessions


def test_several_groups_give_the_most_generous_value_of_each_quota():
    catalog = with_groups(
        course=({"max_gpus_per_session": 1, "min_prepaid_minutes": 10}, True),
        staff=({"max_concurrent_gpu_sessions": 4, "max_hours_per_session": Decimal(48)}, False),
    )
    expected = Quotas(
        max_gpus_per_session=3,  # staff keeps the catalog's 3, more than course's 1
        max_hours_per_session=Decimal(48),
        max_concurrent_gpu_sessions=4,
        min_prepaid_minutes=1,  # the smaller minimum is the more generous
    )
    assert effective_quotas(catalog, ["course", "staff"]) == expected
    assert effective_quotas(catalog, ["staff", "course", "other"]) == expected


def test_pool_groups_are_the_users_pooled_groups_in_catalog_order():
    catalog = with_groups(
        b=({}, True),
        a=({}, True),
        c=({}, False),
    )
    assert pool_groups(catalog, ["a", "b", "c", "d"]) == ("b", "a")
    assert pool_groups(catalog, ["c"]) == ()


def test_groups_are_a_list_of_names_not_one_name():
    with pytest.raises(TypeError):
        effective_quotas(CATALOG, "staff")
