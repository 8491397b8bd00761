"""What every part of the credits service shares: ledger, sessions, catalog, hub, earning, meter."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime

from ..catalog import Catalog
from ..earning import EarningService
from ..ledger import Ledger
from ..sessions.allocator import LocalGpuAllocator
from ..sessions.store import SessionStore
from .hub import HubClient


@dataclass
class ServiceContext:
    ledger: Ledger
    sessions: SessionStore
    catalog: Catalog
    hub: HubClient
    clock: Callable[[], datetime]
    #: This machine's GPU allocator (free counts); None where capacity is not known here.
    allocator: LocalGpuAllocator | None = None
    #: Events → outcomes → earned credits (the catalog's earning rules).
    earning: EarningService | None = None
    #: The meter (None when it is switched off, e.g. in a read-only replica).
    meter: object | None = None
    #: The background ``verify`` runs the admin panel starts (``api/verify.py``), made on first use.
    verify_runs: object | None = None
    #: Serialises session changes (extend, auto-extend, expiry) within the service.
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)

    def notices(self) -> dict[str, str]:
        return getattr(self.meter, "notices", {}) if self.meter is not None else {}
