"""Temporary databases and logging shared by the benchmark scripts."""

from __future__ import annotations

import contextlib
import sys
import time
import uuid
from pathlib import Path

from sqlalchemy import create_engine, text

from jupyterhub_credits.ledger import database as ledger_database

DEFAULT_PG_ADMIN_URL = "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"


def log(message: str) -> None:
    """Progress goes to stderr; stdout carries only the JSON result."""
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


@contextlib.contextmanager
def sqlite_database(directory: str, name: str):
    """A new SQLite ledger file at the schema's head."""
    url = f"sqlite:///{Path(directory) / (name + '.sqlite')}"
    engine = ledger_database.make_engine(url)
    ledger_database.upgrade(engine)
    engine.dispose()
    yield url


@contextlib.contextmanager
def postgres_database(admin_url: str = DEFAULT_PG_ADMIN_URL):
    """A new PostgreSQL database at the schema's head, dropped afterwards."""
    admin = create_engine(ledger_database.normalize_url(admin_url), isolation_level="AUTOCOMMIT")
    name = f"credits_bench_{uuid.uuid4().hex[:10]}"
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    url = admin.url.set(database=name).render_as_string(hide_password=False)
    try:
        engine = ledger_database.make_engine(url)
        ledger_database.upgrade(engine)
        engine.dispose()
        yield url
    finally:
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()
