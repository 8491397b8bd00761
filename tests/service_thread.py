"""The real credits service and a stand-in hub, on one event loop in a background thread.

The service is the real one (``CreditsService.make_context`` / ``make_app`` /
``make_server``: its handlers, its ``HubOAuth``, its HTTP server limits); only the hub
is a stand-in, a small Tornado app that answers the two calls the service makes of it:
"whose token is this?" (``GET /hub/api/user``, counted per token in ``asked``) and
"who is this user?" (``GET /hub/api/users/{name}``, for the service's own token).
Tests call the service with ``requests``, as any client would.
"""

from __future__ import annotations

import asyncio
import json
import threading

from jupyterhub.services.auth import HubOAuth
from tornado import web
from tornado.httpserver import HTTPServer
from tornado.testing import bind_unused_port

from jupyterhub_credits.service.app import CreditsService
from tests.hub import CATALOG

PREFIX = "/services/credits/"
ACCESS = "access:services!service=credits"


class StandInHubUser(web.RequestHandler):
    """``GET /hub/api/user``: the owner of the token in the Authorization header."""

    def get(self):
        token = self.request.headers.get("Authorization", "").partition(" ")[2]
        asked = self.settings["asked"]
        asked[token] = asked.get(token, 0) + 1
        tokens = self.settings["tokens"]
        if token not in tokens:
            raise web.HTTPError(403)
        self.write(tokens[token])


class StandInHubUsers(web.RequestHandler):
    """``GET /hub/api/users/{name}``, for the service's own token only."""

    def get(self, name):
        if self.request.headers.get("Authorization") != f"token {self.settings['service_token']}":
            raise web.HTTPError(403)
        users = self.settings["users"]
        if name not in users:
            raise web.HTTPError(404)
        self.set_header("Content-Type", "application/json")
        self.write(json.dumps(users[name]))


class ServiceThread:
    """The credits service (no meter) and a stand-in hub that knows ``tokens`` and ``users``."""

    def __init__(self, db_url: str, *, tokens: dict, service_token: str,
                 users: dict | None = None, clock=None, **config):
        self.tokens, self.users, self.service_token = tokens, users or {}, service_token
        self.loop = asyncio.new_event_loop()
        self.hub_socket, hub_port = bind_unused_port()
        self.service_socket, port = bind_unused_port()
        self.base_url = f"http://127.0.0.1:{port}"
        self.service = CreditsService(
            db_url=db_url, catalog_path=str(CATALOG),
            hub_api_url=f"http://127.0.0.1:{hub_port}/hub/api", api_token=service_token,
            service_url=self.base_url, service_prefix=PREFIX, run_meter=False,
            capacity="none", earnings_pay_interval=0, **config)
        self.context = self.service.make_context(**({"clock": clock} if clock else {}))
        self.app = self.service.make_app(self.context)
        self.hub_auth: HubOAuth = self.app.settings["hub_auth"]
        self.hub_auth.access_scopes = {ACCESS}
        self.asked: dict[str, int] = {}
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._started = threading.Event()

    def _run(self):
        asyncio.set_event_loop(self.loop)

        async def start():
            hub = web.Application([(r"/hub/api/user", StandInHubUser),
                                   (r"/hub/api/users/([^/]+)", StandInHubUsers)],
                                  asked=self.asked, tokens=self.tokens, users=self.users,
                                  service_token=self.service_token)
            HTTPServer(hub).add_sockets([self.hub_socket])
            self.service.make_server(self.app).add_sockets([self.service_socket])

        self.loop.run_until_complete(start())
        self._started.set()
        self.loop.run_forever()

    def __enter__(self):
        self._thread.start()
        assert self._started.wait(10)
        return self

    def __exit__(self, *exc):
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(10)
        self.context.ledger.close()
