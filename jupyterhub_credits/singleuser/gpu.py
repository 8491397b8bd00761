"""GPU sampler: NVML utilisation and memory of this server's GPUs, summarised per minute.

NVML enumerates every GPU of the machine whatever ``CUDA_VISIBLE_DEVICES`` says, so
:func:`visible_gpus` maps the devices this server may use to NVML handles by UUID,
following CUDA's rules: unset → every GPU; empty → none; a comma-separated list of
indices or ``GPU-<uuid>`` entries (a unique UUID prefix is enough), read up to the
first entry CUDA would reject (unknown, ambiguous, repeated). Indices are taken in
NVML's (PCI bus) order, which is CUDA's only under ``CUDA_DEVICE_ORDER=PCI_BUS_ID``:
our spawners pass UUIDs, which are unambiguous. ``MIG-`` entries are skipped (not
sampled). An event's ``index`` is the device's position in the server's view (what
``torch.cuda.device(i)`` means there).

The I/O (:func:`read_samples`, :class:`GpuSampler`) is separate from the pure
summary (:func:`summarise_minutes`), which the tests feed with synthetic samples.
Events: ``gpu_utilization`` with ``{"minute": ISO, "gpus": [{"index", "util",
"mem_used_mb"}]}`` (mean utilisation in %, peak memory used in MiB) and the key
``gpu_utilization:<server>:<minute>``, so a minute is never counted twice.
"""

from __future__ import annotations

import logging
import math
import os
import threading
import time
from collections import defaultdict, deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import datetime, timezone

log = logging.getLogger(__name__)

EVENT_KIND = "gpu_utilization"
#: Finished minutes kept for the panel's sparkline (``GpuSampler.history``).
HISTORY_MINUTES = 60


@dataclass(frozen=True)
class VisibleGpu:
    index: int  # position as this server's processes see it (CUDA index)
    nvml_index: int
    uuid: str
    handle: object


@dataclass(frozen=True)
class GpuSample:
    time: float  # seconds since the epoch
    index: int
    util: float  # percent
    mem_used_mb: float


def _text(value) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def visible_gpus(nvml, cuda_visible_devices: str | None) -> list[VisibleGpu]:
    """The GPUs this server may use, as NVML handles (NVML already initialised)."""
    devices = []
    for nvml_index in range(nvml.nvmlDeviceGetCount()):
        handle = nvml.nvmlDeviceGetHandleByIndex(nvml_index)
        devices.append((nvml_index, _text(nvml.nvmlDeviceGetUUID(handle)), handle))
    if cuda_visible_devices is None:
        return [VisibleGpu(i, i, uuid, handle) for i, uuid, handle in devices]
    chosen: list[VisibleGpu] = []
    used: set[int] = set()
    for entry in (part.strip() for part in cuda_visible_devices.split(",")):
        if entry.startswith("MIG-"):
            log.info("credits: MIG device %s is not sampled", entry)
            continue
        if entry.isdigit():
            matches = [d for d in devices if d[0] == int(entry)]
        elif entry.upper().startswith("GPU-"):
            matches = [d for d in devices if d[1].lower().startswith(entry.lower())]
        else:
            matches = []
        if len(matches) != 1 or matches[0][0] in used:
            break  # CUDA ignores this entry and every one after it
        nvml_index, uuid, handle = matches[0]
        used.add(nvml_index)
        chosen.append(VisibleGpu(len(chosen), nvml_index, uuid, handle))
    return chosen


def read_samples(nvml, gpus: Iterable[VisibleGpu], now: float | None = None) -> list[GpuSample]:
    """One sample per GPU: NVML utilisation (%, over its last sample period) and memory used."""
    now = time.time() if now is None else now
    samples = []
    for gpu in gpus:
        util = nvml.nvmlDeviceGetUtilizationRates(gpu.handle).gpu
        mem = nvml.nvmlDeviceGetMemoryInfo(gpu.handle).used
        samples.append(GpuSample(now, gpu.index, float(util), mem / 2**20))
    return samples


def minute_iso(minute_start: float) -> str:
    return datetime.fromtimestamp(minute_start, timezone.utc).isoformat(timespec="seconds")


def summarise_minutes(samples: Iterable[GpuSample], *, before: float | None = None
                      ) -> tuple[list[dict], list[GpuSample]]:
    """Group samples by UTC minute into event payloads.

    Only minutes that ended by ``before`` (a time; None: every minute) are
    summarised; the samples of later minutes come back to be kept. Payloads are in
    time order, GPUs by index: ``util`` the mean utilisation (one decimal),
    ``mem_used_mb`` the peak memory used (whole MiB).
    """
    cutoff = math.inf if before is None else math.floor(before / 60) * 60
    buckets: dict[int, dict[int, list[GpuSample]]] = defaultdict(lambda: defaultdict(list))
    rest: list[GpuSample] = []
    for sample in samples:
        minute = math.floor(sample.time / 60) * 60
        if minute >= cutoff:
            rest.append(sample)
        else:
            buckets[minute][sample.index].append(sample)
    payloads = []
    for minute in sorted(buckets):
        gpus = []
        for index in sorted(buckets[minute]):
            group = buckets[minute][index]
            gpus.append({"index": index,
                         "util": round(sum(s.util for s in group) / len(group), 1),
                         "mem_used_mb": round(max(s.mem_used_mb for s in group))})
        payloads.append({"minute": minute_iso(minute), "gpus": gpus})
    return payloads, rest


def event_key(server_id: str, payload: dict) -> str:
    return f"{EVENT_KIND}:{server_id}:{payload['minute']}"


def load_nvml():
    """``pynvml`` (nvidia-ml-py), initialised; None where it or a driver is missing."""
    try:
        import pynvml
    except ImportError:
        return None
    try:
        pynvml.nvmlInit()
    except Exception as error:  # noqa: BLE001 - NVMLError_LibraryNotFound, DriverNotLoaded, ...
        log.info("credits: NVML unavailable (%s); no GPU sampling", error)
        return None
    return pynvml


class GpuSampler:
    """Samples every ``interval`` seconds in a thread; hands each finished minute on.

    ``reporter`` gets a ``gpu_utilization`` event per minute (if given);
    ``on_summary(payload)`` is called too (if given). ``stop()`` summarises the
    minute in progress as well.
    """

    def __init__(self, nvml, gpus: list[VisibleGpu], *, reporter=None, server_id: str = "server",
                 interval: float = 5.0, on_summary: Callable[[dict], None] | None = None,
                 clock: Callable[[], float] = time.time):
        self.nvml = nvml
        self.gpus = gpus
        self.reporter = reporter
        self.server_id = server_id
        self.interval = interval
        self.on_summary = on_summary
        self.clock = clock
        self.latest: dict | None = None  # the last finished minute
        # The last hour of minute summaries, oldest first: bounded so a server that runs
        # for weeks keeps a constant amount.
        self.history: deque[dict] = deque(maxlen=HISTORY_MINUTES)
        self.errors = 0
        self._samples: list[GpuSample] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @classmethod
    def from_environment(cls, nvml=None, **kwargs) -> GpuSampler | None:
        """A sampler for the GPUs ``CUDA_VISIBLE_DEVICES`` gives this server; None if none."""
        nvml = nvml or load_nvml()
        if nvml is None:
            return None
        try:
            gpus = visible_gpus(nvml, os.environ.get("CUDA_VISIBLE_DEVICES"))
        except Exception as error:  # noqa: BLE001
            log.warning("credits: could not list GPUs through NVML: %s", error)
            return None
        if not gpus:
            return None
        return cls(nvml, gpus, **kwargs)

    def start(self) -> GpuSampler:
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="credits-gpu-sampler",
                                            daemon=True)
            self._thread.start()
        return self

    def sample_once(self) -> list[dict]:
        """Take one sample now and hand on the minutes that are over; their payloads."""
        now = self.clock()
        try:
            new = self.read(now)
        except Exception as error:  # noqa: BLE001 - a GPU fallen off the bus, a driver reload
            self.errors += 1
            if self.errors in (1, 10, 100):
                log.warning("credits: GPU sampling failed (%d times): %s", self.errors, error)
            new = []
        with self._lock:
            self._samples.extend(new)
            payloads, self._samples = summarise_minutes(self._samples, before=now)
        self._emit(payloads)
        return payloads

    def read(self, now: float) -> list[GpuSample]:
        """One sample per GPU (the NVML I/O; a subclass may watch it)."""
        return read_samples(self.nvml, self.gpus, now)

    def stop(self, timeout: float = 5.0) -> list[dict]:
        """Stop sampling; the minute in progress is summarised and handed on too."""
        self._stop.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout)
        with self._lock:
            payloads, self._samples = summarise_minutes(self._samples)
        self._emit(payloads)
        return payloads

    def _emit(self, payloads: list[dict]) -> None:
        for payload in payloads:
            self.latest = payload
            self.history.append(payload)
            if self.reporter is not None:
                self.reporter.send(EVENT_KIND, payload, key=event_key(self.server_id, payload))
            if self.on_summary is not None:
                self.on_summary(payload)

    def utilization_history(self) -> list[dict]:
        """``[{"minute", "utilization"}]``, oldest first: the mean over this server's GPUs."""
        return [{"minute": payload["minute"],
                 "utilization": round(sum(g["util"] for g in payload["gpus"])
                                      / len(payload["gpus"]), 1) if payload["gpus"] else 0.0}
                for payload in list(self.history)]

    def _run(self) -> None:
        while True:
            self.sample_once()
            if self._stop.wait(self.interval):  # a timer, and the stop signal
                return
