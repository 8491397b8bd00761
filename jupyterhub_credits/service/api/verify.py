"""Admin: check the ledger's invariants in the background, and read the last result.

``POST /api/admin/verify`` starts ``ledger.verify.verify`` (aggregate queries over
every transfer: seconds on a large ledger) on a thread of its own unless a run is
under way, and answers at once: 202 ``{"state": "running", "started_at", ...}``.
``GET /api/admin/verify`` reports the latest run::

    {"state": "never" | "running" | "done" | "failed", "started_at", "finished_at",
     "ok": bool | null, "problems": ["<check>: <what is wrong>", ...], "transfers": n,
     "seconds": s}

``ok`` is true when no credit was lost, minted or spent twice; ``problems`` lists
up to 20 examples per failed check and how many there are in all. ``failed``
means the check itself could not finish (the service log says why). The state
lives in this service process (``ServiceContext.verify_runs``, made on first
use), so it starts as ``never`` after a restart. Both need ``custom:credits:admin``.
"""

from __future__ import annotations

import logging
import threading
from typing import Callable

from ...ledger.records import iso
from ...ledger.verify import VerifyReport, verify
from ..auth import ADMIN
from .base import APIHandler

log = logging.getLogger(__name__)


def problems_of(report: VerifyReport) -> list[str]:
    """Each failed check's examples as ``"<check>: <message>"``, and how many it found."""
    problems = []
    for name, check in report.checks.items():
        problems.extend(f"{name}: {example}" for example in check.examples)
        if check.problems > len(check.examples):
            problems.append(f"{name}: {check.problems} problems in all "
                            f"({len(check.examples)} shown)")
    return problems


class VerifyRuns:
    """The latest verify run of this process: at most one runs at a time."""

    def __init__(self, clock: Callable):
        self.clock = clock
        self._lock = threading.Lock()
        self._state = {"state": "never", "started_at": None, "finished_at": None, "ok": None,
                       "problems": [], "transfers": None, "seconds": None}
        self._thread: threading.Thread | None = None

    def snapshot(self) -> dict:
        with self._lock:
            return {**self._state, "problems": list(self._state["problems"])}

    def start(self, check: Callable[[], VerifyReport]) -> dict:
        """Run ``check`` on a new thread unless a run is under way; the state right after."""
        with self._lock:
            if self._state["state"] != "running":
                self._state = {"state": "running", "started_at": iso(self.clock()),
                               "finished_at": None, "ok": None, "problems": [],
                               "transfers": None, "seconds": None}
                self._thread = threading.Thread(target=self._run, args=(check,),
                                                name="credits-verify", daemon=True)
                self._thread.start()
            return {**self._state, "problems": list(self._state["problems"])}

    def _run(self, check: Callable[[], VerifyReport]) -> None:
        try:
            report = check()
        except Exception as error:  # noqa: BLE001 - reported, and logged with its traceback
            log.exception("ledger verify failed")
            outcome = {"state": "failed", "ok": None, "problems": [
                f"the check could not finish ({type(error).__name__}); see the service log"]}
        else:
            outcome = {"state": "done", "ok": report.ok, "problems": problems_of(report),
                       "transfers": report.transfers, "seconds": round(report.seconds, 3)}
        with self._lock:
            self._state.update(outcome, finished_at=iso(self.clock()))

    def join(self, timeout: float | None = None) -> None:
        """Wait for the current run (tests, shutdown)."""
        thread = self._thread
        if thread is not None:
            thread.join(timeout)


def verify_runs(context) -> VerifyRuns:
    """The context's ``VerifyRuns``, made on first use."""
    runs = getattr(context, "verify_runs", None)
    if runs is None:
        runs = context.verify_runs = VerifyRuns(context.clock)
    return runs


class VerifyAPIHandler(APIHandler):
    async def get(self):
        self.require(ADMIN)
        self.write_json(verify_runs(self.credits).snapshot())

    async def post(self):
        self.require(ADMIN)
        self.json_body(set())
        engine = self.credits.ledger.engine
        self.write_json(verify_runs(self.credits).start(lambda: verify(engine)), status=202)


default_handlers = [(r"/api/admin/verify", VerifyAPIHandler)]
