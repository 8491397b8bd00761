"""The spawn form, rendered from the catalog, the user's balance and live GPU availability."""

from __future__ import annotations

import asyncio
import math
from decimal import Decimal
from pathlib import Path

from jinja2 import Environment, FileSystemLoader, select_autoescape

from ..catalog import (
    CPU_ONLY,
    DEFAULT_HOURS,
    InvalidUserOptions,
    effective_quotas,
    minimum_hours,
    validate_request,
)
from ..ledger import LedgerError, format_amount
from ..ledger.core import user_account

_templates = Environment(
    loader=FileSystemLoader(Path(__file__).parent / "templates"),
    autoescape=select_autoescape(["html"]),
)

#: The hours slider moves in quarter hours; the number box beside it takes any value
#: (``step="any"``), since the server checks the minimum, maximum and precision itself.
SLIDER_STEP_HOURS = Decimal("0.25")


def html_number(value: Decimal | int) -> str:
    """A number as HTML's min/max/value attributes accept it: plain digits, never "2.4E+1"."""
    return format(Decimal(value).normalize(), "f")


def slider_minimum(min_hours: Decimal, max_hours: Decimal) -> Decimal:
    """The slider starts at the first quarter hour at or above the minimum, so that its
    steps are whole quarter hours (0.25, 0.5, …) rather than 0.0167 + k × 0.25."""
    first_step = math.ceil(min_hours / SLIDER_STEP_HOURS) * SLIDER_STEP_HOURS
    return first_step if first_step <= max_hours else min_hours


async def render_options_form(spawner) -> str:
    context = spawner.credits
    catalog = context.catalog
    quotas = effective_quotas(catalog, spawner._group_names())
    free = await spawner.free_gpus()
    totals = getattr(spawner, "gpu_totals", lambda: None)()
    try:
        account, available = await asyncio.to_thread(spawner.paying_account, 0)
        own_account, account_problem = user_account(spawner.user.name), None
    except LedgerError as error:  # a hub name that cannot have an account (start() refuses it)
        account, available, own_account, account_problem = None, 0, None, str(error)
    min_hours = minimum_hours(quotas)
    images = []
    for image_id, image in catalog.images.items():
        unavailable = spawner.image_unavailable(image_id)
        images.append({"id": image_id, "display_name": image.display_name,
                       "gpu_types": image.gpu_types, "default": image.default,
                       "unavailable": unavailable.label if unavailable else ""})
    available_images = [image["id"] for image in images if not image["unavailable"]]
    gpu_types = []
    for gpu_id, gpu in catalog.gpu_types.items():
        count = None if free is None else free.get(gpu_id, 0)
        total = None if totals is None else totals.get(gpu_id, 0)
        if count is None:
            availability = "availability unknown"
        elif total == 0:
            availability = "none here"
        elif total is not None:
            availability = f"{count} of {total} free"
        else:
            availability = f"{count} free"
        gpu_types.append({
            "id": gpu_id, "display_name": gpu.display_name,
            "price": format_amount(gpu.price_per_gpu_hour), "rate": gpu.price_per_gpu_hour,
            "free": "" if count is None else count, "availability": availability,
        })
    return _templates.get_template("options_form.html").render(
        images=images,
        unavailable_lines=unavailable_lines(images),
        images_note=getattr(spawner, "images_note", lambda: "")(),
        no_image_available=not available_images,
        gpu_types=gpu_types,
        cpu_rate=catalog.cpu.price_per_hour,
        cpu_price=format_amount(catalog.cpu.price_per_hour),
        available_units=available,
        available=format_amount(available),
        paying_account=account,
        own_account=own_account,
        account_problem=account_problem,
        max_gpus=quotas.max_gpus_per_session,
        max_hours=html_number(quotas.max_hours_per_session),
        min_hours=html_number(min_hours),
        slider_min_hours=html_number(slider_minimum(min_hours, quotas.max_hours_per_session)),
        slider_step_hours=html_number(SLIDER_STEP_HOURS),
        chosen=chosen_options(
            spawner, catalog, min(max(DEFAULT_HOURS, min_hours), quotas.max_hours_per_session),
            available_images),
    )


def unavailable_lines(images: list[dict]) -> list[str]:
    """Under the image list, which images cannot run here and why (a closed list does not
    show its disabled options): "Not installed on this machine: TensorFlow 2.17 (…)"."""
    by_label: dict[str, list[str]] = {}
    for image in images:
        if image["unavailable"]:
            by_label.setdefault(image["unavailable"], []).append(image["display_name"])
    return [f"{label[:1].upper()}{label[1:]}: {'; '.join(names)}."
            for label, names in by_label.items()]


def chosen_options(spawner, catalog, default_hours: Decimal,
                   available_images: list[str] | None = None) -> dict:
    """What the form shows as chosen: the person's last choice when it still names the catalog.

    The hub renders the form again after a refused start (and on the next visit), with
    ``user_options`` still holding what was submitted: keeping it spares the person
    choosing image, GPUs and hours again. Otherwise the catalog's default image, CPU only.
    An image that cannot run here is never chosen (a disabled option would not be sent):
    then the first that can (None when none can).
    """
    available = list(catalog.images) if available_images is None else available_images
    default_image = catalog.default_image.id
    first_choice = default_image if default_image in available else next(iter(available), None)
    fallback = {"image": first_choice, "gpu_type": CPU_ONLY, "gpus": 0,
                "hours": html_number(default_hours)}
    if not spawner.user_options:
        return fallback
    try:
        request = validate_request(catalog, spawner.user_options)
    except InvalidUserOptions:
        return fallback
    image = request.image if request.image in available else first_choice
    return {"image": image, "gpu_type": request.gpu_type, "gpus": request.gpus,
            "hours": html_number(request.hours)}


def user_options_from_form(formdata: dict) -> dict:
    """Form fields (lists of strings) → the ``user_options`` contract (checked at start)."""
    def first(name, fallback=None):
        values = formdata.get(name) or []
        return values[0].strip() if values and isinstance(values[0], str) else fallback

    options = {"image": first("image"), "gpu_type": first("gpu_type", "none"),
               "gpus": first("gpus"), "hours": first("hours")}
    return {name: value for name, value in options.items() if value not in (None, "")}
