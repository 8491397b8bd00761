"""What every credits page shares: the hub's look, the caller, errors as pages.

Pages render with the service's own Jinja environment, whose loaders put
the credits templates first, then the hub-side override of ``page.html``
(``jupyterhub_credits/hub_templates``: the "Credits" links in the navigation
bar), then JupyterHub's own templates — reachable as ``templates/page.html``
the way the hub itself exposes them — so a credits page *is* a hub page:
same navigation bar, fonts and light/dark theme (the hub's ``darkmode.js``
and Bootstrap's ``data-bs-theme``, both served by the hub under
``/hub/static/``). The hub's template variables are supplied here
(``template_namespace``), built from the caller's hub model, not the hub's ORM.

Pages read through plain functions of the service context (the same read
models as the API) and act only through the JSON API, with the XSRF token
HubOAuth issues: one path that moves credits, not two.
"""

from __future__ import annotations

import asyncio
import json
import os
import uuid
from dataclasses import dataclass
from http.client import responses

from jinja2 import ChoiceLoader, Environment, FileSystemLoader, PrefixLoader, select_autoescape
from jupyterhub._data import DATA_FILES_PATH
from jupyterhub.utils import url_path_join
from tornado import web

from ..api.base import APIError, HubUserHandler
from ..context import ServiceContext

PACKAGE_DIR = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TEMPLATES_DIR = os.path.join(PACKAGE_DIR, "service", "templates")
STATIC_DIR = os.path.join(PACKAGE_DIR, "service", "static")
HUB_OVERRIDES_DIR = os.path.join(PACKAGE_DIR, "hub_templates")
HUB_TEMPLATES_DIR = os.path.join(DATA_FILES_PATH, "templates")


def template_environment() -> Environment:
    hub_templates = FileSystemLoader(HUB_TEMPLATES_DIR)
    env = Environment(
        loader=ChoiceLoader([FileSystemLoader(TEMPLATES_DIR), FileSystemLoader(HUB_OVERRIDES_DIR),
                             PrefixLoader({"templates": hub_templates}), hub_templates]),
        autoescape=select_autoescape(default=True, default_for_string=True),
    )
    env.filters["tojson_attr"] = lambda value: json.dumps(value)
    return env


@dataclass(frozen=True)
class PageUser:
    """What the hub's ``page.html`` reads of ``user`` (never the hub's ORM object)."""

    name: str

    @property
    def json_escaped_name(self) -> str:
        return json.dumps(self.name)[1:-1]


def scope_names(model: dict | None) -> set[str]:
    """The caller's scopes without filters (``custom:credits:read!user=a`` → ``custom:credits:read``),
    as the hub's ``parsed_scopes`` keys; enough to show or hide a link, never to authorise."""
    return {scope.split("!", 1)[0] for scope in (model or {}).get("scopes") or ()}


def page_error(status: int, message: str) -> web.HTTPError:
    """An error page saying ``message`` as it is (passed as an argument: a ``%`` in a user
    name must not be read as a format)."""
    return web.HTTPError(status, "%s", message)


class PageHandler(HubUserHandler):
    """A credits page: the caller from HubOAuth, rendered in the hub's ``page.html``.

    Errors render as a page in the same look (a 403 says who may see it),
    never as JSON or a traceback.
    """

    @property
    def credits(self) -> ServiceContext:
        return self.settings["credits"]

    def set_default_headers(self):
        self.set_header("Cache-Control", "no-store")
        self.set_header("X-Frame-Options", "SAMEORIGIN")

    def get_login_url(self):
        if self.denied:  # known to the hub, not allowed here: logging in again cannot help
            raise web.HTTPError(403, f"{self.denied.get('kind', 'user')} "
                                     f"{self.denied.get('name')} may not use the credits service")
        return super().get_login_url()

    async def run(self, function, *args, **kwargs):
        """Database work off the event loop."""
        return await asyncio.to_thread(function, *args, **kwargs)

    def template_namespace(self) -> dict:
        hub_auth = self.hub_auth
        hub_prefix = hub_auth.hub_prefix  # "/hub/"
        model = self.current_user or self.denied
        credits_prefix = self.settings["credits_prefix"]
        return {
            "base_url": hub_prefix,
            # The hub's base URL ("/" before "hub/"), as the hub's own pages have it: its
            # page.html and the credits links build on it (hub_auth.base_url is this service's).
            "prefix": hub_prefix[:-len("hub/")] if hub_prefix.endswith("/hub/") else "/",
            "user": PageUser(model["name"]) if model else None,
            "login_url": url_path_join(hub_prefix, "login"),
            "logout_url": url_path_join(hub_prefix, "logout"),
            "static_url": lambda path, include_version=True: url_path_join(hub_prefix, "static",
                                                                           path),
            "version_hash": "",
            "services": [{"name": "credits", "href": credits_prefix}],
            "parsed_scopes": scope_names(model),
            "admin_access": False,
            "no_spawner_check": True,
            "announcement": None,
            "xsrf_token": self.xsrf_token.decode("ascii"),
            "credits_prefix": credits_prefix,
            "credits_static_url": self.static_url,
            "api_url": url_path_join(credits_prefix, "api") + "/",
            # A fresh idempotency key for each form shown: the same form sent twice acts once.
            "form_key": lambda: uuid.uuid4().hex,
        }

    def render_page(self, template: str, **values) -> None:
        """Render ``template`` with the hub's variables plus ``values``.

        ``user`` in the hub's ``page.html`` is the *viewer* (navigation bar, login
        widget): pass the person a page is about under another name (``person``).
        """
        if "user" in values:
            raise ValueError("render_page: 'user' is the viewer; name the page's subject "
                             "'person'")
        namespace = self.template_namespace()
        namespace.update(values)
        html = self.settings["credits_templates"].get_template(template).render(**namespace)
        self.finish(html)

    def write_error(self, status_code, **kwargs):
        error = kwargs.get("exc_info", (None, None, None))[1]
        if isinstance(error, APIError):
            message = error.message
        elif isinstance(error, web.HTTPError) and status_code < 500 and error.log_message:
            message = error.log_message % error.args if error.args else error.log_message
        elif status_code < 500:
            message = responses.get(status_code, "")
        else:
            message = "Something went wrong in the credits service; its log says what."
        self.set_header("Content-Type", "text/html; charset=UTF-8")
        try:
            self.render_page("credits_error.html", status_code=status_code,
                             status_message=responses.get(status_code, "Error"), message=message)
        except Exception:  # noqa: BLE001 - the error page itself must never fail
            self.finish(f"<h1>{status_code}</h1>")
