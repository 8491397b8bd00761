"""Strict reading of the catalog's YAML: the checks that the catalog and the earning rules share.

A catalog sets prices and limits, so a mistake in it costs users credits or lets
them take more than they should. Everything here is strict on purpose: an
unknown key is an error (with a "did you mean"), as are duplicate keys, floats
where an exact amount is meant, and text where a number is meant. YAML floats
are read as exact ``Decimal`` values from their text, so ``2.5`` means exactly
2.5. Each ``expect_*`` check raises ``Invalid`` with the key path and the problem;
``parse_catalog`` (and ``parse_earning``) turn it into a ``CatalogError`` naming the file.
"""

from __future__ import annotations

import difflib
from collections.abc import Mapping
from decimal import Decimal, InvalidOperation
from types import MappingProxyType
from typing import Any

import yaml

from ..ledger.amounts import InvalidAmount, parse_amount

KeyPath = tuple  # of str (mapping keys) and int (list positions)


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


class Invalid(Exception):
    """Raised inside the validator; ``parse_catalog`` adds the file name."""

    def __init__(self, path: KeyPath, problem: str):
        super().__init__(problem)
        self.path = path
        self.problem = problem


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


class _DecimalLoader(yaml.SafeLoader):
    """A safe YAML loader that reads floats as exact Decimals."""


def _construct_decimal(loader: yaml.SafeLoader, node: yaml.ScalarNode):
    text = loader.construct_scalar(node)
    try:
        return Decimal(text.replace("_", ""))
    except InvalidOperation:
        # ".inf", ".nan", "1:30.5": left as text, refused later as "not a number".
        return text


_DecimalLoader.add_constructor("tag:yaml.org,2002:float", _construct_decimal)


def read_yaml(text: str, source: str) -> Any:
    try:
        root = yaml.compose(text, Loader=_DecimalLoader)
    except yaml.YAMLError as error:
        raise CatalogError(source, "", _yaml_problem(error)) from None
    if root is None:
        raise CatalogError(source, "", "the file is empty; expected the catalog mapping")
    _refuse_duplicate_keys(root, (), source, set())
    try:
        return yaml.load(text, Loader=_DecimalLoader)  # a SafeLoader subclass
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


# --- values


def fail(path: KeyPath, problem: str):
    raise Invalid(path, problem)


def expect_mapping(
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
        fail(path, f"expected a mapping (key: value lines), got {describe(value)}")
    for key in value:
        if not isinstance(key, str):
            fail((*path, str(key)), f"keys must be text, got {describe(key)}; quote it")
        if not open_keys and key not in required and key not in optional:
            fail((*path, key), unknown_key(key, (*required, *optional)))
    for key in required:
        if key not in value:
            fail((*path, key), "missing key (required)")
    return dict(value)


def unknown_key(key: str, expected: tuple[str, ...]) -> str:
    close = difflib.get_close_matches(key, expected, n=1)
    hint = f"did you mean {close[0]!r}? " if close else ""
    return f"unknown key; {hint}expected one of: {', '.join(expected)}"


def expect_list(value: Any, path: KeyPath) -> list:
    if not isinstance(value, (list, tuple)):
        fail(path, f"expected a list, got {describe(value)}")
    return list(value)


def expect_text(value: Any, path: KeyPath, *, blank: bool = False) -> str:
    if not isinstance(value, str):
        hint = ""
        if isinstance(value, (bool, int, Decimal)):
            hint = "; quote it if it is meant as text"
        fail(path, f"expected text, got {describe(value)}{hint}")
    if not blank and not value.strip():
        fail(path, "must not be empty")
    return value


def expect_bool(value: Any, path: KeyPath) -> bool:
    if not isinstance(value, bool):
        fail(path, f"expected true or false, got {describe(value)}")
    return value


def expect_whole_number(value: Any, path: KeyPath, *, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        fail(path, f"expected a whole number, got {describe(value)}")
    if value < minimum:
        fail(path, f"must be at least {minimum}, got {value}")
    return value


def expect_choice(value: Any, path: KeyPath, choices: tuple[str, ...]) -> str:
    text = expect_text(value, path)
    if text not in choices:
        fail(path, f"expected one of {', '.join(choices)}, got {text!r}")
    return text


def expect_credits(value: Any, path: KeyPath) -> int:
    """Credits (decimal string, int or exact YAML decimal) → units; must be positive.

    A price of zero is refused: every session is paid for by a hold, and the
    ledger holds only positive amounts.
    """
    try:
        return parse_amount(value)
    except InvalidAmount as error:
        fail(path, f'{error} (credits, as a decimal such as "15" or "2.5")')


def describe(value: Any) -> str:
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


def frozen(value: Any) -> Any:
    """A read-only deep copy: mappings become MappingProxyType, lists tuples."""
    if isinstance(value, Mapping):
        return MappingProxyType({key: frozen(item) for key, item in value.items()})
    if isinstance(value, (list, tuple)):
        return tuple(frozen(item) for item in value)
    return value
