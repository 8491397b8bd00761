"""Earning: activity becomes credits under rules that nobody can farm.

Policy layer: ``rules`` (the catalog's ``earning:`` section, strictly checked,
over calibrated defaults) and ``decide`` (a pure decision: event + rules +
what the user earned so far + their sessions + the time → outcome) import
nothing from JupyterHub or Tornado. ``store`` keeps every event with its
outcome and earns through the ledger.
"""

from .decide import (
    CAPPED,
    DUPLICATE,
    EARNED,
    GPU_UTILIZATION,
    HUB,
    KIND_RULES,
    KINDS,
    REJECTED,
    SERVER,
    SOURCES,
    Event,
    GpuSample,
    Outcome,
    RuleUsage,
    SessionSpan,
    UserState,
    apply,
    day_start,
    decide,
    parse_event,
)
from .rules import (
    DEFAULT_EARNING,
    RULE_NAMES,
    EarningRules,
    Rule,
    default_rules,
    earning_rules,
    parse_earning,
)
from .store import MAX_BATCH, EarningError, EarningService, ledger_key

__all__ = [
    "CAPPED",
    "DEFAULT_EARNING",
    "DUPLICATE",
    "EARNED",
    "GPU_UTILIZATION",
    "HUB",
    "KINDS",
    "KIND_RULES",
    "MAX_BATCH",
    "REJECTED",
    "RULE_NAMES",
    "SERVER",
    "SOURCES",
    "EarningError",
    "EarningRules",
    "EarningService",
    "Event",
    "GpuSample",
    "Outcome",
    "Rule",
    "RuleUsage",
    "SessionSpan",
    "UserState",
    "apply",
    "day_start",
    "decide",
    "default_rules",
    "earning_rules",
    "ledger_key",
    "parse_earning",
    "parse_event",
]
