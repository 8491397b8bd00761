"""Reading and checking the catalog file.

The catalog sets prices and limits, so a mistake in it costs users credits or
lets them take more than they should. It is therefore read strictly: an
unknown key is an error (a misspelt ``max_gpus_per_sesion`` must not silently
fall back to a default), as are duplicate keys, floats where an exact amount
is meant, and references to things that do not exist. Every error names the
file, the key path (``gpu_types.a100.price_per_gpu_hour``) and the problem in
words an operator can act on.

YAML floats are read as exact ``Decimal`` values from their text, so
``price_per_gpu_hour: 2.5`` means exactly 2.5 credits.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Mapping
from decimal import Decimal, InvalidOperation
from pathlib import Path
from types import MappingProxyType
from typing import Any

import yaml

from ..ledger.amounts import InvalidAmount, parse_amount
from .model import (
    CPU_ONLY,
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

KeyPath = tuple  # of str (mapping keys) and int (list positions)

_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$")
_TOLERATION_OPERATORS = ("Exists", "Equal")
_TOLERATION_EFFECTS = ("NoSchedule", "PreferNoSchedule", "NoExecute")


class CatalogError(ValueError):
    """The catalog file cannot be used; the message says where and why.

    ``source`` names the file, ``path`` the key ("" for the whole file) and
    ``problem`` what is wrong with it.
    """

    def __init__(self, source: str, path: str, problem: str):
        self.source = source
        self.path = path
        self.problem = problem
        where = f"{source}: {path}" if path else source
        super().__init__(f"{where}: {problem}")


class _Invalid(Exception):
    """Raised inside the validator; ``parse_catalog`` adds the file name."""

    def __init__(self, path: KeyPath, problem: str):
        super().__init__(problem)
        self.path = path
        self.problem = problem


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
    return parse_catalog(_read_yaml(text, source), source=source)


def parse_catalog(mapping: Any, source: str = "<catalog>") -> Catalog:
    """Check ``mapping`` (the catalog as plain data, e.g. parsed YAML) and build a Catalog."""
    try:
        return _catalog(mapping, source)
    except _Invalid as invalid:
        raise CatalogError(source, format_path(invalid.path), invalid.problem) from None


def format_path(path: KeyPath) -> str:
    """``("gpu_types", "a100", "price")`` → ``gpu_types.a100.price``; list items as ``[2]``."""
    text = ""
    for part in path:
        if isinstance(part, int):
            text += f"[{part}]"
        else:
            text += f".{part}" if text else str(part)
    return text


# --- YAML


class _CatalogLoader(yaml.SafeLoader):
    """A safe YAML loader that reads floats as exact Decimals."""


def _construct_decimal(loader: yaml.SafeLoader, node: yaml.ScalarNode):
    text = loader.construct_scalar(node)
    try:
        return Decimal(text.replace("_", ""))
    except InvalidOperation:
        # ".inf", ".nan", "1:30.5": left as text, refused later as "not a number".
        return text


_CatalogLoader.add_constructor("tag:yaml.org,2002:float", _construct_decimal)


def _read_yaml(text: str, source: str) -> Any:
    try:
        root = yaml.compose(text, Loader=_CatalogLoader)
    except yaml.YAMLError as error:
        raise CatalogError(source, "", _yaml_problem(error)) from None
    if root is None:
        raise CatalogError(source, "", "the file is empty; expected the catalog mapping")
    _refuse_duplicate_keys(root, (), source, set())
    try:
        return yaml.load(text, Loader=_CatalogLoader)  # a SafeLoader subclass
    except yaml.YAMLError as error:
        raise CatalogError(source, "", _yaml_problem(error)) from None


def _yaml_problem(error: yaml.YAMLError) -> str:
    mark = getattr(error, "problem_mark", None)
    problem = getattr(error, "problem", None) or str(error)
    if mark is None:
        return f"not valid YAML: {problem}"
    return f"not valid YAML at line {mark.line + 1}, column {mark.column + 1}: {problem}"


def _refuse_duplicate_keys(node: yaml.Node, path: KeyPath, source: str, seen_nodes: set) -> None:
    """PyYAML keeps the last of two equal keys; here the second one is an error."""
    if id(node) in seen_nodes:  # an alias back to a node already checked
        return
    seen_nodes.add(id(node))
    if isinstance(node, yaml.MappingNode):
        lines: dict[str, int] = {}
        for key_node, value_node in node.value:
            key = key_node.value if isinstance(key_node, yaml.ScalarNode) else None
            if key is not None and key in lines:
                raise CatalogError(
                    source,
                    format_path((*path, key)),
                    f"duplicate key {key!r} (lines {lines[key]} and "
                    f"{key_node.start_mark.line + 1}); each key may appear once",
                )
            if key is not None:
                lines[key] = key_node.start_mark.line + 1
            _refuse_duplicate_keys(value_node, (*path, key), source, seen_nodes)
    elif isinstance(node, yaml.SequenceNode):
        for index, item in enumerate(node.value):
            _refuse_duplicate_keys(item, (*path, index), source, seen_nodes)


# --- sections


def _catalog(data: Any, source: str) -> Catalog:
    top = _mapping(
        data, (), required=("images", "gpu_types", "cpu", "quotas"), optional=("earning",)
    )
    gpu_types = _gpu_types(top["gpu_types"], ("gpu_types",))
    images = _images(top["images"], ("images",), gpu_types)
    cpu_section = _mapping(top["cpu"], ("cpu",), required=("price_per_hour",))
    cpu = CpuPricing(
        price_per_hour=_price(cpu_section["price_per_hour"], ("cpu", "price_per_hour"))
    )
    quotas, groups = _quotas(top["quotas"], ("quotas",))
    earning = top.get("earning")
    if earning is None:
        earning = {}
    _mapping(earning, ("earning",), open_keys=True)
    return Catalog(
        images=MappingProxyType(images),
        gpu_types=MappingProxyType(gpu_types),
        cpu=cpu,
        quotas=quotas,
        groups=MappingProxyType(groups),
        earning=_frozen(earning),
        source=source,
    )


def _gpu_types(data: Any, path: KeyPath) -> dict[str, GpuType]:
    gpu_types = {}
    for gpu_id, entry in _mapping(data, path, open_keys=True).items():
        here = (*path, gpu_id)
        _identifier(gpu_id, here, what="GPU type id")
        if gpu_id == CPU_ONLY:
            _fail(here, f'"{CPU_ONLY}" is reserved for CPU-only sessions; pick another GPU type id')
        section = _mapping(
            entry,
            here,
            required=("display_name", "price_per_gpu_hour"),
            optional=("description", "kubernetes", "local"),
        )
        kubernetes = section.get("kubernetes")
        local = section.get("local")
        gpu_types[gpu_id] = GpuType(
            id=gpu_id,
            display_name=_text(section["display_name"], (*here, "display_name")),
            description=_text(section.get("description", ""), (*here, "description"), blank=True),
            price_per_gpu_hour=_price(section["price_per_gpu_hour"], (*here, "price_per_gpu_hour")),
            kubernetes=None
            if kubernetes is None
            else _kubernetes(kubernetes, (*here, "kubernetes")),
            local=None if local is None else _local(local, (*here, "local")),
        )
    return gpu_types


def _kubernetes(data: Any, path: KeyPath) -> KubernetesPlacement:
    section = _mapping(data, path, optional=("node_selector", "tolerations", "resource"))
    selector_path = (*path, "node_selector")
    selector = {
        label: _text(value, (*selector_path, label))
        for label, value in _mapping(
            section.get("node_selector", {}), selector_path, open_keys=True
        ).items()
    }
    tolerations = tuple(
        _toleration(item, (*path, "tolerations", index))
        for index, item in enumerate(_list(section.get("tolerations", []), (*path, "tolerations")))
    )
    resource = _text(section.get("resource", "nvidia.com/gpu"), (*path, "resource"))
    return KubernetesPlacement(
        node_selector=MappingProxyType(selector), tolerations=tolerations, resource=resource
    )


def _toleration(data: Any, path: KeyPath) -> Mapping[str, Any]:
    section = _mapping(
        data, path, optional=("key", "operator", "value", "effect", "tolerationSeconds")
    )
    toleration: dict[str, Any] = {}
    for key in ("key", "value"):
        if key in section:
            toleration[key] = _text(section[key], (*path, key), blank=True)
    if "operator" in section:
        toleration["operator"] = _choice(
            section["operator"], (*path, "operator"), _TOLERATION_OPERATORS
        )
    if "effect" in section:
        toleration["effect"] = _choice(section["effect"], (*path, "effect"), _TOLERATION_EFFECTS)
    if "tolerationSeconds" in section:
        toleration["tolerationSeconds"] = _whole_number(
            section["tolerationSeconds"], (*path, "tolerationSeconds"), minimum=0
        )
    return MappingProxyType(toleration)


def _local(data: Any, path: KeyPath) -> LocalPlacement:
    section = _mapping(data, path, required=("match",))
    return LocalPlacement(match=_text(section["match"], (*path, "match")))


def _images(data: Any, path: KeyPath, gpu_types: Mapping[str, GpuType]) -> dict[str, Image]:
    entries = _mapping(data, path, open_keys=True)
    if not entries:
        _fail(path, "no images: list at least one image users can start")
    images: dict[str, Image] = {}
    default_id = None
    for image_id, entry in entries.items():
        here = (*path, image_id)
        _identifier(image_id, here, what="image id")
        section = _mapping(
            entry,
            here,
            required=("display_name", "tensorflow", "image", "gpu_types"),
            optional=("description", "cuda", "default"),
        )
        allowed = _image_gpu_types(section["gpu_types"], (*here, "gpu_types"), gpu_types)
        cuda = section.get("cuda")
        if cuda is not None:
            cuda = _text(cuda, (*here, "cuda"))
        elif allowed:
            _fail(
                (*here, "cuda"),
                'missing key (an image that runs on GPUs must name its CUDA version, e.g. "12.5")',
            )
        default = _bool(section.get("default", False), (*here, "default"))
        if default and default_id is not None:
            _fail(
                (*here, "default"),
                f"only one image can be the default, and images.{default_id} already is",
            )
        if default:
            default_id = image_id
        images[image_id] = Image(
            id=image_id,
            display_name=_text(section["display_name"], (*here, "display_name")),
            description=_text(section.get("description", ""), (*here, "description"), blank=True),
            tensorflow=_text(section["tensorflow"], (*here, "tensorflow")),
            cuda=cuda,
            image=_image_reference(section["image"], (*here, "image")),
            gpu_types=allowed,
            default=default,
        )
    if default_id is None:
        _fail(path, "no default image: mark exactly one image with default: true")
    return images


def _image_gpu_types(data: Any, path: KeyPath, gpu_types: Mapping[str, GpuType]) -> tuple[str, ...]:
    allowed: list[str] = []
    for index, gpu_id in enumerate(_list(data, path)):
        here = (*path, index)
        gpu_id = _text(gpu_id, here)
        if gpu_id == CPU_ONLY:
            _fail(
                here,
                f'"{CPU_ONLY}" needs no entry: every image can run CPU-only; '
                "use gpu_types: [] for an image that never uses a GPU",
            )
        if gpu_id not in gpu_types:
            known = ", ".join(gpu_types) or "none defined"
            _fail(here, f"unknown GPU type {gpu_id!r} (gpu_types defines: {known})")
        if gpu_id in allowed:
            _fail(here, f"GPU type {gpu_id!r} is listed twice")
        allowed.append(gpu_id)
    return tuple(allowed)


def _quotas(data: Any, path: KeyPath) -> tuple[Quotas, dict[str, GroupPolicy]]:
    section = _mapping(data, path, required=QUOTA_KEYS, optional=("groups",))
    quotas = Quotas(**{key: _quota(key, section[key], (*path, key)) for key in QUOTA_KEYS})
    _check_minimum_fits(quotas, path, set(QUOTA_KEYS))

    groups: dict[str, GroupPolicy] = {}
    groups_path = (*path, "groups")
    group_entries = section.get("groups")
    if group_entries is None:
        group_entries = {}
    for name, entry in _mapping(group_entries, groups_path, open_keys=True).items():
        here = (*groups_path, name)
        if not name.strip():
            _fail(here, "a group name must not be blank")
        group_section = _mapping(entry, here, optional=(*QUOTA_KEYS, "pool"))
        overrides = {
            key: _quota(key, value, (*here, key))
            for key, value in group_section.items()
            if key != "pool"
        }
        group = GroupPolicy(
            name=name,
            quotas=MappingProxyType(overrides),
            pool=_bool(group_section.get("pool", False), (*here, "pool")),
        )
        _check_minimum_fits(group.applied_to(quotas), here, set(overrides))
        groups[name] = group
    return quotas, groups


def _quota(key: str, value: Any, path: KeyPath):
    if key in ("max_hours_per_session", "min_prepaid_minutes"):
        try:
            return parse_hours(value, unit="minutes" if key == "min_prepaid_minutes" else "hours")
        except InvalidHours as error:
            _fail(path, str(error))
    return _whole_number(value, path, minimum=1)


def _check_minimum_fits(quotas: Quotas, path: KeyPath, set_here: set[str]) -> None:
    """A minimum prepaid time longer than the longest session would refuse every request."""
    if quotas.min_prepaid_minutes > quotas.max_hours_per_session * 60:
        key = (
            "min_prepaid_minutes" if "min_prepaid_minutes" in set_here else "max_hours_per_session"
        )
        _fail(
            (*path, key),
            f"min_prepaid_minutes ({quotas.min_prepaid_minutes}) is longer than "
            f"max_hours_per_session ({quotas.max_hours_per_session} hours): "
            "no session could ever start",
        )


# --- values


def _fail(path: KeyPath, problem: str):
    raise _Invalid(path, problem)


def _mapping(
    value: Any,
    path: KeyPath,
    *,
    required: tuple[str, ...] = (),
    optional: tuple[str, ...] = (),
    open_keys: bool = False,
) -> dict[str, Any]:
    """Check that ``value`` is a mapping with text keys, the ``required`` ones and no others.

    ``open_keys`` accepts any key (mappings keyed by id, or opaque sections).
    """
    if not isinstance(value, Mapping):
        _fail(path, f"expected a mapping (key: value lines), got {_describe(value)}")
    for key in value:
        if not isinstance(key, str):
            _fail((*path, str(key)), f"keys must be text, got {_describe(key)}; quote it")
        if not open_keys and key not in required and key not in optional:
            _fail((*path, key), _unknown_key(key, (*required, *optional)))
    for key in required:
        if key not in value:
            _fail((*path, key), "missing key (required)")
    return dict(value)


def _unknown_key(key: str, expected: tuple[str, ...]) -> str:
    close = difflib.get_close_matches(key, expected, n=1)
    hint = f"did you mean {close[0]!r}? " if close else ""
    return f"unknown key; {hint}expected one of: {', '.join(expected)}"


def _list(value: Any, path: KeyPath) -> list:
    if not isinstance(value, (list, tuple)):
        _fail(path, f"expected a list, got {_describe(value)}")
    return list(value)


def _text(value: Any, path: KeyPath, *, blank: bool = False) -> str:
    if not isinstance(value, str):
        hint = ""
        if isinstance(value, (bool, int, Decimal)):
            hint = "; quote it if it is meant as text"
        _fail(path, f"expected text, got {_describe(value)}{hint}")
    if not blank and not value.strip():
        _fail(path, "must not be empty")
    return value


def _identifier(value: str, path: KeyPath, *, what: str) -> str:
    if not _ID.match(value):
        _fail(
            path,
            f"invalid {what} {value!r}: use letters, digits, '.', '_' and '-' "
            "(starting with a letter or digit, at most 63 characters)",
        )
    return value


def _image_reference(value: Any, path: KeyPath) -> str:
    reference = _text(value, path)
    if any(character.isspace() for character in reference):
        _fail(path, f"an image reference contains no spaces, got {reference!r}")
    return reference


def _bool(value: Any, path: KeyPath) -> bool:
    if not isinstance(value, bool):
        _fail(path, f"expected true or false, got {_describe(value)}")
    return value


def _whole_number(value: Any, path: KeyPath, *, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        _fail(path, f"expected a whole number, got {_describe(value)}")
    if value < minimum:
        _fail(path, f"must be at least {minimum}, got {value}")
    return value


def _choice(value: Any, path: KeyPath, choices: tuple[str, ...]) -> str:
    text = _text(value, path)
    if text not in choices:
        _fail(path, f"expected one of {', '.join(choices)}, got {text!r}")
    return text


def _price(value: Any, path: KeyPath) -> int:
    """Credits (decimal string, int or exact YAML decimal) → units; must be positive.

    A price of zero is refused: every session is paid for by a hold, and the
    ledger holds only positive amounts.
    """
    try:
        return parse_amount(value)
    except InvalidAmount as error:
        _fail(path, f'{error} (credits, as a decimal such as "15" or "2.5")')


def _describe(value: Any) -> str:
    if value is None:
        return "nothing (null)"
    if isinstance(value, bool):
        return f"true/false ({str(value).lower()})"
    if isinstance(value, (int, Decimal)):
        return f"a number ({value})"
    if isinstance(value, float):
        return f"a float ({value!r})"
    if isinstance(value, str):
        return f"text ({value!r})"
    if isinstance(value, Mapping):
        return "a mapping"
    if isinstance(value, (list, tuple)):
        return "a list"
    return type(value).__name__


def _frozen(value: Any) -> Any:
    """A read-only deep copy: mappings become MappingProxyType, lists tuples."""
    if isinstance(value, Mapping):
        return MappingProxyType({key: _frozen(item) for key, item in value.items()})
    if isinstance(value, (list, tuple)):
        return tuple(_frozen(item) for item in value)
    return value
