"""Credits spawners for one machine: local processes on exclusively assigned GPUs."""

from __future__ import annotations

import asyncio
import threading

from jupyterhub.spawner import LocalProcessSpawner, SimpleLocalProcessSpawner
from traitlets import Unicode, observe

from ..sessions.allocator import CapacityError, LocalGpuAllocator
from ..sessions.inventory import ENV_VAR, gpu_environment, local_inventory
from .mixin import CreditsSpawner, refuse

_allocators: dict[tuple[str, str], LocalGpuAllocator] = {}
_lock = threading.Lock()


class LocalGpuMixin(CreditsSpawner):
    """GPU placement through the persisted local allocator and CUDA_VISIBLE_DEVICES."""

    local_gpus = Unicode(
        "",
        config=True,
        help=f"""This machine's GPUs as TYPE:INDEX pairs ("a100:0,a100:1"), types being
        catalog GPU type ids. ${ENV_VAR} overrides it; when both are empty the GPUs are
        discovered through NVML and typed by each catalog GPU type's local.match.
        The same setting as the credits service's ``CreditsService.local_gpus``.""",
    )

    gpus = Unicode(
        "",
        config=True,
        help="""The first name of ``local_gpus``, kept because configurations use it.
        Setting it sets ``local_gpus``.""",
    )

    @observe("gpus")
    def _gpus_is_local_gpus(self, change):
        # "gpus" is also the count of GPUs a session asks for; the inventory is local_gpus.
        self.local_gpus = change["new"]

    @property
    def allocator(self) -> LocalGpuAllocator:
        key = (self.credits_db_url, self.local_gpus)
        with _lock:
            allocator = _allocators.get(key)
            if allocator is None:
                context = self.credits
                inventory = local_inventory(context.catalog, self.local_gpus)
                allocator = LocalGpuAllocator(context.ledger.engine, inventory,
                                              clock=context.ledger.clock)
                self.log.info("credits: local GPUs: %s",
                              ", ".join(f"{g.gpu_type}:{g.index}" for g in inventory) or "none")
                _allocators[key] = allocator
            return allocator

    async def free_gpus(self):
        return await asyncio.to_thread(self.allocator.free)

    def gpu_totals(self):
        return self.allocator.total()

    async def place_on_gpus(self, session, request):
        if not request.uses_gpus:
            self._devices = []
            return
        try:
            chosen = await asyncio.to_thread(self.allocator.assign, session.id,
                                             request.gpu_type, request.gpus)
        except CapacityError as error:
            raise refuse(f"{request.gpu_label}: {error}", "capacity") from None
        self._devices = [gpu.device for gpu in chosen]
        self.log.info("credits: %s gets %s GPU(s) %s", self._log_name, request.gpu_type,
                      ",".join(self._devices))

    async def release_gpus(self, session):
        await asyncio.to_thread(self.allocator.release, session.id)

    def get_env(self):
        env = super().get_env()
        devices = getattr(self, "_devices", None)
        if devices is None and self.credits_session_key:
            session = self.credits.sessions.get(self.credits_session_key)
            devices = self.allocator.assigned(session.id) if session else []
        # An empty list hides every GPU: a CPU session must not use one it did not pay for.
        env.update(gpu_environment(devices or []))
        env["JUPYTERHUB_CREDITS_SESSION"] = self.credits_session_key
        return env


class CreditsLocalProcessSpawner(LocalGpuMixin, LocalProcessSpawner):
    """Each user's server as their own Unix account, on GPUs they paid for."""


class CreditsSimpleLocalProcessSpawner(LocalGpuMixin, SimpleLocalProcessSpawner):
    """Every server as the hub's own user (demo and tests: no isolation between users)."""
