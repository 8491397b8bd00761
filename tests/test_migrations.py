"""The Alembic migrations build exactly the schema the code declares, on both backends."""

from __future__ import annotations

import multiprocessing
from datetime import datetime, timedelta, timezone

import pytest
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import insert, inspect, select, text

from jupyterhub_credits.ledger import Ledger
from jupyterhub_credits.ledger import database
from jupyterhub_credits.ledger.schema import SYSTEM_ACCOUNTS, VERSION_TABLE, accounts, metadata
from jupyterhub_credits.sessions import schema as _sessions_schema  # noqa: F401 - registers tables
from jupyterhub_credits.sessions.schema import sessions
from jupyterhub_credits.sessions.status import batch_statement, server_status

from conftest import reset_ledger


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


# --- 0007: a server's sessions by id -------------------------------------------------------

SERVER_INDEX = "ix_credits_sessions_user_server_name_id"
NOW = datetime(2026, 3, 2, 9, 0, tzinfo=timezone.utc)


def _session_indexes(engine) -> set[str]:
    return {index["name"] for index in inspect(engine).get_indexes("credits_sessions")}


def _many_sessions(users: int = 100, servers: int = 4, each: int = 10) -> list[dict]:
    """``users * servers * each`` sessions, the servers' interleaved by id; the last of
    every other server is still running."""
    rows = []
    for round_ in range(each):
        for user in range(users):
            for server in range(servers):
                running = round_ == each - 1 and (user + server) % 2 == 0
                at = NOW - timedelta(hours=each - round_)
                rows.append(dict(
                    key=f"s-{user}-{server}-{round_}", user=f"u{user}",
                    server_name=f"gpu{server}" if server else "", account=f"user:u{user}",
                    image="tf", gpu_type="a100", gpus=1, rate_per_hour=100, held=0,
                    state="running" if running else "ended", requested_at=at, ready_at=at,
                    ended_at=None if running else at + timedelta(minutes=30),
                    end_reason=None if running else f"stopped-{round_}"))
    return rows


def test_the_server_index_migrates_up_and_down_and_serves_the_status_poll(db_url):
    """The newest session of a server with no open one, ``max(id)`` for (user, server_name),
    is read from (user, server_name, id), not from every session of the user."""
    engine = database.make_engine(db_url)
    try:
        assert SERVER_INDEX in _session_indexes(engine)
        with engine.begin() as connection:
            command.downgrade(database.alembic_config(connection), "0006")
        assert SERVER_INDEX not in _session_indexes(engine)
        database.upgrade(engine)
        assert SERVER_INDEX in _session_indexes(engine)

        with engine.begin() as connection:
            connection.execute(insert(sessions), _many_sessions())
            connection.execute(text("ANALYZE"))
        postgres = engine.dialect.name == "postgresql"
        explain = "EXPLAIN " if postgres else "EXPLAIN QUERY PLAN "
        for size in (1, 2):  # one poll, and a batch (the lookups correlated to each row)
            parameters = {"now": NOW}
            for i in range(size):
                parameters.update({f"user_{i}": "u7", f"account_{i}": "user:u7",
                                   f"server_{i}": "gpu2"})
            statement = batch_statement(size).params(**parameters)
            with engine.connect() as connection:
                sql = str(statement.compile(connection, compile_kwargs={"literal_binds": True}))
                plan = "\n".join(str(row) for row in connection.execute(text(explain + sql)))
            assert SERVER_INDEX in plan, plan
            assert "ix_credits_sessions_user_ready_at" not in plan, plan

        # u7's gpu2 has ended (7 + 2 is odd): its status is its latest session.
        ended = server_status(engine, user="u7", account="user:u7", server_name="gpu2",
                              now=NOW).session
        assert (ended.key, ended.state, ended.end_reason) == ("s-7-2-9", "ended", "stopped-9")
        running = server_status(engine, user="u7", account="user:u7", server_name="gpu1",
                                now=NOW).session
        assert (running.key, running.state) == ("s-7-1-9", "running")
    finally:
        reset_ledger(engine)
        engine.dispose()


# --- 0008: the ledger's write paths as PostgreSQL functions ----------------------------------


def test_the_ledger_functions_migrate_up_and_down(db_url):
    """0008 installs the functions on PostgreSQL (and nothing on SQLite); a Ledger uses them
    where they are and writes through its Python path where they are not."""
    from jupyterhub_credits.ledger import functions

    engine = database.make_engine(db_url)
    postgres = engine.dialect.name == "postgresql"
    try:
        assert functions.installed(engine) is postgres
        assert Ledger(engine).uses_server_functions is postgres
        with engine.begin() as connection:
            command.downgrade(database.alembic_config(connection), "0007")
        assert database.current_revision(engine) == "0007"
        assert not functions.installed(engine)
        below = Ledger(engine)
        assert not below.uses_server_functions
        below.grant("alice", 10, key="g-0007", reason="r", actor="a")  # the Python path
        below.close()
        database.upgrade(engine)
        assert database.current_revision(engine) == database.head_revision() == "0008"
        assert functions.installed(engine) is postgres
        if postgres:
            above = Ledger(engine)
            deducted = above.deduct("alice", 10, key="d-0008", reason="r", actor="a")
            assert deducted.transfer.amount == 10
            above.close()
    finally:
        reset_ledger(engine)
        engine.dispose()
