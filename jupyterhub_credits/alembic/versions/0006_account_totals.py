"""Lifetime totals on owner accounts; indexes for the account list and history pages

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-27

``lifetime_earned`` (earn credited, less what reversals of earns took back) and
``lifetime_spent`` (post debited, less reversals of posts) are kept by the
ledger in the transaction of each transfer, so the admin's account list can
sort 100,000 users by them without summing transfers. The backfill computes
them once from the transfers.

Indexes: (kind, balance), (kind, lifetime_spent), (kind, lifetime_earned) let
``WHERE kind = 'user' ORDER BY <column> DESC LIMIT 50`` read 50 index entries
instead of sorting every account. (debit_account_id, id) and (credit_account_id,
id) replace the single-column indexes: they serve the same foreign-key and
account lookups, and also read one account's history newest first without
sorting all its transfers. (kind, id) reads the audit log of one kind of
transfer (e.g. reversals, a few in a million) newest first.
"""

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None

# Each owner account's totals from its transfers. A reversal of an earn debits the
# owner what it took back; a reversal of a post credits the owner the whole post.
BACKFILL = """
UPDATE credits_accounts SET
  lifetime_earned = totals.earned,
  lifetime_spent = totals.spent
FROM (
  SELECT account_id, SUM(earned) AS earned, SUM(spent) AS spent FROM (
    SELECT t.credit_account_id AS account_id, t.amount AS earned, 0 AS spent
      FROM credits_transfers t WHERE t.kind = 'earn'
    UNION ALL
    SELECT t.debit_account_id, 0, t.amount
      FROM credits_transfers t WHERE t.kind = 'post'
    UNION ALL
    SELECT r.debit_account_id, -r.amount, 0
      FROM credits_transfers r JOIN credits_transfers o ON o.id = r.reversal_of
      WHERE r.kind = 'reverse' AND o.kind = 'earn'
    UNION ALL
    SELECT r.credit_account_id, 0, -r.amount
      FROM credits_transfers r JOIN credits_transfers o ON o.id = r.reversal_of
      WHERE r.kind = 'reverse' AND o.kind = 'post'
  ) AS legs
  GROUP BY account_id
) AS totals
WHERE credits_accounts.id = totals.account_id AND credits_accounts.kind IN ('user', 'group')
"""

ACCOUNT_INDEXES = {
    "ix_credits_accounts_kind_balance": ["kind", "balance"],
    "ix_credits_accounts_kind_lifetime_spent": ["kind", "lifetime_spent"],
    "ix_credits_accounts_kind_lifetime_earned": ["kind", "lifetime_earned"],
}
TRANSFER_INDEXES = {
    "ix_credits_transfers_debit_account_id_id": ["debit_account_id", "id"],
    "ix_credits_transfers_credit_account_id_id": ["credit_account_id", "id"],
    "ix_credits_transfers_kind_id": ["kind", "id"],
}


def upgrade():
    op.add_column("credits_accounts", sa.Column("lifetime_earned", sa.BigInteger(),
                                                server_default=sa.text("0"), nullable=False))
    op.add_column("credits_accounts", sa.Column("lifetime_spent", sa.BigInteger(),
                                                server_default=sa.text("0"), nullable=False))
    op.execute(BACKFILL)
    for name, columns in ACCOUNT_INDEXES.items():
        op.create_index(name, "credits_accounts", columns, unique=False)
    for name, columns in TRANSFER_INDEXES.items():
        op.create_index(name, "credits_transfers", columns, unique=False)
    op.drop_index("ix_credits_transfers_debit_account_id", table_name="credits_transfers")
    op.drop_index("ix_credits_transfers_credit_account_id", table_name="credits_transfers")


def downgrade():
    op.create_index("ix_credits_transfers_credit_account_id", "credits_transfers",
                    ["credit_account_id"], unique=False)
    op.create_index("ix_credits_transfers_debit_account_id", "credits_transfers",
                    ["debit_account_id"], unique=False)
    for name in TRANSFER_INDEXES:
        op.drop_index(name, table_name="credits_transfers")
    for name in ACCOUNT_INDEXES:
        op.drop_index(name, table_name="credits_accounts")
    # Plain ALTER TABLE ... DROP COLUMN (SQLite >= 3.35): the columns are in no index or
    # constraint any more, and a batch copy of the table would break the foreign keys to it.
    op.drop_column("credits_accounts", "lifetime_spent")
    op.drop_column("credits_accounts", "lifetime_earned")
