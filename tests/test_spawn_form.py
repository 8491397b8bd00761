"""The spawn form's hours field as rendered: numbers a browser accepts, no step it enforces.

What the browser then does with them is tested in a real browser in
tests/test_browser_spawn.py; these check the rendering for quotas the demo
catalog does not have (a group with a short maximum or a long minimum).
"""

from __future__ import annotations

import re
from decimal import Decimal

import pytest
import yaml

from jupyterhub_credits.ledger import Ledger
from jupyterhub_credits.spawner.context import reset_contexts
from jupyterhub_credits.spawner.form import html_number, render_options_form, slider_minimum
from tests.hub import CATALOG
from tests.spawners import credits_spawner


@pytest.mark.parametrize("value, text", [
    (Decimal("24"), "24"), (Decimal("2.4E+1"), "24"), (Decimal("0.0167"), "0.0167"),
    (Decimal("1.50"), "1.5"), (Decimal("1E+2"), "100"), (3, "3"),
])
def test_numbers_are_written_as_html_accepts_them(value, text):
    assert html_number(value) == text


@pytest.mark.parametrize("minimum, maximum, first", [
    ("0.0167", "24", "0.25"),  # one minute: the slider starts at the first quarter hour
    ("0.25", "24", "0.25"),
    ("0.6667", "4", "0.75"),
    ("4.05", "4.1", "4.05"),  # no quarter hour fits: the minimum itself
])
def test_the_slider_moves_in_whole_quarter_hours(minimum, maximum, first):
    assert slider_minimum(Decimal(minimum), Decimal(maximum)) == Decimal(first)


@pytest.fixture
def catalog_path(tmp_path):
    catalog = yaml.safe_load(CATALOG.read_text())
    catalog["quotas"]["groups"] = {"taster": {"max_hours_per_session": "0.5"},
                                   "long-minimum": {"min_prepaid_minutes": 40}}
    path = tmp_path / "catalog.yaml"
    path.write_text(yaml.safe_dump(catalog))
    return path


@pytest.fixture
def form_for(tmp_path, catalog_path):
    url = f"sqlite:///{tmp_path / 'ledger.sqlite'}"
    Ledger.open(url).close()  # creates the schema

    async def render(*groups: str, user_options: dict | None = None, user: str = "ada") -> str:
        spawner = credits_spawner(url, catalog_path, user, groups=groups, local_gpus="a100:0",
                                  user_options=user_options)
        return await render_options_form(spawner)

    yield render
    reset_contexts()


def attributes(html: str, element_id: str) -> dict[str, str]:
    tag = re.search(rf'<input id="{element_id}"[^>]*>', html).group(0)
    return dict(re.findall(r'([a-z-]+)="([^"]*)"', tag))


@pytest.mark.asyncio
@pytest.mark.parametrize("groups, box, slider", [
    ((), {"min": "0.0167", "max": "24", "value": "1"}, {"min": "0.25", "step": "0.25"}),
    # A default of 1 hour would be above this group's maximum: the browser would refuse it.
    (("taster",), {"min": "0.0167", "max": "0.5", "value": "0.5"},
     {"min": "0.25", "step": "0.25"}),
    (("long-minimum",), {"min": "0.6667", "max": "24", "value": "1"},
     {"min": "0.75", "step": "0.25"}),
])
async def test_the_hours_box_takes_any_value_between_the_quotas(form_for, groups, box, slider):
    html = await form_for(*groups)
    hours = attributes(html, "credits-hours")
    assert hours["step"] == "any"  # the server checks minimum, maximum and precision
    assert {key: hours[key] for key in box} == box
    assert Decimal(hours["min"]) <= Decimal(hours["value"]) <= Decimal(hours["max"])
    hours_range = attributes(html, "credits-hours-range")
    assert {key: hours_range[key] for key in slider} == slider
    assert (hours_range["max"], hours_range["value"]) == (hours["max"], hours["value"])


@pytest.mark.asyncio
async def test_the_form_keeps_the_last_choice_and_falls_back_to_defaults(form_for):
    kept = await form_for(user_options={"image": "TF-2.19", "gpu_type": "a100", "gpus": "1",
                                        "hours": "2.25"})
    assert re.search(r'<option value="tf-2.19"[^>]*selected', kept)
    assert re.search(r'<option value="a100"[^>]*selected', kept)
    assert attributes(kept, "credits-gpus")["value"] == "1"
    assert attributes(kept, "credits-hours")["value"] == "2.25"

    fresh = await form_for()
    assert not re.search(r'<option value="a100"[^>]*selected', fresh)
    assert attributes(fresh, "credits-gpus")["value"] == "0"
    assert attributes(fresh, "credits-hours")["value"] == "1"

    nonsense = await form_for(user_options={"image": "no-such-image", "hours": "x"})
    assert attributes(nonsense, "credits-hours")["value"] == "1"
    assert re.search(r'<option value="tf-2.21"[^>]*selected', nonsense)


@pytest.mark.asyncio
async def test_a_name_that_cannot_hold_credits_gets_a_form_that_says_so(form_for):
    html = await form_for(user="x" * 201)  # a hub name longer than an account name may be
    assert "This user name cannot hold credits" in html
    assert "x" * 60 not in html  # the message quotes the name briefly, not whole
    assert "credits available" not in html
