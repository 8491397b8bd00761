"""Spawners whose server is up the moment it is asked for (no process at all).

With CreditsSpawner in front, they exercise exactly the credits work of a
spawn (admission, hold, GPU assignment, settlement) without starting servers:
used by the spawner tests and bench/spawn.py.
"""

from __future__ import annotations

from types import SimpleNamespace

from jupyterhub.objects import Hub
from jupyterhub.spawner import Spawner

from jupyterhub_credits.spawner.local import LocalGpuMixin


class InstantSpawner(Spawner):
    running = False

    async def start(self):
        self.running = True
        return ("127.0.0.1", 1)

    async def poll(self):
        return None if self.running else 0

    async def stop(self, now=False):
        self.running = False


class CreditsInstantSpawner(LocalGpuMixin, InstantSpawner):
    pass


def credits_spawner(db_url: str, catalog_path, user: str, *, groups=(), server: str = "",
                    local_gpus: str = "a100:0,a100:1,a100:2,a100:3",
                    user_options: dict | None = None) -> CreditsInstantSpawner:
    """A CreditsInstantSpawner for ``user`` outside any hub: the hub's objects as plain stand-ins.

    Billing starts at once (no HTTP check: there is no server to answer).
    """
    spawner = CreditsInstantSpawner(
        user=SimpleNamespace(name=user, groups=[SimpleNamespace(name=g) for g in groups],
                             url=f"/user/{user}/"),
        hub=Hub(), db=None,
        orm_spawner=SimpleNamespace(name=server, display_name=server, user_options={}, state=None,
                                    server=None))
    spawner.credits_db_url = db_url
    spawner.catalog_path = str(catalog_path)
    spawner.credits_ready_check = False
    spawner.local_gpus = local_gpus
    spawner.user_options = user_options or {}
    return spawner
