"""The credits REST API: one module per resource, each exporting ``default_handlers``.

Paths are relative to the service prefix (``/services/credits/``):

- ``GET  api/me`` — the caller's balance and open sessions (``me``)
- ``GET  api/users/{user}`` — the same for any user, for admins (``admin``)
- ``GET  api/me/lots``, ``api/users/{user}/lots`` — lots with credits left (``history``)
- ``GET  api/me/history``, ``api/users/{user}/history`` — transfers, newest first, by
  kind and page (``history``)
- ``GET  api/users/{user}/earnings`` — a user's earnings, for admins (``history``)
- ``GET  api/sessions`` — the caller's open sessions (``sessions``)
- ``GET  api/sessions/{server}`` — one of the caller's servers: balance, open session or
  the stop decided, today's earnings, training runs' outcomes; what single-user servers
  poll (``server_status``)
- ``POST api/sessions/{server}/extend`` — more hours (once per ``key``), or auto-extend
  on/off (``sessions``)
- ``POST api/sessions/{server}/stop`` — settle now and stop the server (``sessions``)
- ``GET  api/admin/sessions`` — every open session with GPU utilisation (``admin_sessions``)
- ``POST api/admin/sessions/{user}/{server}/stop`` — an admin's stop, settled once
  (``admin_sessions``)
- ``GET  api/admin/stats`` — issued/spent per day, GPU-hours, top consumers (``stats``)
- ``GET  api/openapi.yaml``, ``api/openapi.json`` — this API's spec, no login (``spec``)
- ``GET  api/catalog`` — images, GPU types with prices and free GPUs, quotas (``catalog``)
- ``POST api/events`` — activity reported by a single-user server, one outcome each (``events``)
- ``GET  api/me/earnings`` — today's earnings against caps, and history (``earnings``)
- ``GET  api/leaderboard`` — top earners over a window (``earnings``)
- ``POST|DELETE api/accounts/{user}/freeze`` — stop/resume a user's earning (``freeze``)
- ``GET  api/admin/accounts`` — user accounts: search, sort, pages (``accounts``)
- ``POST api/admin/grant``, ``api/admin/deduct`` — one user or a group's pool (``grants``)
- ``POST api/admin/bulk/preview``, ``api/admin/bulk`` — a list, a hub group's members or a
  CSV: every line shown, then each applied as its own transfer (``bulk``)
- ``GET  api/admin/transfers``, ``POST api/admin/transfers/{id}/reverse`` — the audit log
  and reversals (``transfers``)
- ``GET  api/admin/export.csv`` — transfers as CSV, streamed, cells defused (``export``)
- ``GET|POST api/admin/verify`` — the ledger's invariants, checked in the background (``verify``)

Every admin write carries a ``key`` made when its form was shown: the same key again
answers with the first result and moves nothing.
"""

from . import (
    accounts,
    admin,
    admin_sessions,
    bulk,
    catalog,
    earnings,
    events,
    export,
    freeze,
    grants,
    history,
    me,
    server_status,
    sessions,
    spec,
    stats,
    transfers,
    verify,
)
from .base import APIError, APIHandler, HubUserHandler, NotFoundHandler

default_handlers = []
# server_status first: every single-user server polls it (333 requests/s for 10,000
# servers) and Tornado tries the routes in order; no other route matches its paths.
for _module in (server_status, me, history, admin, sessions, admin_sessions, catalog, events,
                earnings, freeze, accounts, grants, bulk, transfers, export, verify, stats, spec):
    default_handlers.extend(_module.default_handlers)

__all__ = ["APIError", "APIHandler", "HubUserHandler", "NotFoundHandler", "default_handlers"]
