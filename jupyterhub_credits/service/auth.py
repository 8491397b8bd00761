"""Who may do what: the credits RBAC scopes, read from the hub's user model.

The hub answers ``GET /hub/api/user`` for a token (or the service's OAuth
cookie) with the owner's model, whose ``scopes`` are already expanded:
``custom:credits:read!user`` given through ``extra_user_scopes`` arrives as
``custom:credits:read!user=alice`` (``jupyterhub.scopes.expand_scopes``
replaces the bare ``!user`` filter by the owner's name), and a role's
subscopes are listed too (``custom:credits:admin`` brings
``custom:credits:read`` etc.). ``has_scope`` still understands the bare
``!user`` form and treats ``custom:credits:admin`` as every credits scope, so
it stays right for a model built by hand.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

READ = "custom:credits:read"
SPEND = "custom:credits:spend"
EVENTS = "custom:credits:events"
ADMIN = "custom:credits:admin"
#: Read the Prometheus metrics (``/services/credits/metrics``): totals only, nothing per user.
METRICS = "custom:credits:metrics"
#: The scopes ``custom:credits:admin`` includes (its ``subscopes`` in hubconfig.SCOPES).
ADMIN_INCLUDES = frozenset({READ, SPEND, EVENTS, METRICS})


def has_scope(model: Mapping | None, scope: str, user: str | None = None,
              groups: Iterable[str] = ()) -> bool:
    """Whether the hub model ``model`` grants ``scope``, for ``user`` if given.

    Without ``user`` only the unfiltered scope counts (what an admin-wide
    operation needs). With ``user`` these count as well: ``scope!user=NAME``,
    ``scope!user`` when the model is NAME's own, and ``scope!group=G`` for a
    G in ``groups`` (the target user's groups, where the caller knows them).
    """
    if not model:
        return False
    granted = set(model.get("scopes") or ())
    wanted = {scope}
    if scope in ADMIN_INCLUDES:
        wanted.add(ADMIN)
    for base in wanted:
        if base in granted:
            return True
        if user is None:
            continue
        if f"{base}!user={user}" in granted:
            return True
        if f"{base}!user" in granted and model.get("kind", "user") == "user" \
                and model.get("name") == user:
            return True
        if any(f"{base}!group={group}" in granted for group in groups):
            return True
    return False


def is_user(model: Mapping | None) -> bool:
    """A hub user (not a service) — only users have credits of their own."""
    return bool(model) and model.get("kind", "user") == "user"
