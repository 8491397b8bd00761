"""CreditsSpawner: pay for a notebook server with credits.

A mixin (configured as ``c.CreditsSpawner.…``) put in front of a concrete spawner (local process or KubeSpawner). In
``start`` it validates the request against the catalog, admits it (quota →
capacity → balance), holds the credits, places the server on GPUs, starts it
and marks the session ready once the server answers HTTP — billing runs from
then. Settlement happens in ``run_post_stop_hook``, which JupyterHub runs on
every way a server ends (user or admin stop, culler, meter expiry, a crash
found by poll, a hub restart that finds the server gone).
"""

from __future__ import annotations

import asyncio
import contextvars
import os
from datetime import datetime, timezone
from typing import NamedTuple

from jupyterhub.spawner import SpawnException
from jupyterhub.utils import url_path_join, wait_for_http_server
from sqlalchemy.exc import DBAPIError
from traitlets import Bool, Unicode, default
from traitlets.config import LoggingConfigurable

from ..catalog import (
    CPU_ONLY,
    InvalidUserOptions,
    admit,
    effective_quotas,
    hold_amount,
    pool_groups,
    validate_request,
)
from ..ledger import LedgerError
from ..ledger.core import user_account
from ..sessions.store import ConcurrentSessionLimit, SessionConflict
from .context import CreditsContext, shared_context
from .form import render_options_form, user_options_from_form

#: Set while this spawner's poll() runs, to tell its own clean-up from a stop by the hub.
_in_poll: contextvars.ContextVar[bool] = contextvars.ContextVar("credits_in_poll", default=False)

# HTTP statuses of admission refusals, for the REST API.
REFUSAL_STATUS = {"invalid": 400, "quota": 403, "balance": 402, "capacity": 503,
                  "start_failed": 500, "database": 503, "image_unavailable": 503}


class Unavailable(NamedTuple):
    """Why an image cannot run where this spawner runs servers."""

    label: str  # beside the image on the spawn form, e.g. "not installed on this machine"
    message: str  # the refusal of a start, naming what fixes it


def refuse(message: str, reason: str) -> SpawnException:
    """A SpawnException whose message reaches both the spawn page and the REST API."""
    error = SpawnException(message, reason=reason, status_code=REFUSAL_STATUS.get(reason, 400))
    # The spawn-pending page and its reload read these, not the exception's message.
    error.jupyterhub_message = message
    error.jupyterhub_html_message = None
    return error


def database_unavailable(error: DBAPIError) -> str:
    """What a person is told when the credits database failed during their start (a full
    disk, a restarted or unreachable server): not a stack trace, and that it cost nothing."""
    text = str(error.orig or error).lower()
    if "full" in text or "no space" in text:
        why = "its disk is full"
    elif error.connection_invalidated or "connect" in text or "terminat" in text:
        why = "the connection to it was lost"
    else:
        why = "it did not answer"
    return (f"The credits database is unavailable right now ({why}), so the server was not "
            "started. Nothing was charged. Try again in a moment.")


def utcnow() -> datetime:
    return datetime.now(timezone.utc)


class CreditsSpawner(LoggingConfigurable):
    """Admission, holds, billing and settlement around any spawner's start/stop.

    Not a spawner by itself: concrete classes put it first in their bases, e.g.
    ``class CreditsLocalProcessSpawner(CreditsSpawner, LocalProcessSpawner)``.
    """

    credits_db_url = Unicode(
        config=True,
        help="""Database URL of the credits ledger (SQLite or PostgreSQL).

        Default: $JUPYTERHUB_CREDITS_DB_URL, else sqlite:///jupyterhub_credits.sqlite.
        The credits service must use the same database.""",
    )

    @default("credits_db_url")
    def _default_db_url(self):
        return os.environ.get("JUPYTERHUB_CREDITS_DB_URL", "sqlite:///jupyterhub_credits.sqlite")

    catalog_path = Unicode(
        config=True,
        help="""Path of the catalog YAML file (images, GPU types, prices, quotas).

        Default: $JUPYTERHUB_CREDITS_CATALOG, else config/catalog.yaml. An invalid
        catalog stops the hub at start-up with a message naming the file and key.""",
    )

    @default("catalog_path")
    def _default_catalog_path(self):
        return os.environ.get("JUPYTERHUB_CREDITS_CATALOG", "config/catalog.yaml")

    credits_ready_check = Bool(
        True,
        config=True,
        help="""Start billing only once the server answers HTTP (its /api), not when the
        process or pod exists. Turn off only where the hub cannot reach the server.""",
    )

    credits_session_key = Unicode("", help="The open session's key (persisted in state).")

    # --- shared, process-wide resources ---------------------------------------

    @property
    def credits(self) -> CreditsContext:
        return shared_context(self.credits_db_url, self.catalog_path)

    def clock(self) -> datetime:
        return self.credits.ledger.clock()

    # --- state -------------------------------------------------------------------

    def load_state(self, state):
        super().load_state(state)
        self.credits_session_key = state.get("credits_session_key", "")

    def get_state(self):
        state = super().get_state()
        if self.credits_session_key:
            state["credits_session_key"] = self.credits_session_key
        return state

    # clear_state() keeps the session key on purpose: LocalProcessSpawner.poll()
    # clears state as soon as it sees the process gone, before the hub runs the
    # post-stop hook that must still settle the session.

    # --- the spawn form -------------------------------------------------------------

    def _default_options_form(self, spawner):
        return render_options_form(self)

    @default("options_form")
    def _options_form_default(self):
        return self._default_options_form

    def options_from_form(self, formdata):
        return user_options_from_form(formdata)

    @default("apply_user_options")
    def _apply_user_options_default(self):
        # Checked here, before anything is held, so a bad request is a clean 400;
        # start() checks again because a hub may be configured to skip this hook.
        return _check_user_options

    # --- capacity (overridden by each concrete spawner) ------------------------------

    async def free_gpus(self) -> dict[str, int] | None:
        """GPUs free right now per GPU type; None where it cannot be known."""
        raise NotImplementedError

    async def place_on_gpus(self, session, request) -> None:
        """Give the server its GPUs (allocation, limits, selectors) before it starts."""
        raise NotImplementedError

    async def release_gpus(self, session) -> None:
        """Give the session's GPUs back once its server is gone."""

    # --- images (a local spawner overrides these: there an image is installed or not) ---

    def image_unavailable(self, image_id: str) -> Unavailable | None:
        """Why ``image_id`` cannot run here; None when it can. By default every catalog
        image is available (KubeSpawner pulls it onto the node)."""
        return None

    def use_image(self, image_id: str) -> None:
        """Called once a start is admitted, just before the server starts: run ``image_id``."""

    # --- paying account ---------------------------------------------------------------

    def _group_names(self) -> list[str]:
        return sorted(group.name for group in getattr(self.user, "groups", []))

    def paying_account(self, hold_units: int) -> tuple[str, int]:
        """(account, available units): a group pool that covers the hold pays first."""
        ledger = self.credits.ledger
        for group in pool_groups(self.credits.catalog, self._group_names()):
            available = ledger.available(f"group:{group}")
            if available >= hold_units:
                return f"group:{group}", available
        own = user_account(self.user.name)
        return own, ledger.available(own)

    # --- start -------------------------------------------------------------------------

    async def start(self):
        self._starting = True
        try:
            return await self._admit_and_start()
        except DBAPIError as error:
            # Whatever was held is voided by the start's own clean-up or, if the database
            # is still failing then, by the meter's reconciliation of the open session.
            self.log.warning("credits: the credits database failed while starting %s: %s",
                             self._log_name, error.orig or error)
            raise refuse(database_unavailable(error), "database") from None
        finally:
            self._starting = False

    async def _admit_and_start(self):
        context = self.credits
        try:
            request = validate_request(context.catalog, self.user_options)
        except InvalidUserOptions as error:
            raise refuse(str(error), "invalid") from None
        # Before anything is held or assigned: such a start could only fail.
        unavailable = self.image_unavailable(request.image)
        if unavailable is not None:
            self.log.warning("credits: refused %s for %s: %s", request.image, self._log_name,
                             unavailable.message)
            raise refuse(unavailable.message, "image_unavailable")
        sessions = context.sessions

        # A session left open by a start the hub never finished (a crash) ends first.
        stale = await asyncio.to_thread(sessions.open_session, self.user.name, self.name)
        if stale is not None:
            await self._settle(stale.key, "replaced", ended_now=False)

        quotas = effective_quotas(context.catalog, self._group_names())
        free = await self.free_gpus() if request.uses_gpus else None
        wanted = hold_amount(request.rate_per_hour, request.hours)
        try:
            account, available = await asyncio.to_thread(self.paying_account, wanted)
        except LedgerError as error:  # a hub name that cannot have an account
            raise refuse(str(error), "invalid") from None
        running = await asyncio.to_thread(sessions.running_gpu_sessions, self.user.name)
        decision = admit(request, quotas=quotas, running_gpu_sessions=running,
                         free_gpus=free, available_units=available)
        if not decision.ok:
            self.log.info("credits: refused %s for %s: %s", request.user_options(),
                          self._log_name, decision.message)
            raise refuse(decision.message, decision.reason)

        try:
            session = await asyncio.to_thread(
                sessions.start, user=self.user.name, server_name=self.name, account=account,
                image=request.image, gpu_type=request.gpu_type, gpus=request.gpus,
                rate_per_hour=request.rate_per_hour, hold_units=decision.hold_units,
                # Counted again with the insert, under a lock: the count admission read
                # does not see a concurrent start of another of the user's servers.
                max_concurrent_gpu_sessions=quotas.max_concurrent_gpu_sessions,
                actor=user_account(self.user.name))
        except ConcurrentSessionLimit as error:
            raise refuse(str(error), "quota") from None
        except SessionConflict as error:
            raise refuse(str(error), "invalid") from None
        except LedgerError as error:  # e.g. the balance changed since admission
            raise refuse(str(error), "balance") from None
        self.credits_session_key = session.key
        self.log.info("credits: %s holds %s units for %s (session %s)", account,
                      decision.hold_units, self._log_name, session.key)
        try:
            self.use_image(request.image)
            await self.place_on_gpus(session, request)
            started = await super().start()
            self._save_state_now()
            url = _as_url(started)
            if self.credits_ready_check:
                await self._wait_until_answering(url)
            await asyncio.to_thread(sessions.mark_ready, session.key)
            return started
        except BaseException:
            # A failed or cancelled start costs nothing: void the hold, free the GPUs.
            await self._settle(session.key, "start_failed", ended_now=False)
            raise

    def _save_state_now(self) -> None:
        """Record the new process (its pid, its pod) in the hub's database at once.

        The hub stores a spawner's state only when start() returns, and this start
        returns only once the server answers, seconds later: a hub killed in between
        would lose the process, which would run on, unknown, on GPUs the allocator then
        gives to someone else. Stored now, the restarted hub finds it (see ``poll``).
        """
        orm_spawner, db = getattr(self, "orm_spawner", None), getattr(self, "db", None)
        if orm_spawner is None or db is None:
            return
        orm_spawner.state = self.get_state()
        db.commit()

    async def _wait_until_answering(self, url: str) -> None:
        """Wait for the server's /api to answer; fail at once if the server dies first."""
        api = url_path_join(url, self.server.base_url if self.server else "/", "api")
        answering = asyncio.ensure_future(wait_for_http_server(api, timeout=self.http_timeout))
        try:
            while not answering.done():
                status = await self.poll()
                if status is not None:
                    raise refuse(f"The server exited (status {status}) before it was ready. "
                                 "Nothing was charged.", "start_failed")
                await asyncio.wait([answering], timeout=0.5)
            answering.result()
        finally:
            answering.cancel()

    # --- stop and settlement ---------------------------------------------------------------

    _stopped_by_hub = False
    _starting = False  # this object's start() is under way
    _interrupted_start_checked = False

    async def poll(self):
        token = _in_poll.set(True)
        try:
            status = await super().poll()
            if status is None and not self._starting and not self._interrupted_start_checked:
                status = await self._end_interrupted_start()
            return status
        finally:
            _in_poll.reset(token)

    async def _end_interrupted_start(self) -> int | None:
        """Once per spawner object, outside its own start: a server whose session never
        became ready was being started by a hub that died (a restarted hub polls it
        first). It never answered for this hub and is not paid for: stop it, and say
        it is gone (1) so that the hub settles its session (nothing charged). None: fine."""
        key = self.credits_session_key
        if not key:
            self._interrupted_start_checked = True
            return None
        try:
            session = await asyncio.to_thread(self.credits.sessions.get, key)
        except Exception:  # noqa: BLE001 - asked again at the next poll
            self.log.exception("credits: could not read %s's session %s", self._log_name, key)
            return None
        self._interrupted_start_checked = True
        if session is None or session.state != "starting":
            return None
        self.log.warning("credits: %s was still starting when the hub stopped; stopping it "
                         "(session %s, nothing charged)", self._log_name, key)
        await super().stop(now=True)
        return 1

    async def stop(self, now=False):
        await super().stop(now=now)
        # A spawner's own poll may clean up a server that ended by itself (KubeSpawner
        # deletes stopped pods): that is a server gone, not one the hub stopped.
        if not _in_poll.get():
            self._stopped_by_hub = True

    async def run_post_stop_hook(self):
        key = self.credits_session_key
        if key:
            # When the hub stopped it, it ended now; when the hub only found it gone
            # (a crash, or while the hub was down), it ended at the last billed tick.
            await self._settle(key, "stopped" if self._stopped_by_hub else "server_gone",
                               ended_now=self._stopped_by_hub)
        self.credits_session_key = ""
        self._stopped_by_hub = False
        return super().run_post_stop_hook()

    async def _settle(self, key: str, reason: str, *, ended_now: bool) -> None:
        """Settle the session; ``ended_now`` False means it ended at its last billed tick."""
        sessions = self.credits.sessions
        session = await asyncio.to_thread(sessions.get, key)
        if session is None:
            return
        end = None if ended_now or session.billed_until is None else session.billed_until
        try:
            settled = await asyncio.to_thread(sessions.settle, key, reason=reason, end=end,
                                              actor="system:spawner")
        except Exception:  # noqa: BLE001 - never let settlement break the hub's stop
            self.log.exception("credits: settling %s failed; the meter will retry", key)
            return
        await self.release_gpus(settled)
        self.log.info("credits: session %s ended (%s), charged %s units", key,
                      settled.end_reason, settled.charged)


def _check_user_options(spawner, user_options) -> None:
    try:
        validate_request(spawner.credits.catalog, user_options)
    except InvalidUserOptions as error:
        raise refuse(str(error), "invalid") from None


def _as_url(started) -> str:
    if isinstance(started, tuple):
        ip, port = started
        return f"http://{ip or '127.0.0.1'}:{port}"
    return started


__all__ = ["CPU_ONLY", "CreditsSpawner", "Unavailable", "refuse"]
