"""The meter: every few seconds, bill running sessions, warn, auto-extend, stop what is unpaid.

Modelled on jupyterhub-idle-culler: a ``PeriodicCallback`` in the service's
event loop, REST calls to the hub through Tornado's async HTTP client, small
pure helpers for every decision. One module per job, ``Meter`` coordinating:

- ``core.py`` — ``Meter``: the configuration (``c.Meter.…``), the tick, the
  lock shared with the API's extend, the meter's own database threads;
- ``expiry.py`` — warnings before the paid time ends, settlement at its end;
- ``autoextend.py`` — more time for sessions that opted in;
- ``idle.py`` — servers whose GPUs stayed idle (off unless configured);
- ``stops.py`` — the queue of servers to stop, retried until the hub confirms;
- ``reconcile.py`` — open sessions against the servers the hub really runs.

Time comes from an injected clock (the ledger's, or a test's fake one).
"""

from .autoextend import wants_auto_extend
from .common import METER_ACTOR, server_label
from .core import Meter, TickReport
from .expiry import due_warnings, is_expired, seconds_left
from .idle import IDLE_CHECK_EVERY, IDLE_COVERAGE, gpus_idle
from .reconcile import ReconcilePlan, Sighting, plan_reconciliation
from .stops import PendingStop

__all__ = ["IDLE_CHECK_EVERY", "IDLE_COVERAGE", "METER_ACTOR", "Meter", "PendingStop",
           "ReconcilePlan", "Sighting", "TickReport", "due_warnings",
           "gpus_idle", "is_expired", "plan_reconciliation", "seconds_left", "server_label",
           "wants_auto_extend"]
