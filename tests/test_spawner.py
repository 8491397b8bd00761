"""CreditsSpawner's decisions in-process: who pays, group quotas, exclusive GPUs.

The spawner under test wraps a server that starts instantly, so these tests
exercise the credits logic against a real ledger without starting processes
(the real hub is exercised in test_e2e_*.py).
"""

from __future__ import annotations

import threading

import pytest
import yaml
from jupyterhub.spawner import SpawnException

from jupyterhub_credits.sessions.allocator import CapacityError, LocalGpuAllocator
from jupyterhub_credits.sessions.inventory import LocalGpu
from jupyterhub_credits.sessions.store import SessionStore
from tests.hub import CATALOG
from tests.spawners import credits_spawner

A100_HOUR = 15_000


@pytest.fixture
def catalog_path(tmp_path):
    catalog = yaml.safe_load(CATALOG.read_text())
    catalog["quotas"]["groups"] = {
        "lab": {"pool": True},
        "staff": {"max_gpus_per_session": 4, "max_concurrent_gpu_sessions": 3},
    }
    path = tmp_path / "catalog.yaml"
    path.write_text(yaml.safe_dump(catalog))
    return path


@pytest.fixture
def ledger(spawner_ledger):
    return spawner_ledger


def spawner_for(db_url, catalog_path, user, groups=(), server="", gpus="a100:0,a100:1,a100:2,a100:3"):
    return credits_spawner(db_url, catalog_path, user, groups=groups, server=server,
                           local_gpus=gpus)


async def start(spawner, **options):
    spawner.user_options = options
    await spawner.start()
    return SessionStore(spawner.credits.ledger).open_session(spawner.user.name, spawner.name)


async def end(spawner):
    await spawner.stop()
    await spawner.run_post_stop_hook()


A100 = {"image": "tf-2.21", "gpu_type": "a100", "gpus": 1, "hours": "1"}


@pytest.mark.asyncio
async def test_a_group_pool_pays_first_when_it_covers_the_hold(ledger, db_url, catalog_path):
    ledger.grant("group:lab", 20_000, key="pool", reason="lab budget", actor="test")
    ledger.grant("lena", 50_000, key="own", reason="own", actor="test")
    spawner = spawner_for(db_url, catalog_path, "lena", groups=["lab"])
    session = await start(spawner, **A100)
    assert session.account == "group:lab"
    assert ledger.balance("group:lab").reserved == A100_HOUR
    assert ledger.balance("lena").reserved == 0
    await end(spawner)
    # The pool cannot cover a second hour-long hold: the user's own account pays.
    second = await start(spawner, **{**A100, "hours": "1.5"})
    assert second.account == "user:lena"
    assert ledger.balance("lena").reserved == A100_HOUR * 3 // 2
    await end(spawner)


@pytest.mark.asyncio
async def test_group_overrides_raise_quotas_for_members_only(ledger, db_url, catalog_path):
    for user in ("sam", "ola"):
        ledger.grant(user, 500_000, key=f"grant:{user}", reason="r", actor="test")
    four = {**A100, "gpus": 4}
    with pytest.raises(SpawnException) as refused:
        await start(spawner_for(db_url, catalog_path, "ola"), **four)
    assert refused.value.status_code == 403 and "At most 3 GPUs" in refused.value.message
    staff = spawner_for(db_url, catalog_path, "sam", groups=["staff"])
    session = await start(staff, **four)
    assert session.gpus == 4 and sorted(staff.get_env()["CUDA_VISIBLE_DEVICES"].split(",")) == [
        "0", "1", "2", "3"]
    await end(staff)


@pytest.mark.asyncio
async def test_concurrent_gpu_sessions_are_capped_per_user(ledger, db_url, catalog_path):
    ledger.grant("max", 500_000, key="grant:max", reason="r", actor="test")
    first = spawner_for(db_url, catalog_path, "max", server="one")
    second = spawner_for(db_url, catalog_path, "max", server="two")
    third = spawner_for(db_url, catalog_path, "max", server="three")
    await start(first, **A100)
    await start(second, **A100)
    with pytest.raises(SpawnException) as refused:
        await start(third, **A100)
    assert refused.value.reason == "quota" and "2" in refused.value.message
    # A CPU session is not a GPU session: still allowed.
    cpu = await start(third, image="tf-2.21-cpu", gpu_type="none", gpus=0, hours="1")
    assert cpu.gpu_type == "none" and third.get_env()["CUDA_VISIBLE_DEVICES"] == ""
    for spawner in (first, second, third):
        await end(spawner)
    assert ledger.balance("max").reserved == 0


@pytest.mark.asyncio
async def test_devices_are_exclusive_and_released_on_stop(ledger, db_url, catalog_path):
    for user in ("a", "b", "c"):
        ledger.grant(user, 500_000, key=f"grant:{user}", reason="r", actor="test")
    spawners = [spawner_for(db_url, catalog_path, user, gpus="a100:0,a100:1") for user in "abc"]
    await start(spawners[0], **A100)
    await start(spawners[1], **A100)
    devices = {s.get_env()["CUDA_VISIBLE_DEVICES"] for s in spawners[:2]}
    assert devices == {"0", "1"}
    with pytest.raises(SpawnException) as refused:
        await start(spawners[2], **A100)
    assert refused.value.reason == "capacity"
    assert ledger.balance("c").reserved == 0  # refused before anything was held
    await end(spawners[0])
    session = await start(spawners[2], **A100)
    assert spawners[2].get_env()["CUDA_VISIBLE_DEVICES"] == spawners[0]._devices[0]
    assert session.state == "running"


def test_allocator_never_hands_a_device_out_twice_under_contention(ledger):
    store = SessionStore(ledger)
    ledger.grant("many", 10_000_000, key="grant:many", reason="r", actor="test")
    inventory = [LocalGpu("a100", i) for i in range(4)]
    sessions = [store.start(user="many", server_name=f"s{i}", account="user:many",
                            image="tf-2.21", gpu_type="a100", gpus=1, rate_per_hour=1000,
                            hold_units=1000, actor="test") for i in range(8)]
    # Several allocators on one database: as after a hub restart, or in several threads.
    allocators = [LocalGpuAllocator(ledger.engine, inventory, clock=ledger.clock)
                  for _ in range(4)]
    granted, refused = [], []
    barrier = threading.Barrier(len(sessions))

    def take(index):
        barrier.wait()
        try:
            granted.append(allocators[index % 4].assign(sessions[index].id, "a100", 1)[0].device)
        except CapacityError:
            refused.append(index)

    threads = [threading.Thread(target=take, args=(i,)) for i in range(len(sessions))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(granted) == ["0", "1", "2", "3"] and len(refused) == 4
    assert allocators[0].free() == {"a100": 0}


def test_the_gpus_setting_is_still_accepted_for_local_gpus(db_url, catalog_path):
    from traitlets.config import Config

    config = Config()
    config.CreditsInstantSpawner.gpus = "a100:0"
    spawner = spawner_for(db_url, catalog_path, "old-config")
    spawner.update_config(config)
    assert spawner.local_gpus == "a100:0"
    assert spawner.gpu_totals().get("a100") == 1
