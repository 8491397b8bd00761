"""The Alembic migrations build exactly the schema the code declares, on both backends."""

from __future__ import annotations

import multiprocessing

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import inspect, select, text

from jupyterhub_credits.ledger import Ledger
from jupyterhub_credits.ledger import database
from jupyterhub_credits.ledger.schema import SYSTEM_ACCOUNTS, VERSION_TABLE, accounts, metadata
from jupyterhub_credits.sessions import schema as _sessions_schema  # noqa: F401 - registers tables


def test_migrated_schema_matches_the_code(db_url):
    engine = database.make_engine(db_url)
    with engine.connect() as conn:
        context = MigrationContext.configure(conn, opts={"version_table": VERSION_TABLE})
        differences = compare_metadata(context, metadata)
    engine.dispose()
    assert differences == []


def test_upgrade_seeds_system_accounts_and_is_repeatable(db_url):
    engine = database.make_engine(db_url)
    database.upgrade(engine)  # a second upgrade is a no-op
    database.ensure_schema(engine)
    assert database.current_revision(engine) == database.head_revision()
    with engine.connect() as conn:
        names = conn.execute(select(accounts.c.name).where(accounts.c.kind == "system")
                             .order_by(accounts.c.id)).scalars().all()
    engine.dispose()
    assert names == list(SYSTEM_ACCOUNTS)


def test_open_creates_the_schema_in_a_new_sqlite_file(tmp_path):
    url = f"sqlite:///{tmp_path / 'new.sqlite'}"
    ledger = Ledger.open(url)
    try:
        assert inspect(ledger.engine).has_table(VERSION_TABLE)
        assert ledger.balance("system:issuance").total == 0
    finally:
        ledger.close()


def _open_and_grant(url: str, user: str) -> None:
    ledger = Ledger.open(url)
    ledger.grant(user, 1000, key=f"start-{user}", reason="r", actor="test")
    ledger.close()


@pytest.mark.postgres
def test_processes_starting_together_on_an_empty_database(postgres_url):
    """Several services upgrading an empty PostgreSQL database at once: one schema, no error."""
    admin = database.make_engine(postgres_url)
    name = "credits_race_" + multiprocessing.current_process().name.lower().replace("-", "_")
    with admin.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        conn.execute(text(f'DROP DATABASE IF EXISTS "{name}"'))
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    url = admin.url.set(database=name).render_as_string(hide_password=False)
    try:
        context = multiprocessing.get_context("spawn")
        workers = [context.Process(target=_open_and_grant, args=(url, f"u{i}")) for i in range(4)]
        for worker in workers:
            worker.start()
        for worker in workers:
            worker.join(120)
        assert [worker.exitcode for worker in workers] == [0, 0, 0, 0]
        ledger = Ledger(database.make_engine(url))
        assert sorted(ledger.account_names())[-4:] == ["user:u0", "user:u1", "user:u2", "user:u3"]
        ledger.close()
    finally:
        with admin.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()
