"""Earning rules: what each kind of activity is worth, and the limits on it.

The catalog's ``earning:`` section configures them; whatever it leaves out
keeps the defaults below, which are calibrated on the reference scenario (a
new user with a week of genuine daily use has about 120 credits, the 75-credit
signup bonus included; see ``DEFAULT_EARNING`` and tests/test_earning_rules.py).
The section is read as strictly as the rest of the catalog: an unknown rule or
key is an error that names the file, the key path and the problem.

Amounts are credits in the file (exact decimals) and integer ledger *units*
here (1 credit = 1000 units).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

from ..catalog.strict import (
    CatalogError,
    Invalid,
    expect_bool,
    expect_credits,
    expect_mapping,
    expect_whole_number,
    fail,
    format_path,
    unknown_key,
)

SIGNUP = "signup"
DAILY_LOGIN = "daily_login"
NOTEBOOK_ACTIVITY = "notebook_activity"
TRAINING_RUN = "training_run"
EFFICIENCY_BONUS = "efficiency_bonus"
MODEL_PUBLISHED = "model_published"
MODEL_REUSED = "model_reused"
MODEL_LIKED = "model_liked"

#: Rules whose events only the hub itself reports (never a single-user server's claim).
HUB_ONLY_RULES = (SIGNUP, DAILY_LOGIN, MODEL_PUBLISHED, MODEL_REUSED, MODEL_LIKED)
#: Rules fed by claims from the single-user server (the user controls that process).
CLAIM_RULES = (NOTEBOOK_ACTIVITY, TRAINING_RUN, EFFICIENCY_BONUS)
RULE_NAMES = (SIGNUP, DAILY_LOGIN, NOTEBOOK_ACTIVITY, TRAINING_RUN, EFFICIENCY_BONUS,
              MODEL_PUBLISHED, MODEL_REUSED, MODEL_LIKED)

#: The defaults, in the catalog file's own shape (credits as decimal text).
#:
#: Calibration (the reference scenario, DESIGN.md section 7): a week of genuine
#: use earns 75 (signup) + 7 x 1 (logins) + 14 x 0.5 (two training runs a day)
#: + 14 x 0.5 (their efficiency bonus) + 7 x 60 x 0.01 (an hour of notebook
#: activity a day) + 20 (one published model) = 120.2 credits.
DEFAULT_EARNING: Mapping[str, Any] = {
    "max_claims_per_day": "4",
    "rate_limit_per_minute": 120,
    "session_grace_s": 120,
    "rules": {
        SIGNUP: {"points": "75", "expires_after_days": 30},
        DAILY_LOGIN: {"points": "1", "max_per_day": 1},
        NOTEBOOK_ACTIVITY: {"points_per_minute": "0.01", "max_points_per_day": "1"},
        TRAINING_RUN: {"points": "0.5", "max_per_day": 4, "min_interval_s": 60,
                       "min_duration_s": 300},
        EFFICIENCY_BONUS: {"points": "0.5", "max_per_day": 4, "min_utilization": 60,
                           "min_coverage_percent": 50},
        MODEL_PUBLISHED: {"points": "20", "max_per_day": 1},
        MODEL_REUSED: {"points": "2", "max_per_day": 10},
        MODEL_LIKED: {"points": "0.5", "max_per_day": 10},
    },
}

_COMMON_KEYS = ("points", "max_per_day", "max_points_per_day", "min_interval_s",
                "expires_after_days", "enabled")
_RULE_KEYS: Mapping[str, tuple[str, ...]] = {
    SIGNUP: ("points", "expires_after_days", "enabled"),
    DAILY_LOGIN: _COMMON_KEYS,
    NOTEBOOK_ACTIVITY: ("points_per_minute", *_COMMON_KEYS[1:], "trusted_only"),
    TRAINING_RUN: (*_COMMON_KEYS, "trusted_only", "min_duration_s"),
    EFFICIENCY_BONUS: (*_COMMON_KEYS, "trusted_only", "min_utilization", "min_coverage_percent"),
    MODEL_PUBLISHED: _COMMON_KEYS,
    MODEL_REUSED: _COMMON_KEYS,
    MODEL_LIKED: _COMMON_KEYS,
}
_TOP_KEYS = ("rules", "max_claims_per_day", "rate_limit_per_minute", "session_grace_s")


@dataclass(frozen=True)
class Rule:
    """One earning rule.

    ``points`` are units per earning, or per active minute when ``per_minute``
    (notebook activity). ``max_per_day`` bounds the number of earnings and
    ``max_points_per_day`` their units in one UTC day (None: no bound);
    ``min_interval_s`` is the least time between two earnings; earned credits
    expire ``expires_after_days`` after they are earned (None: never).
    ``trusted_only`` refuses the rule's events from single-user servers;
    ``once`` grants it once per user, ever (the signup bonus).
    """

    name: str
    points: int
    max_per_day: int | None = None
    max_points_per_day: int | None = None
    min_interval_s: int = 0
    expires_after_days: int | None = None
    trusted_only: bool = False
    enabled: bool = True
    once: bool = False
    per_minute: bool = False
    #: training_run: the shortest run that counts.
    min_duration_s: int = 0
    #: efficiency_bonus: mean GPU utilisation (percent) a run needs ...
    min_utilization: int = 0
    #: ... measured over at least this share of the run's minutes.
    min_coverage_percent: int = 0


@dataclass(frozen=True)
class EarningRules:
    """All rules, plus the bounds on what claims from single-user servers can earn.

    ``max_claims_per_day`` (units) bounds everything a user earns from claims
    in one UTC day, whatever the rules say; ``rate_limit_per_minute`` refuses a
    user's claims beyond that many a minute; a session that ended less than
    ``session_grace_s`` ago still counts as running (for claims sent as it stops).
    """

    rules: Mapping[str, Rule]
    max_claims_per_day: int
    rate_limit_per_minute: int
    session_grace_s: int

    def __getitem__(self, name: str) -> Rule:
        return self.rules[name]

    @property
    def longest_interval_s(self) -> int:
        return max((rule.min_interval_s for rule in self.rules.values()), default=0)


def parse_earning(section: Mapping[str, Any] | None, source: str = "<catalog>") -> EarningRules:
    """Check the catalog's ``earning:`` section and merge it over the defaults."""
    try:
        return _earning(section, source)
    except Invalid as invalid:
        raise CatalogError(source, format_path(invalid.path), invalid.problem) from None


def earning_rules(catalog) -> EarningRules:
    """The rules a loaded ``Catalog`` configures (its ``earning`` section)."""
    return parse_earning(catalog.earning, source=catalog.source)


def default_rules() -> EarningRules:
    return parse_earning({}, source="<defaults>")


def _earning(section: Any, source: str) -> EarningRules:
    path = ("earning",)
    section = {} if section is None else expect_mapping(section, path, optional=_TOP_KEYS)
    merged = {**DEFAULT_EARNING, **section}
    rules_path = (*path, "rules")
    given = merged.get("rules")
    given = {} if given is None else expect_mapping(given, rules_path, open_keys=True)
    for name in given:
        if name not in RULE_NAMES:
            fail((*rules_path, name), unknown_key(name, RULE_NAMES).replace("key", "rule", 1))
    rules = {}
    for name in RULE_NAMES:
        here = (*rules_path, name)
        entry = given.get(name, {})
        entry = {} if entry is None else expect_mapping(entry, here, optional=_RULE_KEYS[name])
        rules[name] = _rule(name, {**DEFAULT_EARNING["rules"][name], **entry}, here)
    return EarningRules(
        rules=MappingProxyType(rules),
        max_claims_per_day=_credits(merged["max_claims_per_day"], (*path, "max_claims_per_day")),
        rate_limit_per_minute=expect_whole_number(merged["rate_limit_per_minute"],
                                            (*path, "rate_limit_per_minute"), minimum=1),
        session_grace_s=expect_whole_number(merged["session_grace_s"], (*path, "session_grace_s"),
                                      minimum=0),
    )


def _rule(name: str, entry: dict, path: tuple) -> Rule:
    per_minute = name == NOTEBOOK_ACTIVITY
    points_key = "points_per_minute" if per_minute else "points"
    fields: dict[str, Any] = {
        "name": name,
        "points": _credits(entry[points_key], (*path, points_key)),
        "per_minute": per_minute,
        "enabled": expect_bool(entry.get("enabled", True), (*path, "enabled")),
        "expires_after_days": _optional_count(entry.get("expires_after_days"),
                                              (*path, "expires_after_days")),
        "min_interval_s": expect_whole_number(entry.get("min_interval_s", 0), (*path, "min_interval_s"),
                                        minimum=0),
    }
    if name == SIGNUP:
        fields.update(once=True, trusted_only=True, max_per_day=1)
    else:
        fields["max_per_day"] = _optional_count(entry.get("max_per_day"), (*path, "max_per_day"))
        points_cap = entry.get("max_points_per_day")
        fields["max_points_per_day"] = (
            None if points_cap is None else _credits(points_cap, (*path, "max_points_per_day")))
    if name in HUB_ONLY_RULES:
        fields["trusted_only"] = True
    else:
        fields["trusted_only"] = expect_bool(entry.get("trusted_only", False), (*path, "trusted_only"))
    if name == TRAINING_RUN:
        fields["min_duration_s"] = expect_whole_number(entry["min_duration_s"],
                                                 (*path, "min_duration_s"), minimum=1)
    if name == EFFICIENCY_BONUS:
        for key in ("min_utilization", "min_coverage_percent"):
            value = expect_whole_number(entry[key], (*path, key), minimum=1)
            if value > 100:
                fail((*path, key), f"a percentage: at most 100, got {value}")
            fields[key] = value
    return Rule(**fields)


def _credits(value: Any, path: tuple) -> int:
    return expect_credits(value, path)


def _optional_count(value: Any, path: tuple) -> int | None:
    """A whole number of at least 1, or null for "no bound"."""
    if value is None:
        return None
    return expect_whole_number(value, path, minimum=1)
