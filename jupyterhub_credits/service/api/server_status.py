"""``GET /api/sessions/{server}``: one server's status, as its single-user server polls it.

Every single-user server's credits extension asks this once per 30 s with the
server's own token (``custom:credits:read`` for its owner): 333 requests/s for
10,000 servers. So a poll costs at most one database statement in the steady
state (``sessions.status``: the balance and the server's newest session
together), and polls that arrive together share one (``StatusReader``); today's
earnings come from ``EarningService.today_json``, read again only when the
account's lifetime earnings (in the same row) moved, this service recorded an
event of the user's, the day changed, or at the latest after 5 minutes; the outcomes
of ``runs`` are read only when asked, only for keys not answered before (an
outcome never changes once stored). Nothing goes to a thread that memory answers.

Answer::

    {"user", "server", "server_label", "available", "reserved",
     "session": {...as in /api/me...} | null,   # the server's open session
     "stop": {"reason", "at", "message"} | null, # its latest session, once ended
     "warning_thresholds": [600, 60],            # the meter's, largest first
     "earnings_today": {...as in /api/me/earnings...} | null,
     "runs": [{"key", "outcome", "points", "units", "rule", "reason"}],
     "now"}

``stop`` is the stop the service decided (expiry, an admin, idle GPUs, ...), known
before the hub has stopped the server; null while a session is open or for a
server never started. ``runs=KEY1,KEY2`` (at most ``MAX_RUNS`` keys; the
parameter may also be repeated) asks for the outcomes of the caller's own
events with these keys; keys not recorded (yet) are left out. Only a user's own
servers can be asked about, by the user or their server (as ``/api/me``).
"""

from __future__ import annotations

import asyncio
import json
import re

from ...earning import EarningError
from ...earning.decide import MAX_KEY_LENGTH
from ...ledger import format_amount
from ...ledger.core import user_account
from ...ledger.errors import InvalidRequest
from ...ledger.records import iso
from ...quoting import quote_input
from ...sessions.schema import sessions as sessions_table
from ...sessions.status import MAX_BATCH, ServerStatus, StatusRequest, server_statuses
from ...sessions.store import Session
from ..auth import READ
from ..context import ServiceContext
from ..meter import Meter
from ..models import server_from_path, server_label, session_to_dict
from .base import APIError, APIHandler
from .sessions import END_REASONS

#: The most event keys one poll may ask about.
MAX_RUNS = 20
#: An event key as ``POST /api/events`` takes it (earning.decide), less the comma that
#: separates keys here.
_RUN_KEY = re.compile(rf"[^\s#,\x00-\x1f\x7f]{{1,{MAX_KEY_LENGTH}}}")
#: A server name longer than the column can never have had a session.
MAX_SERVER_NAME = sessions_table.c.server_name.type.length
#: What a stop says when its reason has no wording of its own.
OTHER_STOP = "it was stopped"
#: Where the application keeps its ``StatusReader`` (``web.Application.settings``).
READER_SETTING = "credits_status_reader"
#: The meter's warning thresholds where this process runs no meter (its defaults).
DEFAULT_THRESHOLDS = sorted(Meter.class_traits()["warning_thresholds"].default(), reverse=True)


def parse_runs(values: list[str]) -> list[str]:
    """The event keys of ``runs=`` (comma-separated, possibly repeated), in order, once each;
    400 for a key that cannot be one, or more than ``MAX_RUNS``."""
    keys: dict[str, None] = {}  # ordered, once each
    for value in values:
        for key in value.split(","):
            if not key:
                continue  # "runs=" or a trailing comma: nothing asked
            if not _RUN_KEY.fullmatch(key):
                raise APIError(400, f"runs: {quote_input(key)} is not an event key (1-"
                                    f"{MAX_KEY_LENGTH} characters, no spaces, '#' or ',')")
            keys[key] = None
            if len(keys) > MAX_RUNS:  # said at once, however many more were sent
                raise APIError(400, f"runs: at most {MAX_RUNS} event keys at a time")
    return list(keys)


def parse_server(segment: str) -> str:
    """The server name a path names (``default``: ""); 400 for one no server can have."""
    name = server_from_path(segment)
    if len(name) > MAX_SERVER_NAME or "/" in name or any(
            ord(c) < 32 or 127 <= ord(c) < 160 for c in name):
        raise APIError(400, f"{quote_input(segment)} is not a server name")
    return name


def stop_to_dict(session: Session) -> dict:
    """How an ended session's stop is told: its reason, when, and in words."""
    return {"reason": session.end_reason, "at": iso(session.ended_at),
            "message": END_REASONS.get(session.end_reason or "", OTHER_STOP)}


def thresholds_of(context: ServiceContext) -> list[int]:
    meter = context.meter
    if meter is None:
        return DEFAULT_THRESHOLDS
    return sorted(meter.warning_thresholds, reverse=True)


class StatusReader:
    """Reads servers' status for the polls, several polls to a statement under load.

    A poll's statement is sent at once while fewer than ``in_flight`` are out; polls
    that arrive meanwhile wait and go together in the next one (up to ``MAX_BATCH``,
    ``sessions.status.server_statuses``). A lone poll waits for nothing; at 1,000
    polls a second the database and the thread hop are paid once per batch instead of
    once per poll (``statements`` and ``polls`` count them).
    """

    def __init__(self, engine, clock, *, in_flight: int = 2, run=asyncio.to_thread):
        self.engine = engine
        self.clock = clock
        self.in_flight = in_flight
        #: How blocking work runs: in a thread, as ``APIHandler.run``.
        self.run = run
        self.statements = 0
        self.polls = 0
        self._pending: list[tuple[StatusRequest, asyncio.Future]] = []
        self._out = 0
        self._tasks: set[asyncio.Task] = set()

    async def read(self, request: StatusRequest) -> ServerStatus:
        future = asyncio.get_running_loop().create_future()
        self._pending.append((request, future))
        self.polls += 1
        if self._out < self.in_flight:
            self._send()
        return await future

    def _send(self) -> None:
        batch, self._pending = self._pending[:MAX_BATCH], self._pending[MAX_BATCH:]
        self._out += 1
        self.statements += 1
        task = asyncio.ensure_future(self._answer(batch))
        self._tasks.add(task)  # a task nothing refers to may be collected before it ends
        task.add_done_callback(self._tasks.discard)

    async def _answer(self, batch: list[tuple[StatusRequest, asyncio.Future]]) -> None:
        try:
            statuses = await self.run(server_statuses, self.engine,
                                      [request for request, _ in batch], self.clock())
        except Exception as error:  # noqa: BLE001 - each poll answers it (a 500, logged)
            for _, future in batch:
                if not future.done():
                    future.set_exception(error)
        else:
            for (_, future), status in zip(batch, statuses):
                if not future.done():  # its poll may have gone (client disconnected)
                    future.set_result(status)
        finally:
            self._out -= 1
            while self._pending and self._out < self.in_flight:
                self._send()


def status_answer(context: ServiceContext, user: str, server_name: str, status: ServerStatus,
                  outcomes: dict[str, dict], runs: list[str]) -> dict:
    """The answer of a poll, from what was read, but for ``earnings_today``."""
    now = context.clock()
    session, ended = status.open_session, status.ended_session
    balance = status.balance
    return {
        "user": user,
        "server": server_name,
        "server_label": server_label(server_name),
        "available": format_amount(balance.available if balance else 0),
        "reserved": format_amount(balance.reserved if balance else 0),
        "session": session_to_dict(session, now, notice=context.notices().get(session.key))
        if session is not None else None,
        "stop": stop_to_dict(ended) if ended is not None else None,
        "warning_thresholds": thresholds_of(context),
        "runs": [outcomes[key] for key in runs if key in outcomes],
        "now": iso(now),
    }


class ServerStatusAPIHandler(APIHandler):
    async def get(self, server: str):
        model = self.require_user()
        user = model["name"]
        self.require(READ, user=user, groups=model.get("groups") or ())
        server_name = parse_server(server)
        runs = parse_runs(self.get_query_arguments("runs"))
        try:
            account = user_account(user)
        except InvalidRequest as error:
            raise APIError(400, str(error)) from None
        context = self.credits
        status = await self.status_reader().read(StatusRequest(user, account, server_name))
        earning = context.earning
        today, outcomes = None, {}
        if earning is not None:
            # From memory when known (the steady state): no thread, no statement.
            try:
                today = earning.cached_today_json(user, earned=status.earned)
                if today is None:
                    today = await self.run(earning.today_json, user, earned=status.earned)
                if runs:
                    outcomes = earning.cached_outcomes(user, runs)
                    if len(outcomes) < len(runs):
                        outcomes = await self.run(earning.outcomes, user, runs)
            except EarningError as error:
                raise APIError(400, str(error)) from None
        answer = status_answer(context, user, server_name, status, outcomes, runs)
        # Today's earnings are kept as JSON text (EarningService.today_json): spliced in.
        self.set_status(200)
        self.finish(json.dumps(answer)[:-1] + ', "earnings_today": ' + (today or "null") + "}")

    def status_reader(self) -> StatusReader:
        """The application's one reader (made on first use, on the service's ledger)."""
        reader = self.settings.get(READER_SETTING)
        if reader is None:
            context = self.credits
            reader = self.settings[READER_SETTING] = StatusReader(context.ledger.engine,
                                                                  context.clock)
        return reader

    def compute_etag(self):
        # Every answer differs ("now", seconds_left): an ETag would only cost a hash of it.
        return None


default_handlers = [(r"/api/sessions/([^/]+)", ServerStatusAPIHandler)]
