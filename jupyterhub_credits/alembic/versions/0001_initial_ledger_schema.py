"""initial ledger schema

Revision ID: 0001
Revises: 
Create Date: 2026-11-23

Accounts, immutable transfers, holds, lots (with expiry) and the records that
tie debits and holds to lots; seeds the three system accounts.
"""

from datetime import datetime, timezone

import sqlalchemy as sa
from alembic import op

revision = '0001'
down_revision = None
branch_labels = None
depends_on = None


def upgrade():
    op.create_table('credits_accounts',
    sa.Column('id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), autoincrement=True, nullable=False),
    sa.Column('name', sa.String(length=255), nullable=False),
    sa.Column('kind', sa.String(length=16), nullable=False),
    sa.Column('balance', sa.BigInteger(), nullable=False),
    sa.Column('reserved', sa.BigInteger(), nullable=False),
    sa.Column('created_at', sa.DateTime(), nullable=False),
    sa.CheckConstraint("kind = 'system' OR (reserved >= 0 AND balance >= reserved)", name=op.f('ck_credits_accounts_not_overdrawn')),
    sa.CheckConstraint("kind IN ('user', 'group', 'system')", name=op.f('ck_credits_accounts_kind')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_credits_accounts')),
    sa.UniqueConstraint('name', name=op.f('uq_credits_accounts_name'))
    )
    op.create_table('credits_transfers',
    sa.Column('id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), autoincrement=True, nullable=False),
    sa.Column('key', sa.String(length=255), nullable=True),
    sa.Column('kind', sa.String(length=16), nullable=False),
    sa.Column('debit_account_id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=False),
    sa.Column('credit_account_id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=False),
    sa.Column('amount', sa.BigInteger(), nullable=False),
    sa.Column('created_at', sa.DateTime(), nullable=False),
    sa.Column('actor', sa.String(length=255), nullable=False),
    sa.Column('reason', sa.Text(), nullable=False),
    sa.Column('metadata', sa.JSON(), nullable=True),
    sa.Column('request_hash', sa.String(length=64), nullable=True),
    sa.Column('pending_id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=True),
    sa.Column('reversal_of', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=True),
    sa.CheckConstraint("kind IN ('grant', 'deduct', 'earn', 'hold', 'post', 'void', 'expire', 'reverse')", name=op.f('ck_credits_transfers_kind')),
    sa.CheckConstraint('amount > 0', name=op.f('ck_credits_transfers_amount_positive')),
    sa.CheckConstraint('debit_account_id <> credit_account_id', name=op.f('ck_credits_transfers_distinct_accounts')),
    sa.ForeignKeyConstraint(['credit_account_id'], ['credits_accounts.id'], name=op.f('fk_credits_transfers_credit_account_id_credits_accounts')),
    sa.ForeignKeyConstraint(['debit_account_id'], ['credits_accounts.id'], name=op.f('fk_credits_transfers_debit_account_id_credits_accounts')),
    sa.ForeignKeyConstraint(['pending_id'], ['credits_transfers.id'], name=op.f('fk_credits_transfers_pending_id_credits_transfers')),
    sa.ForeignKeyConstraint(['reversal_of'], ['credits_transfers.id'], name=op.f('fk_credits_transfers_reversal_of_credits_transfers')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_credits_transfers')),
    sa.UniqueConstraint('key', name=op.f('uq_credits_transfers_key')),
    sa.UniqueConstraint('reversal_of', name=op.f('uq_credits_transfers_reversal_of'))
    )
    op.create_index(op.f('ix_credits_transfers_created_at'), 'credits_transfers', ['created_at'], unique=False)
    op.create_index(op.f('ix_credits_transfers_credit_account_id'), 'credits_transfers', ['credit_account_id'], unique=False)
    op.create_index(op.f('ix_credits_transfers_debit_account_id'), 'credits_transfers', ['debit_account_id'], unique=False)
    op.create_index(op.f('ix_credits_transfers_pending_id'), 'credits_transfers', ['pending_id'], unique=False)
    op.create_table('credits_holds',
    sa.Column('transfer_id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=False),
    sa.Column('account_id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=False),
    sa.Column('amount', sa.BigInteger(), nullable=False),
    sa.Column('state', sa.String(length=16), nullable=False),
    sa.Column('posted', sa.BigInteger(), nullable=False),
    sa.Column('timeout_at', sa.DateTime(), nullable=True),
    sa.Column('resolved_at', sa.DateTime(), nullable=True),
    sa.CheckConstraint("state IN ('pending', 'posted', 'voided')", name=op.f('ck_credits_holds_state')),
    sa.CheckConstraint('posted >= 0 AND posted <= amount', name=op.f('ck_credits_holds_posted_within_hold')),
    sa.ForeignKeyConstraint(['account_id'], ['credits_accounts.id'], name=op.f('fk_credits_holds_account_id_credits_accounts')),
    sa.ForeignKeyConstraint(['transfer_id'], ['credits_transfers.id'], name=op.f('fk_credits_holds_transfer_id_credits_transfers')),
    sa.PrimaryKeyConstraint('transfer_id', name=op.f('pk_credits_holds'))
    )
    op.create_index(op.f('ix_credits_holds_account_id'), 'credits_holds', ['account_id'], unique=False)
    op.create_index('ix_credits_holds_state_timeout', 'credits_holds', ['state', 'timeout_at'], unique=False)
    op.create_table('credits_lots',
    sa.Column('id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), autoincrement=True, nullable=False),
    sa.Column('account_id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=False),
    sa.Column('transfer_id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=False),
    sa.Column('amount', sa.BigInteger(), nullable=False),
    sa.Column('remaining', sa.BigInteger(), nullable=False),
    sa.Column('reserved', sa.BigInteger(), nullable=False),
    sa.Column('expires_at', sa.DateTime(), nullable=True),
    sa.CheckConstraint('reserved >= 0 AND remaining >= reserved AND remaining <= amount', name=op.f('ck_credits_lots_consistent')),
    sa.ForeignKeyConstraint(['account_id'], ['credits_accounts.id'], name=op.f('fk_credits_lots_account_id_credits_accounts')),
    sa.ForeignKeyConstraint(['transfer_id'], ['credits_transfers.id'], name=op.f('fk_credits_lots_transfer_id_credits_transfers')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_credits_lots')),
    sa.UniqueConstraint('transfer_id', name=op.f('uq_credits_lots_transfer_id'))
    )
    op.create_index('ix_credits_lots_account_expires', 'credits_lots', ['account_id', 'expires_at'], unique=False)
    op.create_table('credits_hold_lots',
    sa.Column('hold_id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=False),
    sa.Column('lot_id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=False),
    sa.Column('amount', sa.BigInteger(), nullable=False),
    sa.CheckConstraint('amount > 0', name=op.f('ck_credits_hold_lots_amount_positive')),
    sa.ForeignKeyConstraint(['hold_id'], ['credits_holds.transfer_id'], name=op.f('fk_credits_hold_lots_hold_id_credits_holds')),
    sa.ForeignKeyConstraint(['lot_id'], ['credits_lots.id'], name=op.f('fk_credits_hold_lots_lot_id_credits_lots')),
    sa.PrimaryKeyConstraint('hold_id', 'lot_id', name=op.f('pk_credits_hold_lots'))
    )
    op.create_index(op.f('ix_credits_hold_lots_lot_id'), 'credits_hold_lots', ['lot_id'], unique=False)
    op.create_table('credits_lot_movements',
    sa.Column('id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), autoincrement=True, nullable=False),
    sa.Column('lot_id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=False),
    sa.Column('transfer_id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=False),
    sa.Column('amount', sa.BigInteger(), nullable=False),
    sa.CheckConstraint('amount > 0', name=op.f('ck_credits_lot_movements_amount_positive')),
    sa.ForeignKeyConstraint(['lot_id'], ['credits_lots.id'], name=op.f('fk_credits_lot_movements_lot_id_credits_lots')),
    sa.ForeignKeyConstraint(['transfer_id'], ['credits_transfers.id'], name=op.f('fk_credits_lot_movements_transfer_id_credits_transfers')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_credits_lot_movements'))
    )
    op.create_index(op.f('ix_credits_lot_movements_lot_id'), 'credits_lot_movements', ['lot_id'], unique=False)
    op.create_index(op.f('ix_credits_lot_movements_transfer_id'), 'credits_lot_movements', ['transfer_id'], unique=False)

    accounts = sa.table(
        "credits_accounts",
        sa.column("name", sa.String),
        sa.column("kind", sa.String),
        sa.column("balance", sa.BigInteger),
        sa.column("reserved", sa.BigInteger),
        sa.column("created_at", sa.DateTime),
    )
    now = datetime.now(timezone.utc).replace(tzinfo=None)
    op.bulk_insert(
        accounts,
        [
            {"name": name, "kind": "system", "balance": 0, "reserved": 0, "created_at": now}
            for name in ("system:issuance", "system:usage", "system:expired")
        ],
    )


def downgrade():
    op.drop_index(op.f('ix_credits_lot_movements_transfer_id'), table_name='credits_lot_movements')
    op.drop_index(op.f('ix_credits_lot_movements_lot_id'), table_name='credits_lot_movements')
    op.drop_table('credits_lot_movements')
    op.drop_index(op.f('ix_credits_hold_lots_lot_id'), table_name='credits_hold_lots')
    op.drop_table('credits_hold_lots')
    op.drop_index('ix_credits_lots_account_expires', table_name='credits_lots')
    op.drop_table('credits_lots')
    op.drop_index('ix_credits_holds_state_timeout', table_name='credits_holds')
    op.drop_index(op.f('ix_credits_holds_account_id'), table_name='credits_holds')
    op.drop_table('credits_holds')
    op.drop_index(op.f('ix_credits_transfers_pending_id'), table_name='credits_transfers')
    op.drop_index(op.f('ix_credits_transfers_debit_account_id'), table_name='credits_transfers')
    op.drop_index(op.f('ix_credits_transfers_credit_account_id'), table_name='credits_transfers')
    op.drop_index(op.f('ix_credits_transfers_created_at'), table_name='credits_transfers')
    op.drop_table('credits_transfers')
    op.drop_table('credits_accounts')
