"""Tables of earning events and of users' earning status.

They share the ledger's MetaData (and so its Alembic migrations). Every event
a user's hub or single-user server sends is kept with its outcome; the credits
an earned event brings move through the ledger (``transfer_id``), never here.
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
    Text,
)

from ..ledger.schema import PREFIX, Id, UTCDateTime, metadata

events = Table(
    PREFIX + "events",
    metadata,
    Column("id", Id, primary_key=True, autoincrement=True),
    Column("user", String(255), nullable=False),
    Column("kind", String(64), nullable=False),
    # The sender's idempotency key, unique per user (see the index below). A
    # training run's efficiency bonus is stored as its own row, keyed
    # ``<run key>#efficiency_bonus``.
    Column("key", String(255), nullable=False),
    # When the sender says it happened (a claim: never used to count caps).
    Column("time", UTCDateTime, nullable=True),
    # When the service received it: daily caps and rate limits count by this.
    Column("received_at", UTCDateTime, nullable=False),
    Column("source", String(16), nullable=False),
    Column("payload", JSON(none_as_null=True), nullable=True),
    Column("outcome", String(16), nullable=False),
    # Units earned (0 unless outcome is 'earned').
    Column("points", BigInteger, nullable=False, default=0),
    Column("rule", String(64), nullable=True),
    Column("reason", Text, nullable=False, default=""),
    # notebook_activity: the active minutes credited.
    Column("minutes", Integer, nullable=True),
    # When the earned credits expire (kept so a retried ledger transfer is identical).
    Column("expires_at", UTCDateTime, nullable=True),
    # The ledger's earn transfer; NULL until it is made (right after the event is stored).
    Column("transfer_id", Id, ForeignKey(PREFIX + "transfers.id"), nullable=True),
    CheckConstraint("outcome IN ('earned', 'capped', 'rejected')", name="outcome"),
    CheckConstraint("source IN ('hub', 'server')", name="source"),
    CheckConstraint("points >= 0 AND (points = 0 OR outcome = 'earned')", name="points"),
    Index("ix_credits_events_user_key", "user", "key", unique=True),
    Index("ix_credits_events_user_received_at", "user", "received_at"),
)

# One row per user who ever sent an event: its row lock serialises that user's
# event batches, and an admin can freeze the user's earning.
earning_users = Table(
    PREFIX + "earning_users",
    metadata,
    Column("user", String(255), primary_key=True),
    Column("frozen", Boolean, nullable=False, default=False),
    Column("frozen_at", UTCDateTime, nullable=True),
    Column("frozen_by", String(255), nullable=True),
    Column("frozen_reason", Text, nullable=True),
)
