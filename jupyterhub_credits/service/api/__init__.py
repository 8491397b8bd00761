"""The credits REST API: one module per resource, each exporting ``default_handlers``.

Paths are relative to the service prefix (``/services/credits/``):

- ``GET  api/me`` — the caller's balance and open sessions (``me``)
- ``GET  api/users/{user}`` — the same for any user, for admins (``admin``)
- ``POST api/sessions/{server}/extend`` — more hours, or auto-extend on/off (``sessions``)
- ``GET  api/catalog`` — images, GPU types with prices and free GPUs, quotas (``catalog``)
- ``POST api/events`` — activity reported by a single-user server, one outcome each (``events``)
- ``GET  api/me/earnings`` — today's earnings against caps, and history (``earnings``)
- ``GET  api/leaderboard`` — top earners over a window (``earnings``)
- ``POST|DELETE api/accounts/{user}/freeze`` — stop/resume a user's earning (``freeze``)
"""

from . import admin, catalog, earnings, events, freeze, me, sessions
from .base import APIError, APIHandler, HubUserHandler, NotFoundHandler

default_handlers = []
for _module in (me, admin, sessions, catalog, events, earnings, freeze):
    default_handlers.extend(_module.default_handlers)

__all__ = ["APIError", "APIHandler", "HubUserHandler", "NotFoundHandler", "default_handlers"]
