"""Check the GPU sampler on a machine with real GPUs: idle, then under a bf16 matmul load.

Prints one JSON document. Needs only nvidia-ml-py and PyTorch (no TensorFlow),
with this repository on PYTHONPATH (or run from its root):
    python bench/gpu_sampler.py [--seconds 20] [--interval 1]

It maps ``CUDA_VISIBLE_DEVICES`` to NVML handles the way the server extension does,
checks that the UUID form of ``CUDA_VISIBLE_DEVICES`` gives CUDA exactly that
device, then runs ``GpuSampler`` (the extension's sampler thread) through an idle
phase and a load phase (PyTorch bf16 matmuls on every visible GPU), recording the
raw samples of each phase alongside the per-minute summaries the sampler hands on
(the ``gpu_utilization`` payloads the service would get).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from jupyterhub_credits.singleuser import gpu  # noqa: E402


class RecordingSampler(gpu.GpuSampler):
    """The real sampler, also keeping each raw sample with the phase it fell in."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.phase = "start"
        self.raw: list[tuple[str, gpu.GpuSample]] = []

    def read(self, now):
        samples = super().read(now)
        self.raw.extend((self.phase, sample) for sample in samples)
        return samples


def phase_stats(raw, phase: str) -> dict:
    samples = [s for p, s in raw if p == phase]
    if not samples:
        return {"samples": 0}
    utils = [s.util for s in samples]
    return {"samples": len(samples),
            "seconds": round(max(s.time for s in samples) - min(s.time for s in samples), 1),
            "mean_util": round(sum(utils) / len(utils), 1), "min_util": min(utils),
            "max_util": max(utils),
            "max_mem_used_mb": round(max(s.mem_used_mb for s in samples))}


def matmul_load(stop: threading.Event, ready: threading.Event, counts: dict,
                size: int = 8192) -> None:
    import torch
    devices = [torch.device("cuda", i) for i in range(torch.cuda.device_count())]
    pairs = [(torch.randn(size, size, device=d, dtype=torch.bfloat16),
              torch.randn(size, size, device=d, dtype=torch.bfloat16)) for d in devices]
    counts["matmuls"], started = 0, time.monotonic()
    ready.set()
    while not stop.is_set():
        for a, b in pairs:
            for _ in range(20):
                a @ b
        for device in devices:
            torch.cuda.synchronize(device)
        counts["matmuls"] += 20 * len(pairs)
    elapsed = time.monotonic() - started
    counts["tflops"] = round(counts["matmuls"] * 2 * size**3 / elapsed / 1e12, 1)


def uuid_visibility_check(uuid: str) -> dict:
    """What CUDA sees with CUDA_VISIBLE_DEVICES=<that uuid>, and what we map it to."""
    env = dict(os.environ, CUDA_VISIBLE_DEVICES=uuid)
    probe = subprocess.run(
        [sys.executable, "-c", "import torch; print(torch.cuda.device_count())"],
        env=env, capture_output=True, text=True, timeout=120, check=False)
    return {"CUDA_VISIBLE_DEVICES": uuid,
            "torch_device_count": int(probe.stdout.strip()) if probe.returncode == 0 else None,
            "error": probe.stderr[-500:] if probe.returncode else None}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=20.0, help="length of each phase")
    parser.add_argument("--interval", type=float, default=1.0, help="sampling interval (s)")
    args = parser.parse_args()

    nvml = gpu.load_nvml()
    if nvml is None:
        print(json.dumps({"error": "NVML not available (nvidia-ml-py or driver missing)"}))
        sys.exit(1)
    report: dict = {"driver": gpu._text(nvml.nvmlSystemGetDriverVersion()),
                    "CUDA_VISIBLE_DEVICES": os.environ.get("CUDA_VISIBLE_DEVICES")}
    all_gpus = gpu.visible_gpus(nvml, None)
    report["nvml_devices"] = [{"nvml_index": g.nvml_index, "uuid": g.uuid,
                               "name": gpu._text(nvml.nvmlDeviceGetName(g.handle))}
                              for g in all_gpus]
    gpus = gpu.visible_gpus(nvml, os.environ.get("CUDA_VISIBLE_DEVICES"))
    report["sampled"] = [{"index": g.index, "nvml_index": g.nvml_index, "uuid": g.uuid}
                         for g in gpus]
    if all_gpus:
        last = all_gpus[-1]
        mapped = gpu.visible_gpus(nvml, last.uuid)
        report["uuid_mapping"] = dict(uuid_visibility_check(last.uuid),
                                      maps_to_nvml_index=[g.nvml_index for g in mapped],
                                      expected_nvml_index=last.nvml_index)
        report["empty_hides_all"] = gpu.visible_gpus(nvml, "") == []

    summaries: list[dict] = []
    sampler = RecordingSampler(nvml, gpus, interval=args.interval, server_id="bench",
                               on_summary=summaries.append)
    stop_load, load_ready, counts = threading.Event(), threading.Event(), {}
    import torch  # initialise CUDA before the idle phase, so its start is not measured as load
    torch.cuda.init()
    sampler.phase = "idle"
    sampler.start()
    threading.Event().wait(args.seconds)  # the idle phase lasts this long
    load = threading.Thread(target=matmul_load, args=(stop_load, load_ready, counts),
                            daemon=True)
    load.start()
    if not load_ready.wait(120):
        raise SystemExit("the matmul load did not start")
    sampler.phase = "load"
    threading.Event().wait(args.seconds)
    sampler.phase = "after"
    stop_load.set()
    load.join()
    last = sampler.stop()
    report["phases"] = {"idle": phase_stats(sampler.raw, "idle"),
                        "load": dict(phase_stats(sampler.raw, "load"), **counts)}
    report["minute_summaries"] = summaries
    report["summaries_at_stop"] = len(last)
    report["sampler_errors"] = sampler.errors
    report["interval_s"] = args.interval
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
