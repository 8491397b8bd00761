"""What GPUs a single machine has: declared, or discovered through NVML.

``JUPYTERHUB_CREDITS_LOCAL_GPUS="A100:0,A100:1"`` (GPU type : device index)
declares the inventory and overrides everything else; then the spawner's own
configuration; then NVML, when nvidia-ml-py and a driver are present, whose
device names are matched against each catalog GPU type's ``local.match``.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass

log = logging.getLogger(__name__)

ENV_VAR = "JUPYTERHUB_CREDITS_LOCAL_GPUS"


@dataclass(frozen=True)
class LocalGpu:
    gpu_type: str  # a catalog GPU type id
    index: int  # the CUDA / NVML device index
    uuid: str | None = None  # NVML's GPU-... identifier, when known
    name: str = ""

    @property
    def device(self) -> str:
        """How CUDA_VISIBLE_DEVICES names it: the UUID when known (stable), else the index."""
        return self.uuid or str(self.index)


class InventoryError(ValueError):
    """A declared GPU list that cannot be read; names the source."""


def parse_declared(text: str, gpu_types, *, source: str = ENV_VAR) -> list[LocalGpu]:
    """Parse ``"A100:0,A100:1,t4:2"``; types are catalog ids, matched case-insensitively."""
    by_lower = {gpu_type.lower(): gpu_type for gpu_type in gpu_types}
    gpus: list[LocalGpu] = []
    seen: set[int] = set()
    for item in filter(None, (part.strip() for part in text.split(","))):
        gpu_type, sep, index = item.rpartition(":")
        if not sep or not gpu_type or not index.isdigit():
            raise InventoryError(f"{source}: {item!r} is not TYPE:INDEX (e.g. A100:0)")
        if gpu_type.lower() not in by_lower:
            raise InventoryError(f"{source}: unknown GPU type {gpu_type!r}; the catalog has "
                                 f"{', '.join(sorted(gpu_types))}")
        if int(index) in seen:
            raise InventoryError(f"{source}: device {index} is listed twice")
        seen.add(int(index))
        gpus.append(LocalGpu(by_lower[gpu_type.lower()], int(index)))
    return gpus


def discover_nvml(match_by_type: dict[str, str]) -> list[LocalGpu]:
    """GPUs NVML sees, typed by the first catalog ``local.match`` their name contains."""
    try:
        import pynvml
    except ImportError:
        return []
    try:
        pynvml.nvmlInit()
    except Exception as error:  # noqa: BLE001 - no driver, no GPUs: CPU-only is fine
        log.info("NVML not available (%s): no local GPUs", error)
        return []
    gpus = []
    try:
        for index in range(pynvml.nvmlDeviceGetCount()):
            handle = pynvml.nvmlDeviceGetHandleByIndex(index)
            name = _text(pynvml.nvmlDeviceGetName(handle))
            uuid = _text(pynvml.nvmlDeviceGetUUID(handle))
            gpu_type = next((gpu_type for gpu_type, match in match_by_type.items()
                             if match and match.lower() in name.lower()), None)
            if gpu_type is None:
                log.warning("GPU %d (%s) matches no catalog GPU type: not offered", index, name)
                continue
            gpus.append(LocalGpu(gpu_type, index, uuid, name))
    finally:
        pynvml.nvmlShutdown()
    return gpus


def _text(value) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def local_inventory(catalog, declared: str | None = None) -> list[LocalGpu]:
    """The machine's GPUs by the precedence in the module docstring."""
    env = os.environ.get(ENV_VAR)
    if env is not None:
        return parse_declared(env, catalog.gpu_types)
    if declared:
        return parse_declared(declared, catalog.gpu_types, source="CreditsLocalProcessSpawner.local_gpus")
    matches = {gpu_id: (gpu.local.match if gpu.local else "")
               for gpu_id, gpu in catalog.gpu_types.items()}
    return discover_nvml(matches)


def gpu_environment(devices: list[str]) -> dict[str, str]:
    """Environment that confines a server to ``devices`` (an empty list hides every GPU)."""
    return {
        "CUDA_VISIBLE_DEVICES": ",".join(devices),
        "NVIDIA_VISIBLE_DEVICES": ",".join(devices) if devices else "void",
    }
