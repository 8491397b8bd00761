"""Faults under traffic: nothing lost, nothing counted twice, every failure says why.

Six scenarios (tests/faults.py holds them; tests/test_faults.py runs the fastest
in the suite), each on a real hub with a few users starting and stopping
servers and reporting events throughout:

- ``postgres_restarted``: the credits database's PostgreSQL restarts (a throwaway
  cluster on its own port, tests/pgcluster.py; never the shared server);
- ``service_killed``: the credits service gets SIGKILL (the hub starts it again);
- ``hub_killed``: the hub, its proxy and service get SIGKILL; the hub is started again;
- ``proxy_restarted``: configurable-http-proxy gets SIGKILL (the hub starts it again);
- ``server_killed``: one user's single-user server gets SIGKILL;
- ``disk_full``: the size-limited tmpfs holding the SQLite credits database fills up,
  then space is freed (skipped, and said so, where tmpfs cannot be mounted).

The first five share one hub on the throwaway cluster; ``disk_full`` has its own
hub on SQLite. Prints one JSON document (progress on stderr); ``"ok"`` is true
when every scenario that ran passed; exits 1 otherwise.

    .venv/bin/python bench/faults.py [--quick] [--only NAME[,NAME]] [--out PATH]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchdb import log  # noqa: E402

from tests import faults  # noqa: E402
from tests.hub import CATALOG, HubProcess  # noqa: E402
from tests.pgcluster import ClusterUnavailable, pg_cluster  # noqa: E402
from tests.realhub import merged  # noqa: E402

ON_POSTGRES = ["service_killed", "server_killed", "proxy_restarted", "postgres_restarted",
               "hub_killed"]
ON_SQLITE = ["disk_full"]
SCENARIOS = ON_POSTGRES + ON_SQLITE


def fault_hub(workdir: Path, db_url: str) -> HubProcess:
    catalog = workdir / "catalog.yaml"
    catalog.write_text(yaml.safe_dump(merged(yaml.safe_load(CATALOG.read_text()),
                                             faults.FAULT_CATALOG)))
    return HubProcess(workdir / "hub", db_url=db_url, catalog=catalog,
                      extra_config=faults.FAULT_HUB_CONFIG)


def run_postgres_scenarios(names: list[str], rounds: int) -> dict:
    results = {}
    try:
        cluster_context = pg_cluster()
        cluster = cluster_context.__enter__()
    except ClusterUnavailable as error:
        return {name: {"skipped": str(error)} for name in names}
    try:
        by_name = {fault.name: fault for fault in faults.all_faults(cluster)}
        with tempfile.TemporaryDirectory() as tmp:
            hub = fault_hub(Path(tmp), cluster.create_database("credits"))
            log("starting the hub on the throwaway PostgreSQL cluster")
            hub.start(timeout=120)
            try:
                for name in names:
                    runs = []
                    fault = by_name[name]
                    for round_ in range(rounds):
                        log(f"{name} (round {round_ + 1} of {rounds})")
                        result = faults.scenario(hub, fault)
                        log(f"{name}: ok={result['ok']} {result['problems'][:3]}")
                        runs.append(result)
                    results[name] = runs[0] if rounds == 1 else {
                        "ok": all(r["ok"] for r in runs), "rounds": runs}
            finally:
                hub.stop()
    finally:
        cluster_context.__exit__(None, None, None)
    return results


def run_disk_full(rounds: int) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        mount = Path(tmp) / "disk"
        if not faults.mount_tmpfs(mount, "32m"):
            return {"skipped": "cannot mount a tmpfs here (needs root); SQLite's page limit "
                               "would need a hook in the product's engine: not run"}
        try:
            hub = fault_hub(Path(tmp), f"sqlite:///{mount / 'credits.sqlite'}")
            log("starting the hub with its credits database on a 32 MB tmpfs")
            hub.start(timeout=120)
            try:
                runs = []
                for round_ in range(rounds):
                    log(f"disk_full (round {round_ + 1} of {rounds})")
                    result = faults.scenario(hub, faults.Fault("disk_full",
                                                               faults.fill_disk(mount)))
                    log(f"disk_full: ok={result['ok']} {result['problems'][:3]}")
                    runs.append(result)
            finally:
                hub.stop()
        finally:
            faults.unmount(mount)
    return runs[0] if rounds == 1 else {"ok": all(r["ok"] for r in runs), "rounds": runs}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="one round of each (a few minutes)")
    parser.add_argument("--rounds", type=int, default=None,
                        help="rounds of each scenario (default 2, 1 with --quick)")
    parser.add_argument("--only", default="", help=f"comma-separated subset of {SCENARIOS}")
    parser.add_argument("--out", help="also write the JSON document to this file")
    args = parser.parse_args()
    wanted = [name for name in args.only.split(",") if name] or SCENARIOS
    unknown = set(wanted) - set(SCENARIOS)
    if unknown:
        parser.error(f"unknown scenario(s) {sorted(unknown)}; choose from {SCENARIOS}")
    rounds = args.rounds or (1 if args.quick else 2)

    started = time.monotonic()
    report = {"machine": {"cores": os.cpu_count(), "loadavg_before": os.getloadavg()},
              "rounds": rounds,
              "settings": {"client_timeout_s": faults.CLIENT_TIMEOUT,
                           "hub": "Spawner.poll_interval 2 s; Meter.reconcile_interval 5 s, "
                                  "reconcile_grace 2 s; earnings_pay_interval 5 s",
                           "traffic": "3 users asking for 1 of 2 A100s and 1 CPU user; each "
                                      "server up 2-5 s, reporting 2 training runs every 0.3 s"},
              "scenarios": {}}
    postgres = [name for name in wanted if name in ON_POSTGRES]
    if postgres:
        report["scenarios"].update(run_postgres_scenarios(postgres, rounds))
    if "disk_full" in wanted:
        report["scenarios"]["disk_full"] = run_disk_full(rounds)
    report["machine"]["loadavg_after"] = os.getloadavg()
    report["seconds"] = round(time.monotonic() - started, 1)
    report["note"] = ("2 shared cores: other work ran beside this; recovery times are noisy "
                      "upper bounds")
    report["ok"] = all(result.get("ok", True) for result in report["scenarios"].values())
    text = json.dumps(report, indent=2, default=str)
    print(text)
    if args.out:
        Path(args.out).write_text(text + "\n")
    sys.exit(0 if report["ok"] else 1)


if __name__ == "__main__":
    main()
