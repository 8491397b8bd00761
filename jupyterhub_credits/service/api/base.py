"""The base of every credits API handler: hub authentication, scopes, JSON in and out.

Authentication is JupyterHub's: a token in the ``Authorization`` header, or
the cookie the service's OAuth login leaves in a browser
(``HubOAuthenticated``). The hub identifies the caller and lists its scopes;
each handler then asks ``require(scope, user=...)``. Every error is JSON,
``{"status": N, "message": "..."}``: 401 without (valid) credentials, 403
without the scope, 4xx for bad input; an unexpected failure is a 500 whose
message says nothing of the internals (the service log has the traceback).
"""

from __future__ import annotations

import asyncio
import json
from decimal import Decimal
from http.client import responses

from jupyterhub.services.auth import HubOAuthenticated, UserNotAllowed
from sqlalchemy.exc import DBAPIError
from tornado import web

from ...quoting import quote_input, unstorable_text
from ..auth import READ, has_scope, is_user
from ..context import ServiceContext
from ..hub import HubUnavailable

#: What a caller is told when the hub's REST API does not answer.
HUB_DOWN = "the hub is not answering; try again shortly"
#: Seconds a client is asked to wait (Retry-After) when the credits database is unavailable.
DATABASE_RETRY_AFTER = 5


def database_unavailable(error: DBAPIError) -> str:
    """What a caller is told when the credits database failed under a request (a full disk,
    a restarted or unreachable server): a 503 to retry, not an internal error. Retrying is
    safe: every write the API takes is idempotent by its key or refused as a whole."""
    text = str(error.orig or error).lower()
    if "full" in text or "no space" in text:
        why = "its disk is full"
    elif error.connection_invalidated or "connect" in text or "terminat" in text \
            or "closed" in text:
        why = "the connection to it was lost"
    elif "locked" in text:
        why = "it is busy"
    else:
        why = "it failed"
    return f"the credits database is unavailable right now ({why}); try again shortly"


class APIError(web.HTTPError):
    """An error whose ``message`` is shown to the caller as it is."""

    def __init__(self, status: int, message: str):
        super().__init__(status)
        self.message = message


class HubUserHandler(HubOAuthenticated, web.RequestHandler):
    """A handler whose caller the hub identifies before the method runs, without blocking.

    ``HubAuthenticated.get_current_user`` asks the hub synchronously (a round
    trip on a helper thread while the event loop waits). ``prepare`` asks with
    ``get_user(sync=False)`` instead and fills the cache ``get_current_user``
    reads, so ``self.current_user`` and ``@web.authenticated`` never block.
    ``self.denied`` is the hub model of a caller the hub knows but who may
    not use this service (then ``current_user`` is None).
    """

    denied: dict | None = None

    @property
    def hub_auth(self):
        return self.settings["hub_auth"]

    async def prepare(self):
        self.denied = None
        model = await self.hub_auth.get_user(self, sync=False)
        if model:
            try:
                model = self.check_hub_user(model)
            except UserNotAllowed:
                self.denied, model = model, None
        self._hub_auth_user_cache = model
        for argument in self.path_args:
            # Tornado decodes %00 in a path; nothing downstream (hub names, SQL) takes it.
            if isinstance(argument, str) and (problem := unstorable_text(argument, "the URL")):
                raise APIError(400, problem)


def actor_of(model: dict) -> str:
    """Who a write is recorded as: ``user:NAME`` for a person (an admin), ``service:NAME``."""
    return f"{model.get('kind', 'user')}:{model.get('name')}"


class APIHandler(HubUserHandler):
    @property
    def credits(self) -> ServiceContext:
        return self.settings["credits"]

    def set_default_headers(self):
        self.set_header("Content-Type", "application/json")
        self.set_header("Cache-Control", "no-store")

    # --- who may ------------------------------------------------------------------------

    def require_login(self) -> dict:
        model = self.current_user
        if model:
            return model
        if self.denied:
            raise APIError(403, f"{self.denied.get('kind', 'user')} {self.denied.get('name')} "
                                "may not use the credits service")
        raise APIError(401, "authentication required: send 'Authorization: token <token>' "
                            "or log in through the hub")

    def require(self, scope: str, *, user: str | None = None, groups=()) -> dict:
        model = self.require_login()
        if not has_scope(model, scope, user, groups):
            target = f" for user {user}" if user else ""
            raise APIError(403, f"{model.get('kind', 'user')} {model.get('name')} lacks the "
                                f"scope {scope}{target}")
        return model

    def require_user(self) -> dict:
        """The caller, who must be a hub user (services have no credits of their own)."""
        model = self.require_login()
        if not is_user(model):
            raise APIError(403, f"service {model.get('name')} has no credits of its own; "
                                "use /api/users/{name}")
        return model

    # --- the hub's users -------------------------------------------------------------------

    async def hub_user(self, name: str) -> dict | None:
        """The hub's model of the user ``name``, None when there is none; 503 when the hub
        does not answer."""
        try:
            return await self.credits.hub.user(name)
        except HubUnavailable:
            raise APIError(503, HUB_DOWN) from None

    async def known_user(self, name: str) -> dict:
        """The hub's model of the user ``name``; 404 when there is none."""
        model = await self.hub_user(name)
        if model is None:
            raise APIError(404, f"no such user: {quote_input(name)}")
        return model

    async def readable_user(self, name: str) -> dict:
        """The hub user ``name``, once the caller may read their credits.

        ``custom:credits:read`` for that user (admins have it; ``!user=NAME`` and
        ``!group=G`` filters count). The scope is checked before existence: whether a user
        exists is not told to someone who may not read them.
        """
        self.require_login()
        model = await self.hub_user(name)
        self.require(READ, user=name, groups=(model or {}).get("groups") or ())
        if model is None:
            raise APIError(404, f"no such user: {quote_input(name)}")
        return model

    # --- JSON ------------------------------------------------------------------------------

    def json_body(self, allowed: set[str]) -> dict:
        """The request body as a JSON object with only ``allowed`` keys (numbers exact)."""
        try:
            body = json.loads(self.request.body or b"{}", parse_float=Decimal)
        except (ValueError, UnicodeDecodeError, RecursionError):  # 100,000 "[" recurse
            raise APIError(400, "the request body is not valid JSON") from None
        if not isinstance(body, dict):
            raise APIError(400, "the request body must be a JSON object")
        problem = unstorable_text(body, "the request body")
        if problem:
            raise APIError(400, problem)
        unknown = sorted(set(body) - allowed)
        if unknown:
            raise APIError(400, f"unknown field {quote_input(unknown[0])}; expected: "
                                f"{', '.join(sorted(allowed))}")
        return body

    def write_json(self, data, status: int = 200) -> None:
        self.set_status(status)
        self.finish(json.dumps(data))

    async def run(self, function, *args, **kwargs):
        """Database work off the event loop."""
        return await asyncio.to_thread(function, *args, **kwargs)

    def send_error(self, status_code: int = 500, **kwargs) -> None:
        error = kwargs.get("exc_info", (None, None, None))[1]
        if isinstance(error, DBAPIError) and status_code == 500:
            # Not our bug but the database's state: the caller should retry, not report it.
            status_code = 503
        super().send_error(status_code, **kwargs)

    def write_error(self, status_code, **kwargs):
        error = kwargs.get("exc_info", (None, None, None))[1]
        if isinstance(error, DBAPIError):
            message = database_unavailable(error)
            self.set_header("Retry-After", str(DATABASE_RETRY_AFTER))
        elif isinstance(error, APIError):
            message = error.message
        elif isinstance(error, web.HTTPError) and status_code < 500:
            message = (error.log_message % error.args if error.log_message and error.args
                       else error.log_message) or error.reason or responses.get(status_code, "")
        elif isinstance(error, web.HTTPError) and error.log_message and status_code in (502, 503):
            message = error.log_message  # e.g. the hub could not check the token
        else:
            message = "internal error in the credits service (see its log)"
        self.set_header("Content-Type", "application/json")
        self.finish(json.dumps({"status": status_code, "message": message}))


class NotFoundHandler(APIHandler):
    """JSON 404 for any other path under the API."""

    async def prepare(self):
        raise APIError(404, f"no such API endpoint: {quote_input(self.request.path, 100)}")
