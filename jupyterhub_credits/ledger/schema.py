"""The ledger's tables (SQLAlchemy Core). Alembic migrations create them.

Vocabulary after TigerBeetle: *accounts* are debited and credited by
immutable *transfers*; a *hold* is a pending transfer that is later *posted*
or *voided* exactly once. Owner accounts (users, groups) hold their credits in
*lots*, so that credits with an expiry date can be spent soonest-expiring
first and expire on their own.

Only owner accounts cache a balance: system accounts (issuance, usage,
expired) take part in every transfer, and a cached balance there would make
every writer queue on one row. Their balance is the sum of their transfers.
"""

from __future__ import annotations

from datetime import datetime, timezone

from sqlalchemy import (
    JSON,
    BigInteger,
    CheckConstraint,
    Column,
    DateTime,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    TypeDecorator,
    text,
)

#: Table names carry a prefix so the ledger can share a database with JupyterHub.
PREFIX = "credits_"
#: Alembic's bookkeeping table, kept apart from JupyterHub's own ``alembic_version``.
VERSION_TABLE = "credits_alembic_version"

OWNER_KINDS = ("user", "group")
SYSTEM_ACCOUNTS = ("system:issuance", "system:usage", "system:expired")

#: Transfer kinds. ``hold`` and ``void`` reserve and release; they never move a balance.
TRANSFER_KINDS = ("grant", "deduct", "earn", "hold", "post", "void", "expire", "reverse")
BALANCE_NEUTRAL_KINDS = ("hold", "void")

HOLD_STATES = ("pending", "posted", "voided")


class UTCDateTime(TypeDecorator):
    """Timezone-aware UTC datetimes on every backend (SQLite stores naive text)."""

    impl = DateTime
    cache_ok = True

    def process_bind_param(self, value, dialect):
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to the ledger; use timezone-aware UTC")
        return value.astimezone(timezone.utc).replace(tzinfo=None)

    def process_result_value(self, value, dialect):
        if value is None:
            return None
        if isinstance(value, str):  # pragma: no cover - raw SQL on SQLite
            value = datetime.fromisoformat(value)
        return value.replace(tzinfo=timezone.utc)


# Integer primary keys autoincrement on SQLite only when declared INTEGER.
Id = BigInteger().with_variant(Integer(), "sqlite")

metadata = MetaData(
    naming_convention={
        "ix": "ix_%(column_0_label)s",
        "uq": "uq_%(table_name)s_%(column_0_name)s",
        "ck": "ck_%(table_name)s_%(constraint_name)s",
        "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
        "pk": "pk_%(table_name)s",
    }
)

accounts = Table(
    PREFIX + "accounts",
    metadata,
    Column("id", Id, primary_key=True, autoincrement=True),
    Column("name", String(255), nullable=False, unique=True),
    Column("kind", String(16), nullable=False),
    # Cached for owner accounts only (see module docstring); always 0 on system accounts.
    Column("balance", BigInteger, nullable=False, default=0),
    Column("reserved", BigInteger, nullable=False, default=0),
    Column("created_at", UTCDateTime, nullable=False),
    # Lifetime totals of owner accounts, kept in the transaction of each transfer (see
    # Ledger): earn credited less earn reversals; post debited less post reversals.
    Column("lifetime_earned", BigInteger, nullable=False, default=0, server_default=text("0")),
    Column("lifetime_spent", BigInteger, nullable=False, default=0, server_default=text("0")),
    CheckConstraint("kind IN ('user', 'group', 'system')", name="kind"),
    CheckConstraint(
        "kind = 'system' OR (reserved >= 0 AND balance >= reserved)", name="not_overdrawn"
    ),
    # The admin's account list: one kind, sorted by one figure, 50 at a time.
    Index("ix_credits_accounts_kind_balance", "kind", "balance"),
    Index("ix_credits_accounts_kind_lifetime_spent", "kind", "lifetime_spent"),
    Index("ix_credits_accounts_kind_lifetime_earned", "kind", "lifetime_earned"),
)

transfers = Table(
    PREFIX + "transfers",
    metadata,
    Column("id", Id, primary_key=True, autoincrement=True),
    # The caller's idempotency key; NULL only for rows the ledger derives itself
    # (the void of an unposted remainder, which shares its post's key).
    Column("key", String(255), nullable=True, unique=True),
    Column("kind", String(16), nullable=False),
    Column("debit_account_id", Id, ForeignKey(PREFIX + "accounts.id"), nullable=False),
    Column("credit_account_id", Id, ForeignKey(PREFIX + "accounts.id"), nullable=False),
    Column("amount", BigInteger, nullable=False),
    Column("created_at", UTCDateTime, nullable=False, index=True),
    Column("actor", String(255), nullable=False),
    Column("reason", Text, nullable=False, default=""),
    Column("metadata", JSON(none_as_null=True), nullable=True),
    # A digest of the request, to refuse an idempotency key reused for different content.
    Column("request_hash", String(64), nullable=True),
    # post/void: the hold they resolve.
    Column("pending_id", Id, ForeignKey(PREFIX + "transfers.id"), nullable=True, index=True),
    # reverse: the transfer it undoes (each transfer is reversed at most once).
    Column("reversal_of", Id, ForeignKey(PREFIX + "transfers.id"), nullable=True, unique=True),
    CheckConstraint("amount > 0", name="amount_positive"),
    CheckConstraint("debit_account_id <> credit_account_id", name="distinct_accounts"),
    CheckConstraint(
        "kind IN ('grant', 'deduct', 'earn', 'hold', 'post', 'void', 'expire', 'reverse')",
        name="kind",
    ),
    # One account's transfers (or one kind's) newest first, read from the index in order;
    # the first two also serve the foreign keys.
    Index("ix_credits_transfers_debit_account_id_id", "debit_account_id", "id"),
    Index("ix_credits_transfers_credit_account_id_id", "credit_account_id", "id"),
    Index("ix_credits_transfers_kind_id", "kind", "id"),
)

holds = Table(
    PREFIX + "holds",
    metadata,
    Column("transfer_id", Id, ForeignKey(PREFIX + "transfers.id"), primary_key=True),
    Column("account_id", Id, ForeignKey(PREFIX + "accounts.id"), nullable=False, index=True),
    Column("amount", BigInteger, nullable=False),
    Column("state", String(16), nullable=False),
    Column("posted", BigInteger, nullable=False, default=0),
    Column("timeout_at", UTCDateTime, nullable=True),
    Column("resolved_at", UTCDateTime, nullable=True),
    CheckConstraint("state IN ('pending', 'posted', 'voided')", name="state"),
    CheckConstraint("posted >= 0 AND posted <= amount", name="posted_within_hold"),
    Index("ix_credits_holds_state_timeout", "state", "timeout_at"),
)

lots = Table(
    PREFIX + "lots",
    metadata,
    Column("id", Id, primary_key=True, autoincrement=True),
    Column("account_id", Id, ForeignKey(PREFIX + "accounts.id"), nullable=False),
    # The transfer that credited these funds.
    Column("transfer_id", Id, ForeignKey(PREFIX + "transfers.id"), nullable=False, unique=True),
    Column("amount", BigInteger, nullable=False),
    Column("remaining", BigInteger, nullable=False),
    Column("reserved", BigInteger, nullable=False, default=0),
    Column("expires_at", UTCDateTime, nullable=True),
    CheckConstraint(
        "reserved >= 0 AND remaining >= reserved AND remaining <= amount", name="consistent"
    ),
    Index("ix_credits_lots_account_expires", "account_id", "expires_at"),
)

# Each debit of an owner account records which lots it drew from.
lot_movements = Table(
    PREFIX + "lot_movements",
    metadata,
    Column("id", Id, primary_key=True, autoincrement=True),
    Column("lot_id", Id, ForeignKey(PREFIX + "lots.id"), nullable=False, index=True),
    Column("transfer_id", Id, ForeignKey(PREFIX + "transfers.id"), nullable=False, index=True),
    Column("amount", BigInteger, nullable=False),
    CheckConstraint("amount > 0", name="amount_positive"),
)

# Which lots a pending hold reserves, so reserved credits survive their lot's expiry.
hold_lots = Table(
    PREFIX + "hold_lots",
    metadata,
    Column("hold_id", Id, ForeignKey(PREFIX + "holds.transfer_id"), primary_key=True),
    Column("lot_id", Id, ForeignKey(PREFIX + "lots.id"), primary_key=True, index=True),
    Column("amount", BigInteger, nullable=False),
    CheckConstraint("amount > 0", name="amount_positive"),
)
