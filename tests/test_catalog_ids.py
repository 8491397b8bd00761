"""Catalog ids in spawn requests match in any letter case; the catalog keeps them distinct so."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest

from jupyterhub_credits.catalog import (
    CatalogError,
    InvalidUserOptions,
    load_catalog,
    parse_catalog,
    validate_request,
)
from jupyterhub_credits.sessions.store import SessionStore
from tests.hub import CATALOG
from tests.spawners import credits_spawner
from tests.test_catalog import valid_mapping

SHIPPED = load_catalog(CATALOG)


# --- requests ---------------------------------------------------------------------------------


@pytest.mark.parametrize("typed, canonical", [
    ({"image": "TF-2.21", "gpu_type": "A100"}, ("tf-2.21", "a100")),
    ({"image": "Tf-2.19", "gpu_type": "t4"}, ("tf-2.19", "t4")),
    ({"image": "tf-2.21", "gpu_type": "H100"}, ("tf-2.21", "h100")),
    ({"image": "TF-2.21-CPU", "gpu_type": "None"}, ("tf-2.21-cpu", "none")),
    ({"image": "tf-2.21-cpu", "gpu_type": "NONE"}, ("tf-2.21-cpu", "none")),
])
def test_ids_in_any_letter_case_become_the_catalogs_own(typed, canonical):
    request = validate_request(SHIPPED, {**typed, "hours": "1"})
    assert (request.image, request.gpu_type) == canonical
    options = request.user_options()
    assert (options["image"], options["gpu_type"]) == canonical
    # Priced and labelled as the catalog's entry, whatever the spelling.
    assert request == validate_request(SHIPPED, {"image": canonical[0], "gpu_type": canonical[1],
                                                 "hours": "1"})


def test_an_image_that_does_not_run_on_a_gpu_is_refused_in_any_letter_case():
    with pytest.raises(InvalidUserOptions, match="is CPU-only") as refused:
        validate_request(SHIPPED, {"image": "TF-2.21-CPU", "gpu_type": "A100"})
    assert refused.value.key == "gpu_type"


@pytest.mark.parametrize("options, key", [
    ({"gpu_type": "a１00"}, "gpu_type"),     # a fullwidth digit is not "1"
    ({"gpu_type": "\uff21100"}, "gpu_type"),  # a fullwidth "A" is no ASCII letter
    ({"gpu_type": "a100 "}, "gpu_type"),     # no trimming: a form sends the value it listed
    ({"image": "tf-2.2"}, "image"),
    ({"image": "TF_2.21"}, "image"),
])
def test_other_spellings_stay_unknown(options, key):
    with pytest.raises(InvalidUserOptions, match="unknown") as refused:
        validate_request(SHIPPED, options)
    assert refused.value.key == key


@pytest.mark.parametrize("key", ["image", "gpu_type"])
def test_a_refused_id_is_quoted_only_in_part(key):
    with pytest.raises(InvalidUserOptions) as refused:
        validate_request(SHIPPED, {key: "X" * 100_000})
    message = str(refused.value)
    assert "X" * 40 in message and "X" * 41 not in message and "…" in message
    assert len(message) < 300
    with pytest.raises(InvalidUserOptions) as refused:
        validate_request(SHIPPED, {key: ["tf-2.21"] * 10_000})
    assert "JSON list" in str(refused.value) and len(str(refused.value)) < 300


# --- the stored session ---------------------------------------------------------------------------


@pytest.fixture
def ledger(spawner_ledger):
    return spawner_ledger


@pytest.mark.asyncio
async def test_the_stored_session_keeps_the_canonical_ids(ledger, db_url):
    ledger.grant("ada", 100_000, key="grant:ada", reason="test", actor="test")
    spawner = credits_spawner(
        db_url, CATALOG, "ada", local_gpus="a100:0,a100:1",
        user_options={"image": "TF-2.21", "gpu_type": "A100", "gpus": "2", "hours": "1"})
    await spawner.start()
    session = SessionStore(ledger).open_session("ada")
    assert (session.image, session.gpu_type, session.gpus) == ("tf-2.21", "a100", 2)
    assert session.held == 30_000  # 2 x 15 credits: the A100's price
    assert sorted(spawner.get_env()["CUDA_VISIBLE_DEVICES"].split(",")) == ["0", "1"]
    await spawner.stop()
    await spawner.run_post_stop_hook()
    assert ledger.balance("ada").reserved == 0


# --- the catalog ------------------------------------------------------------------------------


def with_extra_entry(section: str, existing: str, new_id: str) -> dict:
    mapping = valid_mapping()
    mapping[section][new_id] = copy.deepcopy(mapping[section][existing])
    if section == "images":
        mapping[section][new_id].pop("default", None)
    return mapping


@pytest.mark.parametrize("section, existing, new_id, what", [
    ("images", "tf-new", "TF-NEW", "image id"),
    ("images", "tf-cpu", "Tf-Cpu", "image id"),
    ("gpu_types", "a100", "A100", "GPU type id"),
    ("gpu_types", "t4", "T4", "GPU type id"),
])
def test_the_catalog_refuses_two_ids_equal_ignoring_case(section, existing, new_id, what):
    with pytest.raises(CatalogError) as refused:
        parse_catalog(with_extra_entry(section, existing, new_id), source="catalog.yaml")
    error = refused.value
    assert error.path == f"{section}.{new_id}"
    assert f"{what} {new_id!r} is {existing!r} in other letter case" in error.problem
    assert str(error).startswith(f"catalog.yaml: {section}.{new_id}: ")


@pytest.mark.parametrize("reserved", ["none", "None", "NONE"])
def test_none_is_reserved_for_cpu_sessions_in_any_letter_case(reserved):
    mapping = valid_mapping()
    mapping["gpu_types"][reserved] = {"display_name": "Nothing", "price_per_gpu_hour": 1}
    with pytest.raises(CatalogError, match="reserved for CPU-only sessions") as refused:
        parse_catalog(mapping)
    assert refused.value.path == f"gpu_types.{reserved}"


def test_ids_that_differ_in_more_than_case_are_fine():
    mapping = with_extra_entry("gpu_types", "a100", "a100-80gb")
    catalog = parse_catalog(mapping)
    assert {"a100", "a100-80gb"} <= set(catalog.gpu_types)


def test_the_shipped_catalog_has_no_ids_equal_ignoring_case():
    for ids in (SHIPPED.images, SHIPPED.gpu_types):
        assert len({name.lower() for name in ids}) == len(ids)
    assert Path(SHIPPED.source) == CATALOG
