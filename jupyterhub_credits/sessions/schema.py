"""Tables of GPU notebook sessions and the GPUs assigned to them.

They share the ledger's MetaData (and so its Alembic migrations) but not its
invariants: a session only ever touches money through the ledger's holds.
"""

from __future__ import annotations

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    CheckConstraint,
    Column,
    ForeignKey,
    Index,
    Integer,
    String,
    Table,
    text,
)

from ..ledger.schema import PREFIX, Id, UTCDateTime, metadata

SESSION_STATES = ("starting", "running", "settling", "ended")
OPEN_STATES = ("starting", "running", "settling")

sessions = Table(
    PREFIX + "sessions",
    metadata,
    Column("id", Id, primary_key=True, autoincrement=True),
    # Prefix of every idempotency key this session uses in the ledger.
    Column("key", String(200), nullable=False, unique=True),
    Column("user", String(255), nullable=False),
    Column("server_name", String(255), nullable=False, default=""),
    # The account that pays: the user's own, or a group pool.
    Column("account", String(255), nullable=False),
    Column("image", String(255), nullable=False),
    Column("gpu_type", String(64), nullable=False),
    Column("gpus", Integer, nullable=False),
    Column("rate_per_hour", BigInteger, nullable=False),
    Column("held", BigInteger, nullable=False, default=0),
    Column("state", String(16), nullable=False),
    Column("requested_at", UTCDateTime, nullable=False),
    Column("ready_at", UTCDateTime, nullable=True),
    Column("paid_until", UTCDateTime, nullable=True),
    Column("billed_until", UTCDateTime, nullable=True),
    Column("ended_at", UTCDateTime, nullable=True),
    Column("end_reason", String(64), nullable=True),
    Column("charged", BigInteger, nullable=True),
    Column("auto_extend", Boolean, nullable=False, default=False),
    # Warning thresholds (seconds before paid_until) already given.
    Column("warnings", JSON, nullable=True),
    Column("devices", JSON, nullable=True),
    CheckConstraint("state IN ('starting', 'running', 'settling', 'ended')", name="state"),
    CheckConstraint("gpus >= 0 AND rate_per_hour > 0 AND held >= 0", name="amounts"),
    # One open session per named server.
    Index("ix_credits_sessions_open_server", "user", "server_name", unique=True,
          sqlite_where=text("state != 'ended'"), postgresql_where=text("state != 'ended'")),
    Index("ix_credits_sessions_state_paid_until", "state", "paid_until"),
    # A user's sessions by ready time: every batch of earning events reads them.
    Index("ix_credits_sessions_user_ready_at", "user", "ready_at"),
    # A server's sessions by id: its newest (``max(id)``) is one index entry, for the
    # status poll of a server with no open session.
    Index("ix_credits_sessions_user_server_name_id", "user", "server_name", "id"),
)

session_holds = Table(
    PREFIX + "session_holds",
    metadata,
    Column("session_id", Id, ForeignKey(PREFIX + "sessions.id"), primary_key=True),
    Column("seq", Integer, primary_key=True),
    Column("hold_key", String(255), nullable=False, unique=True),
    Column("amount", BigInteger, nullable=False),
    CheckConstraint("amount > 0", name="amount_positive"),
)

gpu_assignments = Table(
    PREFIX + "gpu_assignments",
    metadata,
    Column("id", Id, primary_key=True, autoincrement=True),
    Column("host", String(255), nullable=False),
    Column("gpu_type", String(64), nullable=False),
    Column("device", String(128), nullable=False),
    Column("session_id", Id, ForeignKey(PREFIX + "sessions.id"), nullable=False, index=True),
    Column("assigned_at", UTCDateTime, nullable=False),
    Column("released_at", UTCDateTime, nullable=True),
    # A device belongs to at most one live session: the database says so, not a lock.
    Index("ix_credits_gpu_assignments_live_device", "host", "device", unique=True,
          sqlite_where=text("released_at IS NULL"), postgresql_where=text("released_at IS NULL")),
)
