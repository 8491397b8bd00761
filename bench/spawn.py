"""Admission overhead: what the credits spawner adds to a spawn.

Times Spawner.start() (and the stop + post-stop settlement) of a spawner whose
server starts instantly, with and without CreditsSpawner in front of it, so
the difference is exactly the credits work: catalog check, quota, capacity,
balance, the hold, GPU assignment, marking ready, settlement. Prints JSON.

    .venv/bin/python bench/spawn.py [--spawns 50] [--pg-url URL]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchdb import DEFAULT_PG_ADMIN_URL, percentiles, postgres_database  # noqa: E402

from jupyterhub_credits.ledger import Ledger  # noqa: E402
from jupyterhub_credits.spawner.context import reset_contexts  # noqa: E402
from jupyterhub_credits.spawner.local import LocalGpuMixin  # noqa: E402
from tests.spawners import CreditsInstantSpawner, InstantSpawner  # noqa: E402


def make(cls, user: str, options: dict, db_url: str):
    spawner = cls(user=SimpleNamespace(name=user, groups=[], url=f"/user/{user}/"),
                  hub=None, db=None, orm_spawner=None)
    spawner.user_options = dict(options)
    if isinstance(spawner, LocalGpuMixin):
        spawner.credits_db_url = db_url
        spawner.catalog_path = str(ROOT / "config" / "catalog.yaml")
        spawner.credits_ready_check = False
        spawner.gpus = "a100:0,a100:1,a100:2,a100:3"
    return spawner


async def cycle(cls, user, options, db_url) -> tuple[float, float]:
    spawner = make(cls, user, options, db_url)
    started = time.perf_counter()
    await spawner.start()
    start_s = time.perf_counter() - started
    started = time.perf_counter()
    await spawner.stop()
    hook = spawner.run_post_stop_hook()  # the hub awaits it only when it is awaitable
    if asyncio.iscoroutine(hook):
        await hook
    return start_s, time.perf_counter() - started


def summary(values: list[float]) -> dict:
    return {**percentiles(values), "mean_ms": round(1000 * statistics.fmean(values), 3)}


async def measure(db_url: str, spawns: int) -> dict:
    ledger = Ledger.open(db_url)
    options = {"image": "tf-2.21", "gpu_type": "a100", "gpus": 2, "hours": "1"}
    for i in range(spawns):
        ledger.grant(f"u{i}", 1_000_000, key=f"bench-grant:{i}", reason="bench", actor="bench")
    ledger.grant("warmup", 1_000_000, key="bench-grant:warmup", reason="bench", actor="bench")
    ledger.close()
    results = {}
    for label, cls in (("plain", InstantSpawner), ("credits", CreditsInstantSpawner)):
        await cycle(cls, "warmup", {"image": "tf-2.21-cpu", "gpu_type": "none"}, db_url)
        starts, stops = [], []
        for i in range(spawns):
            start_s, stop_s = await cycle(cls, f"u{i}", options, db_url)
            starts.append(start_s)
            stops.append(stop_s)
        results[label] = {"start": summary(starts), "stop_and_settle": summary(stops)}
    reset_contexts()
    overhead = {
        key: round(results["credits"]["start"][key] - results["plain"]["start"][key], 3)
        for key in ("p50_ms", "p99_ms", "mean_ms")}
    settle = {
        key: round(results["credits"]["stop_and_settle"][key]
                   - results["plain"]["stop_and_settle"][key], 3)
        for key in ("p50_ms", "p99_ms", "mean_ms")}
    return {"spawns": spawns, "admission_overhead": overhead, "settlement_overhead": settle,
            "raw": results}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--spawns", type=int, default=50)
    parser.add_argument("--pg-url", default=DEFAULT_PG_ADMIN_URL)
    args = parser.parse_args()
    report = {"machine": {"cores": os.cpu_count()}}
    with tempfile.TemporaryDirectory() as tmp:
        report["sqlite"] = asyncio.run(measure(f"sqlite:///{tmp}/credits.sqlite", args.spawns))
    with postgres_database(args.pg_url) as url:
        try:
            report["postgresql"] = asyncio.run(measure(url, args.spawns))
        finally:
            reset_contexts()
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
