"""Connecting to the ledger's database: engines, write transactions, retries, migrations.

SQLite (the embedded default) serialises writers: every write transaction is
``BEGIN IMMEDIATE`` so two writers never both read and then both write.
PostgreSQL (production) runs READ COMMITTED with row locks; the rare
serialization failure or deadlock is retried from the start.
"""

from __future__ import annotations

import logging
import random
import time
from contextlib import contextmanager
from pathlib import Path

from sqlalchemy import create_engine, event, inspect, text
from sqlalchemy.engine import Engine, make_url
from sqlalchemy.exc import DBAPIError, OperationalError

from .schema import VERSION_TABLE

log = logging.getLogger(__name__)

DEFAULT_URL = "sqlite:///jupyterhub_credits.sqlite"
MIGRATIONS = Path(__file__).parent.parent / "alembic"

# PostgreSQL SQLSTATEs that mean "nothing happened, try again".
RETRYABLE_SQLSTATES = {"40001", "40P01"}
MAX_ATTEMPTS = 30


def normalize_url(url: str) -> str:
    """Use psycopg 3 for a bare ``postgresql://`` URL (SQLAlchemy would pick psycopg2)."""
    parsed = make_url(url)
    if parsed.drivername in ("postgresql", "postgres"):
        parsed = parsed.set(drivername="postgresql+psycopg")
    return parsed.render_as_string(hide_password=False)


def make_engine(url: str = DEFAULT_URL, **kwargs) -> Engine:
    url = normalize_url(url)
    backend = make_url(url).get_backend_name()
    if backend == "sqlite":
        connect_args = kwargs.pop("connect_args", {})
        # The driver must not open transactions behind our back: we say BEGIN IMMEDIATE.
        connect_args.setdefault("timeout", 60)
        connect_args.setdefault("check_same_thread", False)
        engine = create_engine(url, connect_args=connect_args, **kwargs)
        _make_sqlite_writes_immediate(engine)
        return engine
    # No ping before every checkout (two extra round trips per operation): a
    # connection that died is invalidated on first use and the operation retried.
    kwargs.setdefault("pool_recycle", 1800)
    return create_engine(url, **kwargs)


def _make_sqlite_writes_immediate(engine: Engine) -> None:
    @event.listens_for(engine, "connect")
    def _connect(dbapi_connection, _record):
        dbapi_connection.isolation_level = None  # autocommit: we issue BEGIN ourselves
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA foreign_keys=ON")
        if engine.url.database not in (None, "", ":memory:"):
            # WAL lets readers run while one writer writes.
            cursor.execute("PRAGMA journal_mode=WAL")
            cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _begin(connection):
        # Readers (execution option ``ledger_read_only``) take no write lock.
        if connection.get_execution_options().get("ledger_read_only"):
            connection.exec_driver_sql("BEGIN")
        else:
            connection.exec_driver_sql("BEGIN IMMEDIATE")


@contextmanager
def read_transaction(engine: Engine):
    """One consistent snapshot for every statement of a read; never blocks writers.

    PostgreSQL's default READ COMMITTED gives each statement its own snapshot,
    so a multi-statement read (verify, a balance) could mix states.
    """
    with engine.connect() as connection:
        if connection.dialect.name == "postgresql":
            connection = connection.execution_options(isolation_level="REPEATABLE READ",
                                                      postgresql_readonly=True)
        else:
            connection = connection.execution_options(ledger_read_only=True)
        with connection.begin():
            yield connection


def is_retryable(error: DBAPIError) -> bool:
    if error.connection_invalidated:  # the server closed it (restart, idle timeout)
        return True
    sqlstate = getattr(error.orig, "sqlstate", None)
    if sqlstate in RETRYABLE_SQLSTATES:
        return True
    # SQLite: a writer that waited past its busy timeout.
    return isinstance(error, OperationalError) and "database is locked" in str(error.orig)


@contextmanager
def write_transaction(engine: Engine):
    """One database transaction; commits on success, rolls back on any error."""
    with engine.begin() as connection:
        yield connection


def run_with_retries(engine: Engine, work, *, attempts: int = MAX_ATTEMPTS):
    """Run ``work(connection)`` in a transaction, again from scratch on a transient conflict."""
    for attempt in range(1, attempts + 1):
        try:
            with write_transaction(engine) as connection:
                return work(connection)
        except DBAPIError as error:
            if attempt == attempts or not is_retryable(error):
                raise
            # Jittered back-off so colliding writers do not collide again.
            time.sleep(random.uniform(0, 0.002 * attempt))
            log.debug("retrying ledger transaction after %s (attempt %d)", error.orig, attempt)
    raise AssertionError("unreachable")  # pragma: no cover


# --- migrations --------------------------------------------------------------


def alembic_config(connection=None):
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    config.attributes["connection"] = connection
    return config


def head_revision() -> str:
    from alembic.script import ScriptDirectory

    return ScriptDirectory.from_config(alembic_config()).get_current_head()


def current_revision(engine: Engine) -> str | None:
    with engine.connect() as connection:
        if not inspect(connection).has_table(VERSION_TABLE):
            return None
        return connection.execute(text(f"SELECT version_num FROM {VERSION_TABLE}")).scalar()


def upgrade(engine: Engine, revision: str = "head") -> None:
    """Bring the schema to ``revision``; safe when several processes start at once."""
    from alembic import command

    with engine.begin() as connection:
        if connection.dialect.name == "postgresql":
            # Serialise concurrent upgrades; released at commit.
            connection.execute(text("SELECT pg_advisory_xact_lock(727001)"))
        command.upgrade(alembic_config(connection), revision)


def ensure_schema(engine: Engine) -> None:
    """Upgrade at start-up unless already at head (the cheap check first)."""
    if current_revision(engine) != head_revision():
        upgrade(engine)
