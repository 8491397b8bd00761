"""Exclusive GPU devices for sessions on one machine, persisted in the database.

A partial unique index (host, device) over live assignments makes handing one
device to two sessions impossible, across threads, processes and hub restarts.
"""

from __future__ import annotations

from collections import Counter

from sqlalchemy import insert, select, update
from sqlalchemy.exc import IntegrityError

from ..ledger import database
from .inventory import LocalGpu
from .schema import gpu_assignments


class CapacityError(Exception):
    """Not enough free GPUs of the requested type."""


class LocalGpuAllocator:
    def __init__(self, engine, inventory: list[LocalGpu], *, host: str = "local", clock):
        self.engine = engine
        self.inventory = inventory
        self.host = host
        self.clock = clock

    def _live_devices(self, conn) -> set[str]:
        return set(conn.execute(select(gpu_assignments.c.device).where(
            gpu_assignments.c.host == self.host,
            gpu_assignments.c.released_at.is_(None))).scalars())

    def free(self) -> dict[str, int]:
        """Free devices per GPU type (types with none free included, as 0)."""
        with database.read_transaction(self.engine) as conn:
            taken = self._live_devices(conn)
        counts = Counter({gpu.gpu_type: 0 for gpu in self.inventory})
        counts.update(gpu.gpu_type for gpu in self.inventory if gpu.device not in taken)
        return dict(counts)

    def total(self) -> dict[str, int]:
        return dict(Counter(gpu.gpu_type for gpu in self.inventory))

    def assign(self, session_id: int, gpu_type: str, count: int) -> list[LocalGpu]:
        """Take ``count`` free devices of ``gpu_type`` for the session, or raise CapacityError."""
        for _ in range(5):
            try:
                with database.write_transaction(self.engine) as conn:
                    taken = self._live_devices(conn)
                    free = [gpu for gpu in self.inventory
                            if gpu.gpu_type == gpu_type and gpu.device not in taken]
                    if len(free) < count:
                        raise CapacityError(
                            f"only {len(free)} {gpu_type} GPU(s) free, {count} requested")
                    chosen = free[:count]
                    conn.execute(insert(gpu_assignments), [
                        {"host": self.host, "gpu_type": gpu_type, "device": gpu.device,
                         "session_id": session_id, "assigned_at": self.clock()}
                        for gpu in chosen])
                return chosen
            except IntegrityError:
                continue  # another writer took one of them first: look again
        raise CapacityError(f"{gpu_type} GPUs are being taken concurrently; try again")

    def release(self, session_id: int) -> None:
        with database.write_transaction(self.engine) as conn:
            conn.execute(update(gpu_assignments).where(
                gpu_assignments.c.session_id == session_id,
                gpu_assignments.c.released_at.is_(None)).values(released_at=self.clock()))

    def assigned(self, session_id: int) -> list[str]:
        with database.read_transaction(self.engine) as conn:
            return list(conn.execute(select(gpu_assignments.c.device).where(
                gpu_assignments.c.session_id == session_id,
                gpu_assignments.c.released_at.is_(None)).order_by(gpu_assignments.c.id)).scalars())
