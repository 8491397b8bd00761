"""The hub's REST API as the credits service uses it, through Tornado's async HTTP client.

Only what the meter and the API need: list active servers (paginated),
read one user (with its servers: how the meter checks a few users at a time),
list every user's name (paginated), read a group's members, stop one server.
The service's own token
(``$JUPYTERHUB_API_TOKEN``, role ``credits-service``) authorises every call.
"""

from __future__ import annotations

import asyncio
import functools
import json
import logging
import socket
from concurrent.futures import Executor
from dataclasses import dataclass
from urllib.parse import quote, urlencode

from tornado.httpclient import AsyncHTTPClient, HTTPClientError, HTTPRequest
from tornado.netutil import Resolver

log = logging.getLogger(__name__)

PAGINATION_MEDIA_TYPE = "application/jupyterhub-pagination+json"


class HubUnavailable(Exception):
    """The hub did not answer as expected (down, restarting, refused our token)."""


@dataclass(frozen=True)
class ServerState:
    """One of a user's servers as the hub sees it: active means it has a server record."""

    user: str
    name: str
    ready: bool
    pending: str | None  # "spawn", "stop", "check" or None

    @property
    def steady(self) -> bool:
        """Up and not in the middle of a start or stop."""
        return self.ready and not self.pending


def server_path(user: str, server_name: str) -> str:
    """The hub API path of a user's server ("" is the default server)."""
    user = quote(user, safe="")
    if server_name:
        return f"/users/{user}/servers/{quote(server_name, safe='')}"
    return f"/users/{user}/server"


def servers_of(user_model: dict) -> dict[tuple[str, str], ServerState]:
    """Active servers in a hub user model (needs ``read:servers``)."""
    servers = {}
    for name, server in (user_model.get("servers") or {}).items():
        servers[(user_model["name"], name)] = ServerState(
            user_model["name"], name, bool(server.get("ready")), server.get("pending"))
    return servers


class HubClient:
    def __init__(self, api_url: str, token: str, *, timeout: float = 20, page_size: int = 200):
        self.api_url = api_url.rstrip("/")
        self.token = token
        self.timeout = timeout
        self.page_size = page_size
        self._resolver_pool: Executor | None = None
        self._own_client: AsyncHTTPClient | None = None

    def resolve_names_in(self, executor: Executor) -> None:
        """Look the hub's host name up on ``executor``'s threads, not asyncio's default pool.

        Tornado resolves every request's host (even ``127.0.0.1``) on that shared
        pool, which a burst of API requests can fill: the meter's stops must not
        wait behind them.
        """
        self._resolver_pool = executor
        self._own_client = None

    def _http_client(self) -> AsyncHTTPClient:
        if self._resolver_pool is None:
            return AsyncHTTPClient()
        if self._own_client is None:  # made in the running loop, at first use
            self._own_client = AsyncHTTPClient(
                force_instance=True, resolver=_PoolResolver(executor=self._resolver_pool))
        return self._own_client

    async def request(self, method: str, path: str, *, body=None, accept: str | None = None,
                      allow: tuple[int, ...] = ()):
        """(status, parsed JSON or None); statuses in ``allow`` are answers, not errors."""
        headers = {"Authorization": f"token {self.token}"}
        if accept:
            headers["Accept"] = accept
        request = HTTPRequest(
            self.api_url + path, method=method, headers=headers,
            body=json.dumps(body) if body is not None else None,
            allow_nonstandard_methods=True,
            connect_timeout=self.timeout, request_timeout=self.timeout)
        try:
            response = await self._http_client().fetch(request, raise_error=False)
        except (OSError, HTTPClientError) as error:  # refused, reset, timed out
            raise HubUnavailable(f"{method} {path}: {error}") from None
        if response.code == 599:  # Tornado's "no response" (timeout, connection failure)
            raise HubUnavailable(f"{method} {path}: {response.error}")
        if response.code >= 400 and response.code not in allow:
            raise HubUnavailable(f"{method} {path}: HTTP {response.code} "
                                 f"{response.body[:200].decode(errors='replace')}")
        data = json.loads(response.body) if response.body and response.headers.get(
            "Content-Type", "").startswith("application/json") else None
        return response.code, data

    async def user(self, name: str) -> dict | None:
        """A user's model (with groups and servers), or None if the hub has no such user."""
        status, data = await self.request("GET", f"/users/{quote(name, safe='')}", allow=(404,))
        return None if status == 404 else data

    async def group(self, name: str) -> list[str] | None:
        """The names of a group's members (needs ``read:groups``), or None if there is no
        such group."""
        status, data = await self.request("GET", f"/groups/{quote(name, safe='')}",
                                          allow=(404,))
        if status == 404:
            return None
        return list((data or {}).get("users") or [])

    async def user_names(self) -> set[str]:
        """The name of every hub user, all pages: one listing instead of one request a name."""
        names: set[str] = set()
        offset = 0
        while True:
            query = urlencode({"offset": offset, "limit": self.page_size})
            _, data = await self.request("GET", f"/users?{query}", accept=PAGINATION_MEDIA_TYPE)
            if isinstance(data, list):  # a hub that ignores the pagination media type
                items, following = data, None
            else:
                items, following = data["items"], data["_pagination"].get("next")
            names.update(user_model["name"] for user_model in items)
            if not following:
                return names
            offset = following["offset"]

    async def active_servers(self, page_size: int | None = None
                             ) -> dict[tuple[str, str], ServerState]:
        """Every active server (started, starting or stopping), all pages of users.

        Each page costs the hub more than its users: it sorts and counts every user
        with an active server for each request (see bench/hub_scale.py).
        """
        servers: dict[tuple[str, str], ServerState] = {}
        offset = 0
        while True:
            query = urlencode({"state": "active", "offset": offset,
                               "limit": page_size or self.page_size})
            _, data = await self.request("GET", f"/users?{query}", accept=PAGINATION_MEDIA_TYPE)
            if isinstance(data, list):  # a hub that ignores the pagination media type
                items, following = data, None
            else:
                items, following = data["items"], data["_pagination"].get("next")
            for user_model in items:
                servers.update(servers_of(user_model))
            if not following:
                return servers
            offset = following["offset"]

    async def stop_server(self, user: str, server_name: str) -> int:
        """Ask the hub to stop a server: 204 stopped, 202 stopping, 404 no such server/user."""
        status, _ = await self.request("DELETE", server_path(user, server_name), allow=(404,))
        return status


class _PoolResolver(Resolver):
    """Resolves host names with ``socket.getaddrinfo`` on a given thread pool."""

    def initialize(self, executor: Executor) -> None:
        self.executor = executor

    async def resolve(self, host: str, port: int, family: socket.AddressFamily = socket.AF_UNSPEC
                      ) -> list[tuple[int, tuple]]:
        found = await asyncio.get_running_loop().run_in_executor(
            self.executor, functools.partial(socket.getaddrinfo, host, port, family,
                                             socket.SOCK_STREAM))
        return [(fam, address) for fam, _, _, _, address in found]
