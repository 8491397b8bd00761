"""Shared fixtures: real databases (a SQLite file and a fresh PostgreSQL database per run)."""

from __future__ import annotations

import os
import uuid
from contextlib import contextmanager
from datetime import datetime, timedelta, timezone

import pytest
from sqlalchemy import create_engine, text

from jupyterhub_credits.earning.schema import earning_users, events
from jupyterhub_credits.ledger import Ledger
from jupyterhub_credits.ledger import database as ledger_database
from jupyterhub_credits.ledger.schema import accounts, hold_lots, holds, lot_movements, lots, transfers
from jupyterhub_credits.sessions.schema import gpu_assignments, session_holds, sessions

#: Fixtures for tests against a real hub, and for tests in a real browser.
pytest_plugins = ["tests.realhub", "tests.browser"]

PG_ADMIN_URL = os.environ.get(
    "JUPYTERHUB_CREDITS_TEST_PG_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"
)


class FakeClock:
    """An injected clock: time moves only when a test says so."""

    def __init__(self, start: datetime | None = None):
        self.now = start or datetime(2026, 1, 1, 12, 0, tzinfo=timezone.utc)

    def __call__(self) -> datetime:
        return self.now

    def advance(self, **delta) -> datetime:
        self.now += timedelta(**delta)
        return self.now


def _admin_engine():
    return create_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT")


@contextmanager
def fresh_postgres_database(prefix: str = "credits_test"):
    """A new, empty PostgreSQL database at the schema's head; dropped afterwards."""
    name = f"{prefix}_{uuid.uuid4().hex[:12]}"
    admin = _admin_engine()
    try:
        with admin.connect() as conn:
            conn.execute(text(f'CREATE DATABASE "{name}"'))
    except Exception as error:  # noqa: BLE001 - any connection failure means "no server"
        admin.dispose()
        message = f"PostgreSQL not reachable at {PG_ADMIN_URL}: {error}"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    url = admin.url.set(database=name).render_as_string(hide_password=False)
    engine = ledger_database.make_engine(url)
    ledger_database.upgrade(engine)
    engine.dispose()
    try:
        yield url
    finally:
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


@pytest.fixture(scope="session")
def postgres_url():
    """A fresh PostgreSQL database for this test run, dropped afterwards."""
    with fresh_postgres_database() as url:
        yield url


def reset_ledger(engine) -> None:
    """Empty every ledger and session table except the seeded system accounts."""
    tables = (events, earning_users, gpu_assignments, session_holds, sessions, hold_lots,
              lot_movements, holds, lots, transfers)
    with engine.begin() as conn:
        if conn.dialect.name == "postgresql":
            names = ", ".join(t.name for t in tables)
            conn.execute(text(f"TRUNCATE {names} RESTART IDENTITY"))
        else:
            for table in tables:
                conn.execute(table.delete())
        conn.execute(accounts.delete().where(accounts.c.kind != "system"))


@pytest.fixture(scope="module")
def module_postgres_url(request):
    """A fresh PostgreSQL database shared by one test module (e.g. with its hub)."""
    with fresh_postgres_database("credits_" + request.module.__name__.rpartition(".")[2]) as url:
        yield url


def migrated_sqlite_url(directory) -> str:
    """The URL of a new SQLite ledger database in ``directory``, at the schema's head."""
    url = f"sqlite:///{directory / 'ledger.sqlite'}"
    engine = ledger_database.make_engine(url)
    ledger_database.upgrade(engine)
    engine.dispose()
    return url


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def db_url(request, tmp_path):
    """A ledger database URL, empty and at the schema's head, on each backend."""
    if request.param == "sqlite":
        return migrated_sqlite_url(tmp_path)
    url = request.getfixturevalue("postgres_url")
    engine = ledger_database.make_engine(url)
    reset_ledger(engine)
    engine.dispose()
    return url


@pytest.fixture
def clock():
    return FakeClock()


@pytest.fixture
def ledger(db_url, clock):
    ledger = Ledger.open(db_url, clock=clock)
    yield ledger
    ledger.close()


@pytest.fixture
def ledger_verifies_after(ledger):
    """Whatever a test did, the ledger must still verify afterwards (use with usefixtures)."""
    from jupyterhub_credits.ledger.verify import verify

    yield
    report = verify(ledger.engine)
    assert report.ok, report.to_dict()


@pytest.fixture
def spawner_ledger(db_url):
    """A Ledger on the real clock for spawner tests; the spawners' shared contexts are reset."""
    from jupyterhub_credits.spawner.context import reset_contexts

    ledger = Ledger.open(db_url)
    yield ledger
    ledger.close()
    reset_contexts()
