"""Prometheus metrics and the hub's "Credits" navigation links.

Unit level (both backends, a fake clock): the totals a scrape reports are
those of a ledger and sessions built here, read from the database and cached
for at most 15 s. Against a real hub: who may scrape (admin, a metrics-only
service token; not a plain user, not without a token), the meter's tick
histogram filled by the service process, and the links on the hub's pages.
The event-loop lag probe: unit level on a loop a test blocks on purpose, and
in the real service process.
"""

from __future__ import annotations

import asyncio
import secrets
import time
from datetime import timedelta
from decimal import Decimal

import pytest
import requests
from prometheus_client import CollectorRegistry, Gauge, Histogram, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from jupyterhub_credits.catalog import hold_amount, load_catalog
from jupyterhub_credits.earning import EarningService, earning_rules
from jupyterhub_credits.hubconfig import login_events
from jupyterhub_credits.ledger import LedgerError
from jupyterhub_credits.service.metrics import CreditsCollector, EventLoopLagProbe
from jupyterhub_credits.service.pages.base import PageUser, template_environment
from jupyterhub_credits.sessions.store import SessionStore
from tests.hub import CATALOG
from tests.realhub import log_in
from tests.waiting import wait_for

PROMETHEUS_TOKEN = secrets.token_hex(24)

pytestmark = pytest.mark.hub(extra_config=f"""
    c.JupyterHub.services.append({{"name": "prometheus", "api_token": {PROMETHEUS_TOKEN!r}}})
    c.JupyterHub.load_roles.append({{
        "name": "credits-metrics", "services": ["prometheus"],
        "scopes": ["custom:credits:metrics", "access:services!service=credits"],
    }})
""")

P = "jupyterhub_credits_"
A100 = 15_000  # units per GPU-hour in the shipped catalog
T4 = 4_000


def samples(text: str) -> dict[tuple[str, tuple], float]:
    """Every sample of a Prometheus text exposition (it must parse), by name and labels."""
    return {(sample.name, tuple(sorted(sample.labels.items()))): sample.value
            for family in text_string_to_metric_families(text) for sample in family.samples}


def scrape(collector: CreditsCollector) -> dict[tuple[str, tuple], float]:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(collector)
    return samples(generate_latest(registry).decode())


def value(found: dict, name: str, **labels) -> float:
    return found[(P + name, tuple(sorted(labels.items())))]


@pytest.fixture
def catalog():
    return load_catalog(CATALOG)


@pytest.fixture
def store(ledger):
    return SessionStore(ledger)


def collector_for(ledger, catalog, clock) -> CreditsCollector:
    return CreditsCollector(ledger.engine, clock=clock, gpu_types=catalog.gpu_types)


def ready_session(store, user, gpu_type, gpus, rate_per_hour, *, hours="1"):
    session = store.start(user=user, server_name="", account=f"user:{user}", image="tf-2.21",
                          gpu_type=gpu_type, gpus=gpus, rate_per_hour=rate_per_hour,
                          hold_units=hold_amount(rate_per_hour, Decimal(hours)),
                          actor=f"user:{user}")
    return store.mark_ready(session.key)


# --- unit level: values from the database -----------------------------------------------


def test_a_scrape_reports_the_ledger_sessions_and_events(ledger, store, catalog, clock):
    t0 = clock()
    ledger.grant("alice", 100_000, key="g-alice", reason="t", actor="test",
                 expires_at=t0 + timedelta(minutes=45))
    ledger.grant("bob", 50_000, key="g-bob", reason="t", actor="test")
    ledger.grant("dave", 10_000, key="g-dave", reason="t", actor="test")
    ledger.grant("erin", 20_000, key="g-erin", reason="t", actor="test")
    earning = EarningService(ledger, earning_rules(catalog), sessions=store)
    earned = earning.record("carol", login_events(t0), source="hub")  # signup + daily login
    earning.record("carol", [{"kind": "bogus", "key": "b1", "time": None, "payload": {}},
                             {"kind": "login", "key": "login:again", "time": None,
                              "payload": {}}], source="hub")
    ledger.reverse("g-dave", key="r-dave", reason="mistake", actor="test")

    # alice: 2 A100s for 30 minutes, stopped by her; bob: a T4 still running.
    alice = ready_session(store, "alice", "a100", 2, 2 * A100)
    bob = ready_session(store, "bob", "t4", 1, T4)
    # erin: CPU sessions ended for every reason (at once: no time sold), and a refused start.
    for reason in ("expired", "gpu_idle", "stopped", "admin", "server_gone", "culled"):
        cpu = ready_session(store, "erin", "none", 0, 1000, hours="0.5")
        store.settle(cpu.key, reason=reason)
    with pytest.raises(LedgerError):
        ready_session(store, "erin", "a100", 1, A100, hours="10")
    clock.advance(minutes=30)
    charged = store.settle(alice.key, reason="user").charged
    assert charged == A100  # 2 GPUs × 0.5 h
    store.record_billing()
    clock.advance(minutes=20)  # alice's lot lapses; bob's hold (1 h) stays
    assert ledger.sweep().expired_units == 100_000 - charged

    found = scrape(collector_for(ledger, catalog, clock))
    issued = 100_000 + 50_000 + 10_000 + 20_000 + sum(e["units"] for e in earned)
    assert value(found, "issued_credits_total") == issued / 1000
    assert value(found, "spent_credits_total") == charged / 1000
    assert value(found, "expired_credits_total") == (100_000 - charged) / 1000
    assert value(found, "reversed_credits_total") == 10.0
    assert value(found, "holds_open") == 1
    assert value(found, "reserved_credits") == bob.held / 1000
    assert value(found, "running_sessions", gpu_type="t4") == 1
    assert value(found, "running_sessions", gpu_type="a100") == 0
    assert value(found, "running_sessions", gpu_type="none") == 0
    assert value(found, "sold_gpu_seconds_total", gpu_type="a100") == pytest.approx(3600, abs=0.01)
    assert value(found, "sold_gpu_seconds_total", gpu_type="t4") == pytest.approx(1800, abs=0.01)
    assert value(found, "sold_gpu_seconds_total", gpu_type="h100") == 0
    assert {reason: value(found, "session_stops_total", reason=reason)
            for reason in ("expiry", "idle_gpu", "user", "admin", "crash", "other")} == {
        "expiry": 1, "idle_gpu": 1, "user": 2, "admin": 1, "crash": 1, "other": 1}
    assert value(found, "earning_events_total", rule="signup", outcome="earned") == 1
    assert value(found, "earning_events_total", rule="daily_login", outcome="earned") == 1
    assert value(found, "earning_events_total", rule="daily_login", outcome="capped") == 1
    assert value(found, "earning_events_total", rule="none", outcome="rejected") == 1


def test_totals_are_cached_at_most_15_seconds(ledger, catalog, clock):
    collector = collector_for(ledger, catalog, clock)
    assert value(scrape(collector), "issued_credits_total") == 0
    ledger.grant("alice", 5_000, key="g1", reason="t", actor="test")
    assert value(scrape(collector), "issued_credits_total") == 0  # the earlier read
    clock.advance(seconds=14.9)
    assert value(scrape(collector), "issued_credits_total") == 0
    clock.advance(seconds=0.1)
    assert value(scrape(collector), "issued_credits_total") == 5.0  # 15 s old: read again
    ledger.grant("alice", 1_000, key="g2", reason="t", actor="test")
    clock.advance(seconds=-1)  # a clock that went back reads again
    assert value(scrape(collector), "issued_credits_total") == 6.0


def test_no_metric_has_a_per_user_label(ledger, store, catalog, clock):
    ledger.grant("alice", 100_000, key="g1", reason="t", actor="test")
    session = ready_session(store, "alice", "a100", 1, A100)
    clock.advance(minutes=5)
    store.settle(session.key, reason="user")
    EarningService(ledger, earning_rules(catalog), sessions=store).record(
        "alice", login_events(clock()), source="hub")
    registry = CollectorRegistry(auto_describe=False)
    registry.register(collector_for(ledger, catalog, clock))
    text = generate_latest(registry).decode()
    labels = {name for family in text_string_to_metric_families(text)
              for sample in family.samples for name in sample.labels}
    assert labels == {"gpu_type", "reason", "rule", "outcome"}
    assert "alice" not in text


# --- unit level: the event loop's lag ------------------------------------------------------


def test_the_lag_probe_measures_how_long_the_loop_was_blocked(caplog):
    registry = CollectorRegistry(auto_describe=False)
    lag = Histogram("lag_seconds", "t", buckets=(0.01, 0.05, 0.1, 0.5, 1), registry=registry)
    largest = Gauge("lag_max_seconds", "t", registry=registry)
    probe = EventLoopLagProbe(interval=0.01, histogram=lag, maximum=largest, log_threshold=0.1)

    async def scenario():
        async def samples_reach(count):
            while probe.samples < count:  # a poll: the probe fires every 10 ms
                await asyncio.sleep(0.005)

        probe.start()
        await asyncio.wait_for(samples_reach(5), 5)
        idle = probe.largest
        time.sleep(0.15)  # the blocking call the probe must see (not synchronisation)
        await asyncio.wait_for(samples_reach(probe.samples + 2), 5)
        probe.stop()
        return idle

    idle = asyncio.run(scenario())
    assert idle < 0.1  # an idle loop runs the probe on time (generous: a shared machine)
    found = samples(generate_latest(registry).decode())
    assert 0.14 <= found[("lag_max_seconds", ())] < 1.0
    assert found[("lag_seconds_count", ())] == probe.samples
    # The blocked sample is over 0.1 s (on a shared machine maybe not alone), and logged
    # as the hub logs its own stalls.
    assert found[("lag_seconds_count", ())] - found[("lag_seconds_bucket", (("le", "0.1"),))] >= 1
    assert {r.levelname for r in caplog.records if "event loop was blocked" in r.message} == {
        "WARNING"}


# --- unit level: the navigation links, as the credits service renders them ---------------


@pytest.mark.parametrize("scopes, admin", [({"custom:credits:read"}, False),
                                           ({"custom:credits:read", "custom:credits:admin"}, True)])
def test_the_service_renders_the_credits_links(scopes, admin):
    html = template_environment().get_template("page.html").render(
        prefix="/", base_url="/hub/", user=PageUser("alice"), parsed_scopes=scopes,
        static_url=lambda path, **_: f"/hub/static/{path}", services=[], no_spawner_check=True)
    assert '<a class="nav-link" href="/services/credits/">Credits</a>' in html
    assert '<a class="nav-link" href="/hub/home">Home</a>' in html  # the hub's own items kept
    assert ('href="/services/credits/admin">Credits admin</a>' in html) is admin


# --- against a real hub -------------------------------------------------------------------


def get_metrics(hub, token: str | None) -> requests.Response:
    headers = {"Authorization": f"token {token}"} if token else {}
    return requests.get(f"{hub.url}/services/credits/metrics", headers=headers, timeout=30)


def test_metrics_need_the_metrics_scope(hub):
    admin = get_metrics(hub, hub.user_token("admin"))
    assert admin.status_code == 200, admin.text
    assert admin.headers["Content-Type"].startswith("text/plain")
    found = samples(admin.text)
    assert (P + "issued_credits_total", ()) in found

    prometheus = get_metrics(hub, PROMETHEUS_TOKEN)
    assert prometheus.status_code == 200, prometheus.text
    # ... and nothing else.
    other = hub.credits_api("GET", "/users/admin", token=PROMETHEUS_TOKEN)
    assert other.status_code == 403, other.text

    user = get_metrics(hub, hub.user_token("alice"))
    assert user.status_code == 403
    assert user.json()["status"] == 403
    assert "custom:credits:metrics" in user.json()["message"]

    anonymous = get_metrics(hub, None)
    assert anonymous.status_code == 401
    assert anonymous.json()["status"] == 401


def test_the_service_process_times_its_meter_ticks(hub):
    def ticks():
        found = samples(get_metrics(hub, PROMETHEUS_TOKEN).text)
        return found.get((P + "meter_tick_seconds_count", ()), 0)

    assert wait_for(ticks, timeout=30, interval=0.5, what="a timed meter tick") >= 1
    found = samples(get_metrics(hub, PROMETHEUS_TOKEN).text)
    assert (P + "meter_tick_seconds_bucket", (("le", "+Inf"),)) in found


def test_the_service_process_measures_its_event_loop_lag(hub):
    def lags():
        found = samples(get_metrics(hub, PROMETHEUS_TOKEN).text)
        return found.get((P + "event_loop_lag_seconds_count", ()), 0)

    assert wait_for(lags, timeout=30, interval=0.5, what="a measured event-loop lag") >= 1
    found = samples(get_metrics(hub, PROMETHEUS_TOKEN).text)
    assert (P + "event_loop_lag_seconds_bucket", (("le", "0.05"),)) in found
    assert found[(P + "event_loop_lag_max_seconds", ())] >= 0


def test_the_hub_pages_link_to_credits(hub):
    for user, admin in (("alice", False), ("admin", True)):
        browser, _ = log_in(hub.url, user)
        home = browser.get(f"{hub.url}/hub/home", timeout=30)
        assert home.status_code == 200
        assert '<a class="nav-link" href="/services/credits/">Credits</a>' in home.text
        assert ('href="/services/credits/admin">Credits admin</a>' in home.text) is admin
