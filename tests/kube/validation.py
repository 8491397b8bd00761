"""Strict validation of Kubernetes manifests, the way an API server would refuse them.

Why this exists: no API server can run on the test machines, and a pod that a real cluster
would reject (or, worse, silently mangle) must fail the tests instead of passing against a
permissive fake. Two layers:

1. The official OpenAPI schemas shipped by ``kubernetes-validate`` in *strict* mode: unknown
   fields are errors. This is stricter than a real API server, which by default
   (``fieldValidation=Warn``) drops unknown fields with a warning — exactly how a typo such as
   ``resources: {limts: ...}`` ends up as a pod without a GPU limit. We want that loud.
2. Value rules the schemas do not express but the API server enforces (messages follow the
   API server's wording): resource quantities parse and are non-negative, requests do not
   exceed limits, extended resources such as ``nvidia.com/gpu`` are integers with
   ``requests == limits`` and a limit always set, names are DNS-1123, label/annotation keys
   and values have label syntax, container names are unique, ``restartPolicy`` is known.

All problems are collected and raised together as :class:`ManifestInvalid`.
"""

from __future__ import annotations

import functools
import json
import re
from collections.abc import Iterable
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from typing import Any

import jsonschema
import referencing
from kubernetes_asyncio.client import ApiClient
from kubernetes_validate import utils as kv_utils

DEFAULT_KUBERNETES_VERSION = "1.33"

__all__ = [
    "DEFAULT_KUBERNETES_VERSION",
    "FieldProblem",
    "ManifestInvalid",
    "manifest_problems",
    "parse_quantity",
    "pod_to_dict",
    "validate_manifest",
]


@dataclass(frozen=True)
class FieldProblem:
    """One reason an object is invalid, shaped like a ``StatusCause`` of the API server."""

    field: str
    message: str
    reason: str = "FieldValueInvalid"

    def __str__(self) -> str:
        return f"{self.field}: {self.message}" if self.field else self.message

    def as_status_cause(self) -> dict:
        return {"reason": self.reason, "message": str(self), "field": self.field}


class ManifestInvalid(ValueError):
    """Raised with *every* problem found, so one test run shows all of them."""

    def __init__(self, kind: str, name: str, problems: list[FieldProblem]):
        self.kind = kind
        self.name = name
        self.problems = list(problems)
        lines = "\n".join(f"  - {p}" for p in self.problems)
        super().__init__(f'{kind} "{name}" is invalid ({len(self.problems)} problems):\n{lines}')


def validate_manifest(obj: dict, kind_version: str = DEFAULT_KUBERNETES_VERSION) -> None:
    """Raise :class:`ManifestInvalid` unless ``obj`` (camelCase dict) would be accepted.

    ``kind_version`` is the Kubernetes version whose schemas are used (e.g. ``"1.33"``).
    """
    problems = manifest_problems(obj, kind_version)
    if problems:
        metadata = obj.get("metadata") or {}
        name = metadata.get("name") or metadata.get("generateName") or "<unnamed>"
        raise ManifestInvalid(str(obj.get("kind", "<no kind>")), str(name), problems)


def manifest_problems(obj: dict, kind_version: str = DEFAULT_KUBERNETES_VERSION) -> list[FieldProblem]:
    """All problems with ``obj``; empty when valid."""
    if not isinstance(obj, dict):
        return [FieldProblem("", f"expected a JSON object, got {type(obj).__name__}")]
    if not obj.get("kind") or not obj.get("apiVersion"):
        return [FieldProblem("", "kind and apiVersion must be set", "FieldValueRequired")]
    problems = list(_schema_problems(obj, kind_version))
    problems += _metadata_problems(obj)
    kind = obj["kind"]
    if kind == "Pod":
        problems += _pod_spec_problems(obj.get("spec") or {}, "spec")
    elif kind == "Node":
        status = obj.get("status") or {}
        for key in ("capacity", "allocatable"):
            for res, value in (status.get(key) or {}).items():
                problems += _quantity_problems(value, f"status.{key}[{res}]")
    elif kind == "PersistentVolumeClaim":
        resources = (obj.get("spec") or {}).get("resources") or {}
        for key in ("requests", "limits"):
            for res, value in (resources.get(key) or {}).items():
                problems += _quantity_problems(value, f"spec.resources.{key}[{res}]")
    return problems


# --------------------------------------------------------------------------- schemas


@functools.lru_cache(maxsize=None)
def _schema_validator(kind: str, api_version: str, kind_version: str) -> jsonschema.Validator:
    """Build (once) a validator for one kind; loading the 1.4 MB definitions costs ~50 ms."""
    version = kind_version[1:] if kind_version.startswith("v") else kind_version
    available = [v for v in kv_utils.all_versions() if _version_key(v) <= _version_key(version)]
    if not available:
        raise ValueError(f"kubernetes-validate has no schemas for Kubernetes {kind_version}")
    schema_dir = f"v{available[-1]}-local-strict"
    # rbac.authorization.k8s.io/v1 -> rbac-v1, as kubernetes-validate names its files
    api_file = re.sub(r"^([^./]*)(?:\.[^/]*)?/", r"\1-", api_version)
    schema = kv_utils.schema_contents(f"kubernetes-json-schema/{schema_dir}/{kind.lower()}-{api_file}.json", version)
    definitions = kv_utils.schema_contents(f"kubernetes-json-schema/{schema_dir}/_definitions.json", version)
    registry = referencing.Registry().with_resources(
        [
            (schema["$id"], referencing.Resource.from_contents(schema)),
            (definitions["$id"], referencing.Resource.from_contents(definitions)),
        ]
    )
    return jsonschema.Draft202012Validator(schema, registry=registry)


def _version_key(version: str) -> tuple[int, ...]:
    return tuple(int(part) for part in re.findall(r"\d+", version)[:2])


def _schema_problems(obj: dict, kind_version: str) -> Iterable[FieldProblem]:
    try:
        validator = _schema_validator(obj["kind"], obj["apiVersion"], kind_version)
    except FileNotFoundError:
        yield FieldProblem("kind", f"no schema for {obj['apiVersion']}/{obj['kind']}", "FieldValueNotSupported")
        return
    for error in sorted(validator.iter_errors(obj), key=lambda e: list(map(str, e.absolute_path))):
        field = _json_path(error.absolute_path)
        if error.validator == "additionalProperties":
            unknown = sorted(set(error.instance) - set(error.schema.get("properties", {})))
            for name in unknown:
                path = f"{field}.{name}" if field else name
                yield FieldProblem(path, f'unknown field "{path}"', "FieldValueNotSupported")
        elif error.validator == "required":
            yield FieldProblem(field, f"Required value: {error.message}", "FieldValueRequired")
        else:
            yield FieldProblem(field, f"Invalid value: {json.dumps(error.instance)[:80]}: {error.message[:200]}")


def _json_path(parts: Iterable[Any]) -> str:
    out = ""
    for part in parts:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


# --------------------------------------------------------------------------- names, labels

_DNS1123_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
_DNS1123_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
_DNS1035_LABEL = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")
_LABEL_NAME = re.compile(r"^([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]$")

# kinds whose metadata.name must be an RFC 1035 / 1123 *label* rather than a subdomain
_NAME_RULES = {"Service": "dns1035", "Namespace": "dns1123-label"}


def dns1123_label_problem(value: str) -> str | None:
    if len(value) > 63:
        return "must be no more than 63 characters"
    if not _DNS1123_LABEL.match(value):
        return (
            "a lowercase RFC 1123 label must consist of lower case alphanumeric characters or '-', "
            "and must start and end with an alphanumeric character"
        )
    return None


def dns1123_subdomain_problem(value: str) -> str | None:
    if len(value) > 253:
        return "must be no more than 253 characters"
    if not _DNS1123_SUBDOMAIN.match(value):
        return (
            "a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, "
            "'-' or '.', and must start and end with an alphanumeric character"
        )
    return None


def dns1035_label_problem(value: str) -> str | None:
    if len(value) > 63:
        return "must be no more than 63 characters"
    if not _DNS1035_LABEL.match(value):
        return (
            "a DNS-1035 label must consist of lower case alphanumeric characters or '-', "
            "start with an alphabetic character, and end with an alphanumeric character"
        )
    return None


def qualified_name_problem(key: str) -> str | None:
    """Label/annotation key syntax: optional DNS-1123 subdomain prefix + '/' + name (<=63)."""
    prefix, _, name = key.rpartition("/")
    if "/" in key and not prefix:
        return "prefix part must be non-empty"
    if prefix and (problem := dns1123_subdomain_problem(prefix)):
        return f"prefix part {problem}"
    if not name:
        return "name part must be non-empty"
    if len(name) > 63:
        return "name part must be no more than 63 characters"
    if not _LABEL_NAME.match(name):
        return (
            "name part must consist of alphanumeric characters, '-', '_' or '.', "
            "and must start and end with an alphanumeric character"
        )
    return None


def label_value_problem(value: Any) -> str | None:
    if not isinstance(value, str):
        return "must be a string"
    if value == "":
        return None
    if len(value) > 63:
        return "must be no more than 63 characters"
    if not _LABEL_NAME.match(value):
        return (
            "a valid label must be an empty string or consist of alphanumeric characters, "
            "'-', '_' or '.', and must start and end with an alphanumeric character"
        )
    return None


def _metadata_problems(obj: dict) -> list[FieldProblem]:
    problems: list[FieldProblem] = []
    metadata = obj.get("metadata")
    if not isinstance(metadata, dict):
        return [FieldProblem("metadata", "Required value", "FieldValueRequired")]
    name, generate_name = metadata.get("name"), metadata.get("generateName")
    if not name and not generate_name:
        problems.append(
            FieldProblem("metadata.name", "Required value: name or generateName is required", "FieldValueRequired")
        )
    elif isinstance(name, str) and name:
        rule = _NAME_RULES.get(obj.get("kind", ""), "dns1123-subdomain")
        check = {
            "dns1035": dns1035_label_problem,
            "dns1123-label": dns1123_label_problem,
            "dns1123-subdomain": dns1123_subdomain_problem,
        }[rule]
        if problem := check(name):
            problems.append(FieldProblem("metadata.name", f'Invalid value: "{name}": {problem}'))
    namespace = metadata.get("namespace")
    if isinstance(namespace, str) and namespace and (problem := dns1123_label_problem(namespace)):
        problems.append(FieldProblem("metadata.namespace", f'Invalid value: "{namespace}": {problem}'))
    problems += _label_map_problems(metadata.get("labels"), "metadata.labels")
    for key in metadata.get("annotations") or {}:
        if problem := qualified_name_problem(key):
            problems.append(FieldProblem("metadata.annotations", f'Invalid value: "{key}": {problem}'))
    return problems


def _label_map_problems(labels: Any, field: str) -> list[FieldProblem]:
    problems = []
    for key, value in (labels or {}).items() if isinstance(labels, dict) else ():
        if problem := qualified_name_problem(key):
            problems.append(FieldProblem(field, f'Invalid value: "{key}": {problem}'))
        if problem := label_value_problem(value):
            problems.append(FieldProblem(f"{field}[{key}]", f'Invalid value: "{value}": {problem}'))
    return problems


# --------------------------------------------------------------------------- quantities

_QUANTITY = re.compile(
    r"^(?P<number>[+-]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+))"
    r"(?P<suffix>Ki|Mi|Gi|Ti|Pi|Ei|m|k|M|G|T|P|E|[eE][+-]?[0-9]+)?$"
)
_SUFFIX_MULTIPLIER = {
    None: Decimal(1),
    "m": Decimal("0.001"),
    "k": Decimal(10) ** 3,
    "M": Decimal(10) ** 6,
    "G": Decimal(10) ** 9,
    "T": Decimal(10) ** 12,
    "P": Decimal(10) ** 15,
    "E": Decimal(10) ** 18,
    "Ki": Decimal(2) ** 10,
    "Mi": Decimal(2) ** 20,
    "Gi": Decimal(2) ** 30,
    "Ti": Decimal(2) ** 40,
    "Pi": Decimal(2) ** 50,
    "Ei": Decimal(2) ** 60,
}
QUANTITY_REGEX_MESSAGE = "quantities must match the regular expression '^([+-]?[0-9.]+)([eEinumkKMGTP]*[-+]?[0-9]*)$'"


def parse_quantity(value: Any) -> Decimal:
    """Parse a Kubernetes resource quantity ("500m", "1Gi", "2", 4, "1e3") to a Decimal.

    Raises ValueError on anything the API server would refuse to decode.
    """
    if isinstance(value, bool):
        raise ValueError(QUANTITY_REGEX_MESSAGE)
    if isinstance(value, (int, float)):
        value = repr(value)
    if not isinstance(value, str):
        raise ValueError(QUANTITY_REGEX_MESSAGE)
    match = _QUANTITY.fullmatch(value)
    if not match:
        raise ValueError(QUANTITY_REGEX_MESSAGE)
    try:
        number = Decimal(match["number"])
    except InvalidOperation as exc:  # pragma: no cover - regex already guards this
        raise ValueError(QUANTITY_REGEX_MESSAGE) from exc
    suffix = match["suffix"]
    if suffix and suffix[0] in "eE":
        return number.scaleb(int(suffix[1:]))
    return number * _SUFFIX_MULTIPLIER[suffix]


def _quantity_problems(value: Any, field: str) -> list[FieldProblem]:
    try:
        quantity = parse_quantity(value)
    except ValueError as exc:
        return [FieldProblem(field, f'Invalid value: "{value}": {exc}')]
    if quantity < 0:
        return [FieldProblem(field, f'Invalid value: "{value}": must be greater than or equal to 0')]
    return []


def is_extended_resource(name: str) -> bool:
    """``nvidia.com/gpu`` yes; ``cpu``, ``memory``, ``ephemeral-storage``, ``hugepages-*`` and
    anything under ``kubernetes.io/`` no. Extended resources cannot be overcommitted."""
    if "/" not in name:
        return False
    domain = name.split("/", 1)[0]
    return not (domain == "kubernetes.io" or domain.endswith(".kubernetes.io"))


# --------------------------------------------------------------------------- pods

_RESTART_POLICIES = {"Always", "OnFailure", "Never"}


def _pod_spec_problems(spec: dict, field: str) -> list[FieldProblem]:
    problems: list[FieldProblem] = []
    if not isinstance(spec, dict):
        return problems
    policy = spec.get("restartPolicy")
    if policy is not None and policy not in _RESTART_POLICIES:
        problems.append(
            FieldProblem(
                f"{field}.restartPolicy",
                f'Unsupported value: "{policy}": supported values: "Always", "Never", "OnFailure"',
                "FieldValueNotSupported",
            )
        )
    problems += _label_map_problems(spec.get("nodeSelector"), f"{field}.nodeSelector")
    seen_names: set[str] = set()
    for list_name in ("initContainers", "containers"):
        containers = spec.get(list_name) or []
        if list_name == "containers" and not containers:
            problems.append(FieldProblem(f"{field}.containers", "Required value", "FieldValueRequired"))
        for index, container in enumerate(containers if isinstance(containers, list) else []):
            if not isinstance(container, dict):
                continue
            path = f"{field}.{list_name}[{index}]"
            name = container.get("name")
            if isinstance(name, str):
                if problem := dns1123_label_problem(name):
                    problems.append(FieldProblem(f"{path}.name", f'Invalid value: "{name}": {problem}'))
                elif name in seen_names:
                    problems.append(FieldProblem(f"{path}.name", f'Duplicate value: "{name}"', "FieldValueDuplicate"))
                seen_names.add(name)
            problems += _resource_requirement_problems(container.get("resources") or {}, f"{path}.resources")
    return problems


def _resource_requirement_problems(resources: dict, field: str) -> list[FieldProblem]:
    problems: list[FieldProblem] = []
    if not isinstance(resources, dict):
        return problems
    parsed: dict[str, dict[str, Decimal]] = {"requests": {}, "limits": {}}
    for key in ("requests", "limits"):
        for name, value in (resources.get(key) or {}).items():
            path = f"{field}.{key}[{name}]"
            if problem := qualified_name_problem(name):
                problems.append(FieldProblem(path, f'Invalid value: "{name}": {problem}'))
                continue
            value_problems = _quantity_problems(value, path)
            problems += value_problems
            if value_problems:
                continue
            quantity = parse_quantity(value)
            if is_extended_resource(name) and quantity != quantity.to_integral_value():
                problems.append(FieldProblem(path, f'Invalid value: "{value}": must be an integer'))
                continue
            parsed[key][name] = quantity
    requests, limits = parsed["requests"], parsed["limits"]
    for name, requested in requests.items():
        limit = limits.get(name)
        if is_extended_resource(name):
            if limit is None:
                problems.append(
                    FieldProblem(
                        f"{field}.limits[{name}]",
                        "Required value: Limit must be set for non overcommitable resources",
                        "FieldValueRequired",
                    )
                )
            elif requested != limit:
                problems.append(
                    FieldProblem(
                        f"{field}.requests[{name}]",
                        f'Invalid value: "{resources["requests"][name]}": '
                        f'must be equal to {name} limit of {resources["limits"][name]}',
                    )
                )
        elif limit is not None and requested > limit:
            problems.append(
                FieldProblem(
                    f"{field}.requests[{name}]",
                    f'Invalid value: "{resources["requests"][name]}": '
                    f'must be less than or equal to {name} limit of {resources["limits"][name]}',
                )
            )
    return problems


# --------------------------------------------------------------------------- serialisation


class _Serializer(ApiClient):
    """``ApiClient.sanitize_for_serialization`` without the aiohttp session that
    ``ApiClient.__init__`` opens (which needs a running loop and must be closed)."""

    def __init__(self) -> None:  # noqa: D107 - deliberately skip ApiClient.__init__
        pass


_SERIALIZER = _Serializer()


def pod_to_dict(pod: Any) -> dict:
    """Serialise a ``kubernetes_asyncio`` model (V1Pod, ...) the way the client sends it:
    camelCase keys, ``None`` omitted. Dicts pass through unchanged (deep-copied)."""
    return json.loads(json.dumps(_SERIALIZER.sanitize_for_serialization(pod)))
