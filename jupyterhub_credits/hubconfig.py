"""Wire jupyterhub-credits into a JupyterHub configuration in one call.

In ``jupyterhub_config.py``::

    from jupyterhub_credits.hubconfig import configure_credits
    configure_credits(c, catalog_path="config/catalog.yaml",
                      db_url="sqlite:///jupyterhub_credits.sqlite")

It checks the catalog (an invalid one stops the hub at start-up with a message
naming the file, the key and the problem), sets the spawner, defines the
credits RBAC scopes and roles, registers the managed ``credits`` service
that serves the API and runs the meter, and puts "Credits" links in the hub's
navigation bar (``hub_templates/page.html``).
"""

from __future__ import annotations

import os
import sys

from .catalog import CatalogError, load_catalog
from .ledger import Ledger

SERVICE_NAME = "credits"
#: The hub's ``page.html`` with the "Credits" (and, for admins, "Credits admin") navigation
#: links; the credits service renders its pages with the same file.
HUB_TEMPLATES = os.path.join(os.path.dirname(os.path.abspath(__file__)), "hub_templates")

#: RBAC custom scopes of the credits service.
SCOPES = {
    "custom:credits:read": {
        "description": "Read credit balances, sessions and history (own, with !user filter).",
    },
    "custom:credits:spend": {
        "description": "Extend sessions and change how they are paid (own, with !user filter).",
    },
    "custom:credits:events": {
        "description": "Report activity events that may earn credits (own, with !user filter).",
    },
    "custom:credits:metrics": {
        "description": "Read the credits service's Prometheus metrics (totals, nothing per user).",
    },
    "custom:credits:admin": {
        "description": "Administer credits: grant, deduct, reverse, freeze, stop sessions.",
        "subscopes": ["custom:credits:read", "custom:credits:spend", "custom:credits:events",
                      "custom:credits:metrics"],
    },
}

#: What the service's own token may do at the hub (the meter stops servers).
SERVICE_SCOPES = ["list:users", "read:users", "read:users:name", "read:servers",
                  "delete:servers", "read:groups", "users:activity"]

SPAWNERS = {
    "local": "jupyterhub_credits.spawner.CreditsLocalProcessSpawner",
    "simple": "jupyterhub_credits.spawner.CreditsSimpleLocalProcessSpawner",
    "kubernetes": "jupyterhub_credits.spawner.kube.CreditsKubeSpawner",
}


def check_catalog(catalog_path: str):
    try:
        return load_catalog(catalog_path)
    except CatalogError as error:
        sys.exit(f"jupyterhub-credits: invalid catalog: {error}")
    except OSError as error:
        sys.exit(f"jupyterhub-credits: cannot read the catalog {catalog_path}: {error.strerror}")


def _merge_role(roles: list, name: str, scopes: list[str], **members) -> None:
    for role in roles:
        if role.get("name") == name:
            role["scopes"] = sorted(set(role.get("scopes", [])) | set(scopes))
            for kind, names in members.items():
                role[kind] = sorted(set(role.get(kind, [])) | set(names))
            return
    roles.append({"name": name, "scopes": list(scopes), **members})


def _get(section, name: str, default):
    """A value already set in the config, or ``default`` (unset keys are lazy objects)."""
    return section[name] if name in section else default


def _default_scopes(role_name: str) -> list[str]:
    from jupyterhub.roles import get_default_roles

    return next(role["scopes"] for role in get_default_roles() if role["name"] == role_name)


def configure_credits(c, *, catalog_path: str, db_url: str, spawner: str = "local",
                      admin_users: list[str] | None = None,
                      service_port: int = 10101, service_ip: str = "127.0.0.1",
                      meter_interval: float = 5.0, upgrade_db: bool = True,
                      service_environment: dict | None = None,
                      service_bind_url: str | None = None) -> None:
    """Configure the hub ``c`` for credits (see the module docstring).

    ``service_ip``/``service_port`` are where the proxy reaches the service; on
    Kubernetes that is the hub pod's Service name, and ``service_bind_url``
    (e.g. ``http://0.0.0.0:10101``) is where the service listens.
    """
    catalog_path = os.path.abspath(catalog_path)
    check_catalog(catalog_path)
    if upgrade_db:
        # Migrate once here, before the hub and the service both open the database.
        Ledger.open(db_url).close()

    c.JupyterHub.spawner_class = SPAWNERS.get(spawner, spawner)
    c.CreditsSpawner.catalog_path = catalog_path
    c.CreditsSpawner.credits_db_url = db_url

    custom_scopes = dict(_get(c.JupyterHub, "custom_scopes", {}))
    custom_scopes.update(SCOPES)
    c.JupyterHub.custom_scopes = custom_scopes

    roles = list(_get(c.JupyterHub, "load_roles", []))
    _merge_role(roles, "credits-service", SERVICE_SCOPES, services=[SERVICE_NAME])
    # Every user reads, spends and reports for themselves only.
    c.JupyterHub.extra_user_scopes = sorted(set(_get(c.JupyterHub, "extra_user_scopes", [])) | {
        f"access:services!service={SERVICE_NAME}", "custom:credits:read!user",
        "custom:credits:spend!user", "custom:credits:events!user"})
    # A single-user server's token reports for its owner (events, time left) and, from
    # JupyterLab, extends its owner's session or switches auto-extend (spend): for its own
    # user only. Overriding a default role replaces its scopes, so start from the defaults.
    _merge_role(roles, "server", [*_default_scopes("server"),
                                  f"access:services!service={SERVICE_NAME}",
                                  "custom:credits:read!user", "custom:credits:spend!user",
                                  "custom:credits:events!user"])
    admins = sorted(set(admin_users or []) | set(_get(c.Authenticator, "admin_users", [])))
    _merge_role(roles, "credits-admin", ["custom:credits:admin"], users=admins)
    c.JupyterHub.load_roles = roles

    # First, so the hub's pages extend our page.html (which extends the hub's own); a
    # deployment's own template directories stay, after ours.
    template_paths = [path for path in _get(c.JupyterHub, "template_paths", [])
                      if path != HUB_TEMPLATES]
    c.JupyterHub.template_paths = [HUB_TEMPLATES, *template_paths]

    environment = {
        "JUPYTERHUB_CREDITS_DB_URL": db_url,
        "JUPYTERHUB_CREDITS_CATALOG": catalog_path,
        "JUPYTERHUB_CREDITS_METER_INTERVAL": str(meter_interval),
        **(service_environment or {}),
    }
    # The hub does not pass its own environment to managed services.
    if "JUPYTERHUB_CREDITS_LOCAL_GPUS" in os.environ:
        environment.setdefault("JUPYTERHUB_CREDITS_LOCAL_GPUS",
                               os.environ["JUPYTERHUB_CREDITS_LOCAL_GPUS"])
    if service_bind_url:
        environment["JUPYTERHUB_CREDITS_BIND_URL"] = service_bind_url
    services = [s for s in _get(c.JupyterHub, "services", []) if s.get("name") != SERVICE_NAME]
    services.append({
        "name": SERVICE_NAME,
        "url": f"http://{service_ip}:{service_port}",
        "command": [sys.executable, "-m", "jupyterhub_credits.service"],
        "environment": environment,
        "display": True,
        "oauth_no_confirm": True,
        # What a browser's OAuth token for the service may carry (filtered per user by the hub).
        "oauth_client_allowed_scopes": ["custom:credits:read!user", "custom:credits:spend!user",
                                        "custom:credits:events!user", "custom:credits:admin"],
    })
    c.JupyterHub.services = services

    # Single-user servers reach the service directly (the hub's own port serves only /hub/).
    api_url = f"http://{service_ip}:{service_port}/services/credits/api"
    for section in _environment_sections(c, c.JupyterHub.spawner_class):
        environment = dict(_get(c[section], "environment", {}))
        environment.setdefault("JUPYTERHUB_CREDITS_API_URL", api_url)
        c[section].environment = environment


def _environment_sections(c, spawner_class: str) -> list[str]:
    """``Spawner`` and every section of the spawner's own classes that sets ``environment``.

    traitlets lets a subclass's section replace a base class's value: Zero to
    JupyterHub always sets ``c.KubeSpawner.environment`` (from singleuser.extraEnv,
    ``{}`` by default), which would hide an entry made in ``c.Spawner.environment``.
    """
    from traitlets.utils.importstring import import_item

    try:
        spawner = spawner_class if isinstance(spawner_class, type) else import_item(spawner_class)
        classes = spawner.__mro__
    except (ImportError, AttributeError, ValueError):
        classes = ()  # a spawner this hub cannot import: the hub itself will say so
    names = [cls.__name__ for cls in classes if cls.__name__ != "Spawner"]
    return ["Spawner", *(name for name in names
                         if name in c and "environment" in c[name])]


def login_events(now) -> list[dict]:
    """The events the hub records at a login: the signup bonus (once ever) and the daily login."""
    from datetime import timezone

    now = now.astimezone(timezone.utc)
    stamp = now.isoformat().replace("+00:00", "Z")
    return [
        {"kind": "signup", "key": "signup", "time": stamp, "payload": {}},
        {"kind": "login", "key": f"login:{now.date().isoformat()}", "time": stamp,
         "payload": {}},
    ]


def earning_service(context):
    """The hub process's EarningService on the spawners' shared ledger and catalog."""
    from .earning import EarningService, earning_rules

    service = context.extras.get("earning")
    if service is None:
        service = context.extras["earning"] = EarningService(
            context.ledger, earning_rules(context.catalog), sessions=context.sessions)
    return service


def record_login(context, user: str) -> list[dict]:
    """Record the hub user ``user``'s login through the earning rules (source "hub": trusted).

    ``user`` is the hub name as the authenticator gave it, verbatim (the hub user
    ``user:bob`` earns into ``user:user:bob``, never into bob's account); the outcomes.

    The signup event earns the ``signup`` rule once per user, ever; the daily
    login earns ``daily_login`` once per UTC day (keyed ``login:<date>``).
    """
    service = earning_service(context)
    return service.record(user, login_events(service.clock()), source="hub")


def earning_hook():
    """An ``Authenticator.post_auth_hook`` recording each login through the earning rules.

    Runs in the hub (trusted): a ``signup`` event (the catalog's
    ``earning.rules.signup``: 75 credits by default, once per user, ever) and a
    ``login`` event (``earning.rules.daily_login``: once a day). A failure is
    logged and never stops the login.
    """

    async def record_on_login(authenticator, handler, authentication):
        import asyncio

        from .spawner.context import shared_context

        if not authentication:
            return authentication
        name = authentication["name"]
        try:
            context = shared_context(authenticator.config.CreditsSpawner.credits_db_url,
                                     authenticator.config.CreditsSpawner.catalog_path)
            outcomes = await asyncio.to_thread(record_login, context, name)
        except Exception:  # noqa: BLE001 - earning must never block a login
            authenticator.log.exception("credits: could not record %s's login", name)
            return authentication
        earned = [f"{o['rule']} {o['points']}" for o in outcomes if o["outcome"] == "earned"]
        if earned:
            authenticator.log.info("credits: %s earned %s at login", name, ", ".join(earned))
        return authentication

    return record_on_login
