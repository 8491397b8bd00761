"""What the meter's jobs share: who they act as, how they name a server, the base of a job."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:  # pragma: no cover - for type names only; core imports the jobs
    from .core import Meter

#: The actor of every ledger change the meter makes.
METER_ACTOR = "system:meter"


def server_label(user: str, server_name: str) -> str:
    """How logs and messages name a server: ``alice`` or ``alice/gpu``."""
    return f"{user}/{server_name}" if server_name else user


class MeterJob:
    """One of the meter's jobs: its own state, the meter's configuration and connections.

    The ``Meter`` holds the traits (``c.Meter.…``), the lock, the clock and the
    database executor; a job reads them through ``self.meter``.
    """

    def __init__(self, meter: Meter):
        self.meter = meter

    @property
    def sessions(self):
        return self.meter.sessions

    @property
    def hub(self):
        return self.meter.hub

    @property
    def log(self):
        return self.meter.log

    @property
    def notices(self) -> dict[str, str]:
        return self.meter.notices

    async def db(self, function, *args, **kwargs):
        """Database work on the meter's own threads (see ``Meter.db``)."""
        return await self.meter.db(function, *args, **kwargs)
