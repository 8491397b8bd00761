"""Faults under traffic, in the suite: the fastest of bench/faults.py's scenarios.

One hub on a throwaway PostgreSQL cluster (tests/pgcluster.py, never the shared
server) goes through a single-user server killed, the credits service killed,
the proxy restarted and PostgreSQL restarted, one after the other (the hub killed
is bench/faults.py's, beside tests/test_e2e_restart.py),
while users keep starting and stopping servers and reporting events
(tests/faults.py); a second hub has its SQLite credits database on a tmpfs that fills
up. After each fault, with the traffic still running: ``verify`` holds, ended
sessions were settled exactly once, answered events are stored once and earned once,
no GPU was handed out twice, and every failed call said why without hanging. At the
end, every session has ended and nothing is reserved or assigned.

Each run happens once per module (a fixture); each test reads its fault's result.
"""

from __future__ import annotations

import asyncio
import json
import tempfile
from pathlib import Path
from types import SimpleNamespace

import pytest
import yaml

from tests import faults
from tests.hub import CATALOG, HubProcess
from tests.pgcluster import ClusterUnavailable, pg_cluster
from tests.realhub import merged
from tests.spawners import credits_spawner

pytestmark = [pytest.mark.slow]

#: Shorter stays than the bench's (2-5 s): more starts and stops within the suite's budget.
STAY = (1.5, 3.0)


def fault_hub(workdir: Path, db_url: str) -> HubProcess:
    catalog = workdir / "catalog.yaml"
    catalog.write_text(yaml.safe_dump(merged(yaml.safe_load(CATALOG.read_text()),
                                             faults.FAULT_CATALOG)))
    return HubProcess(workdir / "hub", db_url=db_url, catalog=catalog,
                      extra_config=faults.FAULT_HUB_CONFIG)


@pytest.fixture(scope="module")
def postgres_run():
    """The five faults of the hub on a throwaway PostgreSQL cluster, in one traffic run."""
    try:
        cluster_context = pg_cluster()
        cluster = cluster_context.__enter__()
    except ClusterUnavailable as error:
        pytest.skip(f"no throwaway PostgreSQL cluster: {error}")
    try:
        with tempfile.TemporaryDirectory() as tmp:
            hub = fault_hub(Path(tmp), cluster.create_database("credits"))
            hub.start(timeout=120)
            try:
                # The hub killed is left to bench/faults.py (and tests/test_e2e_restart.py):
                # with it the suite's share would pass 3 minutes on 2 busy cores.
                chosen = [f for f in faults.all_faults(cluster) if f.name != "hub_killed"]
                yield faults.run_faults(hub, chosen, prefix="tf", stay=STAY, recover_ready=0)
            finally:
                hub.stop()
    finally:
        cluster_context.__exit__(None, None, None)


@pytest.fixture(scope="module")
def disk_full_run():
    with tempfile.TemporaryDirectory() as tmp:
        mount = Path(tmp) / "disk"
        if not faults.mount_tmpfs(mount, "32m"):
            pytest.skip("cannot mount a size-limited tmpfs here (needs root)")
        try:
            hub = fault_hub(Path(tmp), f"sqlite:///{mount / 'credits.sqlite'}")
            hub.start(timeout=120)
            try:
                yield faults.run_faults(hub, [faults.Fault("disk_full", faults.fill_disk(mount))],
                                        prefix="tfd", stay=STAY, recover_ready=0)
            finally:
                hub.stop()
        finally:
            faults.unmount(mount)


def passed(result: dict) -> None:
    assert result["ok"], json.dumps({k: result.get(k) for k in (
        "problems", "fault", "calls", "log_errors", "error")}, indent=1, default=str)[:4000]


def test_a_killed_single_user_server_is_settled_once(postgres_run):
    result = postgres_run["server_killed"]
    passed(result)
    assert result["fault"]["end_reason"] == "server_gone"


def test_the_credits_service_killed_comes_back_and_loses_nothing(postgres_run):
    result = postgres_run["service_killed"]
    passed(result)
    # Events sent meanwhile met a refused connection, never a hang; sent again, they count once.
    calls = result["calls"]["by_kind_and_phase"]
    assert calls.get("events/service_killed:fault", {}).get("refused", 0) >= 1, calls


def test_the_proxy_restarted_loses_nothing(postgres_run):
    passed(postgres_run["proxy_restarted"])


def test_postgresql_restarted_loses_nothing(postgres_run):
    passed(postgres_run["postgres_restarted"])


def test_after_every_fault_every_session_is_settled_and_nothing_reserved(postgres_run):
    final = postgres_run["final"]
    passed(final)
    # Servers kept starting after the faults, not only before them.
    assert sum(final["ready_after_faults"].values()) >= 1, final["ready_after_faults"]


def test_a_full_disk_is_a_clear_refusal_and_everything_resumes(disk_full_run):
    result = disk_full_run["disk_full"]
    passed(result)
    passed(disk_full_run["final"])
    # The spawner's own answer to a start while the database cannot be written (it was
    # a 500 "Unhandled error starting server" with the SQLite exception).
    spawn = result["fault"]["spawn_while_full"]
    assert spawn["status"] == 503 and "Nothing was charged" in spawn["message"], spawn
    # The events API's answer (it was a 500 "internal error"), then the same events count once.
    messages = result["calls"]["failure_messages"]
    assert any("events 503: the credits database is unavailable right now (its disk is full)"
               in message for message in messages), messages


# --- the hub killed while a server starts (in-process: no hub restart needed) -------------

A100 = {"image": "tf-2.21", "gpu_type": "a100", "gpus": 1, "hours": "1"}


class _StuckSpawner:
    """Mix-in: the server's process exists but never answers, so start() never returns
    (a hub killed now would be the hub of bench/faults.py's hub_killed)."""

    async def _wait_until_answering(self, url):
        self.state_while_waiting = dict(self.orm_spawner.state or {})
        self.waiting.set()
        await asyncio.Event().wait()


@pytest.mark.asyncio
async def test_a_start_a_killed_hub_never_finished_is_stopped_and_costs_nothing(spawner_ledger,
                                                                                 db_url):
    """Found by the hub_killed scenario: the process of a start still waiting for its server
    to answer was lost with the hub (its pid was stored only once start() returned) and ran
    on, with a GPU the allocator then handed to the next session."""
    spawner_ledger.grant("kim", 50_000, key="grant-kim", reason="test", actor="test")
    first = credits_spawner(db_url, CATALOG, "kim", user_options=A100, local_gpus="a100:0")
    first.__class__ = type("Stuck", (_StuckSpawner, type(first)), {})
    first.credits_ready_check = True
    first.waiting = asyncio.Event()
    first.db = SimpleNamespace(commit=lambda: None)
    starting = asyncio.ensure_future(first.start())
    try:
        await asyncio.wait_for(first.waiting.wait(), 30)
        # The hub's database knows the process before it answers.
        assert first.state_while_waiting.get("credits_session_key")
        key = first.state_while_waiting["credits_session_key"]

        # The restarted hub's spawner: the same state, the process still alive.
        second = credits_spawner(db_url, CATALOG, "kim", user_options=A100, local_gpus="a100:0")
        second.load_state(first.state_while_waiting)
        second.running = True
        assert await second.poll() == 1  # stopped, and said to be gone
        assert second.running is False
        await second.run_post_stop_hook()
        ended = second.credits.sessions.get(key)
        assert (ended.state, ended.end_reason, ended.charged) == ("ended", "server_gone", 0)
        assert second.allocator.free() == {"a100": 1}
        assert spawner_ledger.balance("kim").reserved == 0

        # A server that did become ready is left alone by the same check.
        third = credits_spawner(db_url, CATALOG, "kim", user_options=A100, local_gpus="a100:0")
        await third.start()
        fourth = credits_spawner(db_url, CATALOG, "kim", user_options=A100, local_gpus="a100:0")
        fourth.load_state(third.get_state())
        fourth.running = True
        assert await fourth.poll() is None and fourth.running
        await third.stop()
        await third.run_post_stop_hook()
    finally:
        starting.cancel()
        await asyncio.gather(starting, return_exceptions=True)
