"""Reading and checking the catalog file.

The catalog sets prices and limits, so it is read strictly (see ``strict.py``,
whose checks the earning rules share): an unknown key is an error (a misspelt
``max_gpus_per_sesion`` must not silently fall back to a default), as are
duplicate keys, floats where an exact amount is meant, and references to
things that do not exist. Every error names the file, the key path
(``gpu_types.a100.price_per_gpu_hour``) and the problem in words an operator
can act on.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path
from types import MappingProxyType
from typing import Any

from .model import (
    CPU_ONLY,
    QUOTA_DEFAULTS,
    QUOTA_KEYS,
    Catalog,
    CpuPricing,
    GpuType,
    GroupPolicy,
    Image,
    KubernetesPlacement,
    LocalPlacement,
    Quotas,
)
from .pricing import InvalidHours, parse_hours
from .strict import (
    CatalogError,
    Invalid,
    KeyPath,
    expect_bool,
    expect_choice,
    expect_credits,
    expect_list,
    expect_mapping,
    expect_text,
    expect_whole_number,
    fail,
    format_path,
    frozen,
    read_yaml,
)

__all__ = ["CatalogError", "load_catalog", "parse_catalog"]

_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$")
_TOLERATION_OPERATORS = ("Exists", "Equal")
_TOLERATION_EFFECTS = ("NoSchedule", "PreferNoSchedule", "NoExecute")


def load_catalog(path: str | Path) -> Catalog:
    """Read, check and return the catalog in the YAML file at ``path``."""
    source = str(path)
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as error:
        raise CatalogError(
            source, "", f"cannot read the catalog: {error.strerror or error}"
        ) from None
    except UnicodeDecodeError as error:
        raise CatalogError(
            source, "", f"cannot read the catalog: not UTF-8 text ({error.reason})"
        ) from None
    return parse_catalog(read_yaml(text, source), source=source)


def parse_catalog(mapping: Any, source: str = "<catalog>") -> Catalog:
    """Check ``mapping`` (the catalog as plain data, e.g. parsed YAML) and build a Catalog."""
    try:
        return _catalog(mapping, source)
    except Invalid as invalid:
        raise CatalogError(source, format_path(invalid.path), invalid.problem) from None


# --- sections


def _catalog(data: Any, source: str) -> Catalog:
    top = expect_mapping(
        data, (), required=("images", "gpu_types", "cpu", "quotas"), optional=("earning",)
    )
    gpu_types = _gpu_types(top["gpu_types"], ("gpu_types",))
    images = _images(top["images"], ("images",), gpu_types)
    cpu_section = expect_mapping(top["cpu"], ("cpu",), required=("price_per_hour",))
    cpu = CpuPricing(
        price_per_hour=expect_credits(cpu_section["price_per_hour"], ("cpu", "price_per_hour"))
    )
    quotas, groups = _quotas(top["quotas"], ("quotas",))
    earning = top.get("earning")
    if earning is None:
        earning = {}
    expect_mapping(earning, ("earning",), open_keys=True)
    return Catalog(
        images=MappingProxyType(images),
        gpu_types=MappingProxyType(gpu_types),
        cpu=cpu,
        quotas=quotas,
        groups=MappingProxyType(groups),
        earning=frozen(earning),
        source=source,
    )


def _gpu_types(data: Any, path: KeyPath) -> dict[str, GpuType]:
    gpu_types = {}
    for gpu_id, entry in expect_mapping(data, path, open_keys=True).items():
        here = (*path, gpu_id)
        _identifier(gpu_id, here, what="GPU type id")
        if gpu_id.lower() == CPU_ONLY:  # requests name "none" in any letter case
            fail(here, f'"{CPU_ONLY}" is reserved for CPU-only sessions; pick another GPU type id')
        _refuse_same_id_ignoring_case(gpu_id, gpu_types, here, what="GPU type id")
        section = expect_mapping(
            entry,
            here,
            required=("display_name", "price_per_gpu_hour"),
            optional=("description", "kubernetes", "local"),
        )
        kubernetes = section.get("kubernetes")
        local = section.get("local")
        gpu_types[gpu_id] = GpuType(
            id=gpu_id,
            display_name=expect_text(section["display_name"], (*here, "display_name")),
            description=expect_text(section.get("description", ""), (*here, "description"), blank=True),
            price_per_gpu_hour=expect_credits(section["price_per_gpu_hour"], (*here, "price_per_gpu_hour")),
            kubernetes=None
            if kubernetes is None
            else _kubernetes(kubernetes, (*here, "kubernetes")),
            local=None if local is None else _local(local, (*here, "local")),
        )
    return gpu_types


def _kubernetes(data: Any, path: KeyPath) -> KubernetesPlacement:
    section = expect_mapping(data, path, optional=("node_selector", "tolerations", "resource"))
    selector_path = (*path, "node_selector")
    selector = {
        label: expect_text(value, (*selector_path, label))
        for label, value in expect_mapping(
            section.get("node_selector", {}), selector_path, open_keys=True
        ).items()
    }
    tolerations = tuple(
        _toleration(item, (*path, "tolerations", index))
        for index, item in enumerate(expect_list(section.get("tolerations", []), (*path, "tolerations")))
    )
    resource = expect_text(section.get("resource", "nvidia.com/gpu"), (*path, "resource"))
    return KubernetesPlacement(
        node_selector=MappingProxyType(selector), tolerations=tolerations, resource=resource
    )


def _toleration(data: Any, path: KeyPath) -> Mapping[str, Any]:
    section = expect_mapping(
        data, path, optional=("key", "operator", "value", "effect", "tolerationSeconds")
    )
    toleration: dict[str, Any] = {}
    for key in ("key", "value"):
        if key in section:
            toleration[key] = expect_text(section[key], (*path, key), blank=True)
    if "operator" in section:
        toleration["operator"] = expect_choice(
            section["operator"], (*path, "operator"), _TOLERATION_OPERATORS
        )
    if "effect" in section:
        toleration["effect"] = expect_choice(section["effect"], (*path, "effect"), _TOLERATION_EFFECTS)
    if "tolerationSeconds" in section:
        toleration["tolerationSeconds"] = expect_whole_number(
            section["tolerationSeconds"], (*path, "tolerationSeconds"), minimum=0
        )
    return MappingProxyType(toleration)


def _local(data: Any, path: KeyPath) -> LocalPlacement:
    section = expect_mapping(data, path, required=("match",))
    return LocalPlacement(match=expect_text(section["match"], (*path, "match")))


def _images(data: Any, path: KeyPath, gpu_types: Mapping[str, GpuType]) -> dict[str, Image]:
    entries = expect_mapping(data, path, open_keys=True)
    if not entries:
        fail(path, "no images: list at least one image users can start")
    images: dict[str, Image] = {}
    default_id = None
    for image_id, entry in entries.items():
        here = (*path, image_id)
        _identifier(image_id, here, what="image id")
        _refuse_same_id_ignoring_case(image_id, images, here, what="image id")
        section = expect_mapping(
            entry,
            here,
            required=("display_name", "tensorflow", "image", "gpu_types"),
            optional=("description", "cuda", "default"),
        )
        allowed = _image_gpu_types(section["gpu_types"], (*here, "gpu_types"), gpu_types)
        cuda = section.get("cuda")
        if cuda is not None:
            cuda = expect_text(cuda, (*here, "cuda"))
        elif allowed:
            fail(
                (*here, "cuda"),
                'missing key (an image that runs on GPUs must name its CUDA version, e.g. "12.5")',
            )
        default = expect_bool(section.get("default", False), (*here, "default"))
        if default and default_id is not None:
            fail(
                (*here, "default"),
                f"only one image can be the default, and images.{default_id} already is",
            )
        if default:
            default_id = image_id
        images[image_id] = Image(
            id=image_id,
            display_name=expect_text(section["display_name"], (*here, "display_name")),
            description=expect_text(section.get("description", ""), (*here, "description"), blank=True),
            tensorflow=expect_text(section["tensorflow"], (*here, "tensorflow")),
            cuda=cuda,
            image=_image_reference(section["image"], (*here, "image")),
            gpu_types=allowed,
            default=default,
        )
    if default_id is None:
        fail(path, "no default image: mark exactly one image with default: true")
    return images


def _image_gpu_types(data: Any, path: KeyPath, gpu_types: Mapping[str, GpuType]) -> tuple[str, ...]:
    allowed: list[str] = []
    for index, gpu_id in enumerate(expect_list(data, path)):
        here = (*path, index)
        gpu_id = expect_text(gpu_id, here)
        if gpu_id == CPU_ONLY:
            fail(
                here,
                f'"{CPU_ONLY}" needs no entry: every image can run CPU-only; '
                "use gpu_types: [] for an image that never uses a GPU",
            )
        if gpu_id not in gpu_types:
            known = ", ".join(gpu_types) or "none defined"
            fail(here, f"unknown GPU type {gpu_id!r} (gpu_types defines: {known})")
        if gpu_id in allowed:
            fail(here, f"GPU type {gpu_id!r} is listed twice")
        allowed.append(gpu_id)
    return tuple(allowed)


def _quotas(data: Any, path: KeyPath) -> tuple[Quotas, dict[str, GroupPolicy]]:
    required = tuple(key for key in QUOTA_KEYS if key not in QUOTA_DEFAULTS)
    section = expect_mapping(data, path, required=required, optional=(*QUOTA_DEFAULTS, "groups"))
    quotas = Quotas(**{key: _quota(key, section[key], (*path, key)) if key in section
                       else QUOTA_DEFAULTS[key] for key in QUOTA_KEYS})
    _check_minimum_fits(quotas, path, set(QUOTA_KEYS))

    groups: dict[str, GroupPolicy] = {}
    groups_path = (*path, "groups")
    group_entries = section.get("groups")
    if group_entries is None:
        group_entries = {}
    for name, entry in expect_mapping(group_entries, groups_path, open_keys=True).items():
        here = (*groups_path, name)
        if not name.strip():
            fail(here, "a group name must not be blank")
        group_section = expect_mapping(entry, here, optional=(*QUOTA_KEYS, "pool"))
        overrides = {
            key: _quota(key, value, (*here, key))
            for key, value in group_section.items()
            if key != "pool"
        }
        group = GroupPolicy(
            name=name,
            quotas=MappingProxyType(overrides),
            pool=expect_bool(group_section.get("pool", False), (*here, "pool")),
        )
        _check_minimum_fits(group.applied_to(quotas), here, set(overrides))
        groups[name] = group
    return quotas, groups


#: Quotas that are durations, and their unit.
_DURATION_UNITS = {
    "max_hours_per_session": "hours",
    "min_prepaid_minutes": "minutes",
    "min_extension_minutes": "minutes",
}


def _quota(key: str, value: Any, path: KeyPath):
    if key in _DURATION_UNITS:
        try:
            return parse_hours(value, unit=_DURATION_UNITS[key])
        except InvalidHours as error:
            fail(path, str(error))
    return expect_whole_number(value, path, minimum=1)


def _check_minimum_fits(quotas: Quotas, path: KeyPath, set_here: set[str]) -> None:
    """A minimum longer than the longest session would refuse every request of its kind."""
    for minimum, what in (
        ("min_prepaid_minutes", "no session could ever start"),
        ("min_extension_minutes", "no session could ever be extended"),
    ):
        if getattr(quotas, minimum) > quotas.max_hours_per_session * 60:
            key = minimum if minimum in set_here else "max_hours_per_session"
            fail(
                (*path, key),
                f"{minimum} ({getattr(quotas, minimum)}) is longer than "
                f"max_hours_per_session ({quotas.max_hours_per_session} hours): {what}",
            )


# --- values


def _identifier(value: str, path: KeyPath, *, what: str) -> str:
    if not _ID.match(value):
        fail(
            path,
            f"invalid {what} {value!r}: use letters, digits, '.', '_' and '-' "
            "(starting with a letter or digit, at most 63 characters)",
        )
    return value


def _refuse_same_id_ignoring_case(
    new_id: str, earlier: Mapping[str, Any], path: KeyPath, *, what: str
) -> None:
    """Spawn requests name ids in any letter case ("A100"), so two ids may not differ only so."""
    for earlier_id in earlier:
        if earlier_id.lower() == new_id.lower():
            fail(
                path,
                f"{what} {new_id!r} is {earlier_id!r} in other letter case; requests match ids "
                "ignoring case, so each id must differ from the others in more than case",
            )


def _image_reference(value: Any, path: KeyPath) -> str:
    reference = expect_text(value, path)
    if any(character.isspace() for character in reference):
        fail(path, f"an image reference contains no spaces, got {reference!r}")
    return reference


