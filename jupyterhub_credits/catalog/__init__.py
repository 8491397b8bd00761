"""The catalog and pricing policy: what users can start, what it costs, who may start it.

A pure layer: plain data (``model``), a strict loader for the YAML file the
hub configuration points to (``load``), exact integer pricing (``pricing``)
and the spawn admission decision (``admission``). It imports nothing from
JupyterHub, Tornado or Kubernetes, and nothing from the ledger but its amount
helpers.
"""

from .admission import (
    BALANCE,
    CAPACITY,
    DEFAULT_HOURS,
    QUOTA,
    USER_OPTION_KEYS,
    Decision,
    InvalidUserOptions,
    SpawnRequest,
    admit,
    effective_quotas,
    minimum_hours,
    pool_groups,
    validate_request,
)
from .load import CatalogError, load_catalog, parse_catalog
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
from .pricing import (
    InvalidHours,
    cost_of_seconds,
    hold_amount,
    max_affordable_hours,
    paid_seconds,
    parse_hours,
    session_rate,
)

__all__ = [
    "BALANCE",
    "CAPACITY",
    "CPU_ONLY",
    "DEFAULT_HOURS",
    "QUOTA",
    "QUOTA_KEYS",
    "USER_OPTION_KEYS",
    "Catalog",
    "CatalogError",
    "CpuPricing",
    "Decision",
    "GpuType",
    "GroupPolicy",
    "Image",
    "InvalidHours",
    "InvalidUserOptions",
    "KubernetesPlacement",
    "LocalPlacement",
    "Quotas",
    "SpawnRequest",
    "admit",
    "cost_of_seconds",
    "effective_quotas",
    "hold_amount",
    "load_catalog",
    "max_affordable_hours",
    "minimum_hours",
    "paid_seconds",
    "parse_catalog",
    "parse_hours",
    "pool_groups",
    "session_rate",
    "validate_request",
]
