"""Credits spawners for one machine: local processes on exclusively assigned GPUs, each
running the chosen image's own environment (a virtualenv, see jupyterhub_credits.envs)."""

from __future__ import annotations

import asyncio
import os
import sys
import threading
from pathlib import Path

from jupyterhub.spawner import LocalProcessSpawner, SimpleLocalProcessSpawner
from traitlets import Dict, Unicode, default, observe

from .. import envs
from ..sessions.allocator import CapacityError, LocalGpuAllocator
from ..sessions.inventory import ENV_VAR, gpu_environment, local_inventory
from .mixin import CreditsSpawner, Unavailable, refuse

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


class LocalEnvironmentMixin(CreditsSpawner):
    """The chosen image's environment runs the server: its ``jupyterhub-singleuser``, with
    its ``bin`` first on PATH so that kernels and terminals use its Python too."""

    envs_dir = Unicode(
        config=True,
        help=f"""Where each catalog image's environment is: ``<envs_dir>/<image id>``, a
        virtualenv made by ``jupyterhub-credits envs build`` (whose default is the same).
        An image whose environment has no ``bin/jupyterhub-singleuser`` is marked "not
        installed on this machine" on the spawn form and refused at start (503).

        Default: ${envs.ENVS_DIR_ENV}, else {envs.DEFAULT_ENVS_DIR}. The directory must be
        readable by every user whose server runs from it.""",
    )

    @default("envs_dir")
    def _default_envs_dir(self):
        return envs.default_envs_dir()

    image_environments = Dict(
        key_trait=Unicode(),
        value_trait=Unicode(),
        config=True,
        help="""Environments of your own choosing, by image id (a virtualenv's prefix, e.g.
        ``{"tf-2.21": "/opt/conda/envs/tf"}``), instead of ``<envs_dir>/<image id>``. The key
        ``"*"`` stands for every image not listed: ``{"*": sys.prefix}`` runs every image in
        the hub's own environment (the demo does; the spawn page then says so).""",
    )

    _environment: Path | None = None  # of the server being started or running

    def image_environment(self, image_id: str) -> Path:
        return envs.environment_path(image_id, self.envs_dir, self.image_environments)

    def image_unavailable(self, image_id: str) -> Unavailable | None:
        environment = self.image_environment(image_id)
        if envs.is_runnable(environment):
            return None
        image = self.credits.catalog.images[image_id]
        return Unavailable(envs.NOT_INSTALLED, envs.not_installed_message(
            image.display_name, image_id, environment, self.envs_dir))

    def use_image(self, image_id: str) -> None:
        """Spawner.cmd's ``jupyterhub-singleuser`` (by any path) becomes the environment's
        own; its arguments stay. Another program (a wrapper of the deployment's own) is left
        as it is, and finds the environment's programs first on PATH."""
        self._environment = self.image_environment(image_id)
        program, *arguments = self.cmd or [envs.SERVER_PROGRAM.name]
        if Path(program).name == envs.SERVER_PROGRAM.name:
            self.cmd = [str(envs.server_program(self._environment)), *arguments]
        self.log.info("credits: %s runs %s from %s", self._log_name, image_id, self._environment)

    def get_env(self):
        env = super().get_env()
        if self._environment is not None:
            env["PATH"] = os.pathsep.join([str(self._environment / "bin"),
                                           env.get("PATH") or os.defpath])
            env["VIRTUAL_ENV"] = str(self._environment)
        return env

    def images_note(self) -> str:
        """Words for the spawn page when images run in the hub's own environment, whose
        TensorFlow is not the version their names promise."""
        catalog = self.credits.catalog
        in_hub = [image for image_id, image in catalog.images.items()
                  if envs.same_environment(self.image_environment(image_id), sys.prefix)]
        if not in_hub:
            return ""
        version = envs.installed_version(Path(sys.prefix))
        tensorflow = f"TensorFlow {version}" if version else "no TensorFlow"
        if len(in_hub) == len(catalog.images):
            return (f"On this hub every image runs in the hub's own Python environment "
                    f"({tensorflow}) — the version in an image's name is not what you get.")
        names = ", ".join(image.display_name for image in in_hub)
        return (f"On this hub {names} {'runs' if len(in_hub) == 1 else 'run'} in the hub's own "
                f"Python environment ({tensorflow}), whatever the version in the name.")


class CreditsLocalProcessSpawner(LocalEnvironmentMixin, LocalGpuMixin, LocalProcessSpawner):
    """Each user's server as their own Unix account, on GPUs they paid for."""


class CreditsSimpleLocalProcessSpawner(CreditsLocalProcessSpawner, SimpleLocalProcessSpawner):
    """Every server as the hub's own user (demo and tests: no isolation between users).

    A subclass of CreditsLocalProcessSpawner, so that ``c.CreditsLocalProcessSpawner.…``
    (envs_dir, local_gpus…) configures both.
    """
