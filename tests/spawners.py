"""Spawners whose server is up the moment it is asked for (no process at all).

With CreditsSpawner in front, they exercise exactly the credits work of a
spawn (admission, hold, GPU assignment, settlement) without starting servers:
used by tests/test_spawner.py and bench/spawn.py.
"""

from __future__ import annotations

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
