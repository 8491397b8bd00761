"""The catalog as plain, immutable data.

A catalog says what a user may start (TensorFlow images, GPU types, CPU-only
sessions), what it costs (prices in ledger *units* per hour, see
``jupyterhub_credits.ledger.amounts``) and how much one session may take
(quotas, with per-group overrides). It is built once by ``load.load_catalog``
from the YAML file the hub configuration points to and then only read, so every
class here is a frozen dataclass and every mapping a read-only view: a pricing
or admission decision can never change the catalog it was given.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from decimal import Decimal
from types import MappingProxyType
from typing import Any

#: The ``gpu_type`` of a CPU-only session (``gpus`` is then 0).
CPU_ONLY = "none"


def _empty() -> Mapping[str, Any]:
    return MappingProxyType({})


@dataclass(frozen=True)
class Image:
    """A notebook image a user can pick: one TensorFlow version, one CUDA version.

    ``image`` is the container reference (``ghcr.io/...:2.21-cuda12.5``) or, for
    the local-process spawner, whatever that spawner understands by it.
    ``gpu_types`` lists the GPU type ids the image runs on; an empty tuple makes
    it a CPU-only image. Every image may also run as a CPU-only session, since a
    TensorFlow GPU build runs on the CPU too.
    """

    id: str
    display_name: str
    tensorflow: str
    image: str
    gpu_types: tuple[str, ...]
    cuda: str | None = None
    description: str = ""
    default: bool = False

    @property
    def cpu_only(self) -> bool:
        """True when the image cannot use any GPU."""
        return not self.gpu_types

    def allows(self, gpu_type: str) -> bool:
        """Whether a session of this image may use ``gpu_type`` (or run CPU-only)."""
        return gpu_type == CPU_ONLY or gpu_type in self.gpu_types


@dataclass(frozen=True)
class KubernetesPlacement:
    """How KubeSpawner puts a session on a node with this GPU type.

    ``resource`` is the extended resource requested once per GPU
    (``nvidia.com/gpu``); ``node_selector`` and ``tolerations`` are passed to
    the pod as they are.
    """

    node_selector: Mapping[str, str] = field(default_factory=_empty)
    tolerations: tuple[Mapping[str, Any], ...] = ()
    resource: str = "nvidia.com/gpu"


@dataclass(frozen=True)
class LocalPlacement:
    """How the local GPU allocator recognises this GPU type on one machine.

    ``match`` is a substring of the NVML device name ("A100" matches
    "NVIDIA A100-SXM4-80GB").
    """

    match: str


@dataclass(frozen=True)
class GpuType:
    """A kind of GPU users can rent, with its price per GPU-hour in units.

    ``kubernetes`` and ``local`` are None when the catalog does not say how to
    place this GPU type on that kind of deployment; the spawner for that
    deployment then refuses the type rather than guess.
    """

    id: str
    display_name: str
    price_per_gpu_hour: int
    description: str = ""
    kubernetes: KubernetesPlacement | None = None
    local: LocalPlacement | None = None


@dataclass(frozen=True)
class CpuPricing:
    """The price of a CPU-only session (``gpu_type: "none"``), in units per hour."""

    price_per_hour: int


@dataclass(frozen=True)
class Quotas:
    """Limits on one user's sessions, against abuse and stolen accounts.

    ``min_prepaid_minutes`` (an exact decimal) is the shortest session one can
    start: a request for less is refused, and a balance that does not cover it
    cannot start anything at that rate. ``min_extension_minutes`` is the least
    one extension (by hand or auto-extend) buys: each extension is one more
    hold, and a session must not pile up thousands of them.
    """

    max_gpus_per_session: int
    max_hours_per_session: Decimal
    max_concurrent_gpu_sessions: int
    min_prepaid_minutes: Decimal
    min_extension_minutes: Decimal = Decimal(15)


#: Quotas a catalog may leave out, and what they then are.
QUOTA_DEFAULTS: dict[str, Any] = {"min_extension_minutes": Decimal(15)}


#: The quota names, as they appear in YAML and as ``Quotas`` fields.
QUOTA_KEYS: tuple[str, ...] = tuple(f.name for f in dataclasses.fields(Quotas))


@dataclass(frozen=True)
class GroupPolicy:
    """What membership of one JupyterHub group changes.

    ``quotas`` holds only the quotas the group overrides. With ``pool`` the
    group's shared pool account (``group:NAME`` in the ledger) pays first for
    sessions of its members.
    """

    name: str
    quotas: Mapping[str, Any] = field(default_factory=_empty)
    pool: bool = False

    def applied_to(self, base: Quotas) -> Quotas:
        """``base`` with this group's overrides in place."""
        return dataclasses.replace(base, **dict(self.quotas))


@dataclass(frozen=True)
class Catalog:
    """Everything users can start and what it costs, as read from one file.

    ``images``, ``gpu_types`` and ``groups`` keep the order of the file, which
    is the order the spawn page shows. ``earning`` is kept as given (read-only)
    until the earning rules define its shape. ``source`` names the file, for
    messages.
    """

    images: Mapping[str, Image]
    gpu_types: Mapping[str, GpuType]
    cpu: CpuPricing
    quotas: Quotas
    groups: Mapping[str, GroupPolicy] = field(default_factory=_empty)
    earning: Mapping[str, Any] = field(default_factory=_empty)
    source: str = field(default="<catalog>", compare=False)

    @property
    def default_image(self) -> Image:
        """The image a request that names none gets (the loader ensures exactly one)."""
        for image in self.images.values():
            if image.default:
                return image
        raise LookupError(f"{self.source}: no image is marked default: true")
