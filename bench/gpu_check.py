"""Check, on a machine with real GPUs, the local inventory (NVML) and exclusive device assignment.

Prints one JSON document. Run where NVIDIA GPUs and nvidia-ml-py are present (and
PyTorch, used only to see what a confined process can see):
    python bench/gpu_check.py
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from jupyterhub_credits.catalog import load_catalog  # noqa: E402
from jupyterhub_credits.ledger import Ledger  # noqa: E402
from jupyterhub_credits.sessions.allocator import CapacityError, LocalGpuAllocator  # noqa: E402
from jupyterhub_credits.sessions.inventory import (  # noqa: E402
    ENV_VAR,
    gpu_environment,
    local_inventory,
    parse_declared,
)
from jupyterhub_credits.sessions.store import SessionStore  # noqa: E402

PROBE = """
import json, os, torch
visible = os.environ.get("CUDA_VISIBLE_DEVICES")
count = torch.cuda.device_count()
names = [torch.cuda.get_device_name(i) for i in range(count)]
ok = None
if count:
    x = torch.ones(1024, 1024, device="cuda")
    ok = float((x @ x).sum().item())
print(json.dumps({"CUDA_VISIBLE_DEVICES": visible, "device_count": count, "names": names,
                  "matmul_sum": ok}))
"""


def probe(devices: list[str]) -> dict:
    env = dict(os.environ, **gpu_environment(devices))
    run = subprocess.run([sys.executable, "-c", PROBE], env=env, capture_output=True,
                         text=True, timeout=300)
    if run.returncode:
        return {"error": run.stderr[-2000:]}
    return json.loads(run.stdout.strip().splitlines()[-1])


def main() -> None:
    os.environ.pop(ENV_VAR, None)
    catalog = load_catalog(ROOT / "config" / "catalog.yaml")
    inventory = local_inventory(catalog)
    report: dict = {"nvml_inventory": [
        {"type": g.gpu_type, "index": g.index, "uuid": g.uuid, "name": g.name} for g in inventory]}
    with tempfile.TemporaryDirectory() as tmp:
        ledger = Ledger.open(f"sqlite:///{tmp}/credits.sqlite")
        store = SessionStore(ledger)
        allocator = LocalGpuAllocator(ledger.engine, inventory, clock=ledger.clock)
        report["free_before"] = allocator.free()
        ledger.grant("gpu-check", 10_000_000, key="grant", reason="gpu check", actor="bench")

        def session(name, gpu_type, gpus):
            return store.start(user=name, server_name="", account="user:gpu-check",
                               image="tf-2.21", gpu_type=gpu_type, gpus=gpus,
                               rate_per_hour=1000, hold_units=1000, actor="bench")

        results = {}
        if inventory:
            gpu_type = inventory[0].gpu_type
            count = sum(1 for g in inventory if g.gpu_type == gpu_type)
            first = session("first", gpu_type, count)
            assigned = allocator.assign(first.id, gpu_type, count)
            devices = [g.device for g in assigned]
            results["assigned"] = devices
            results["free_while_assigned"] = allocator.free()
            results["confined_process_sees"] = probe(devices)
            # A restarted hub (a new allocator on the same database) must not reuse them.
            restarted = LocalGpuAllocator(ledger.engine, inventory, clock=ledger.clock)
            second = session("second", gpu_type, 1)
            try:
                restarted.assign(second.id, gpu_type, 1)
                results["second_assignment"] = "GRANTED (wrong: device handed out twice)"
            except CapacityError as error:
                results["second_assignment"] = f"refused: {error}"
            allocator.release(first.id)
            results["free_after_release"] = allocator.free()
            results["index_form_sees"] = probe([str(inventory[0].index)])
        results["cpu_session_sees"] = probe([])
        results["declared_override"] = [
            (g.gpu_type, g.index) for g in parse_declared("A100:0,h100:1", catalog.gpu_types)]
        report.update(results)
        ledger.close()
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
