"""earning events and earning status per user

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-24

Every earning event with its outcome (earned, capped, rejected + why), unique
per (user, key) so a retried event is recognised, and linked to the ledger's
earn transfer; one row per earning user (a lock for that user's batches, and
the admin's freeze).
"""

import sqlalchemy as sa
from alembic import op

revision = '0004'
down_revision = '0003'
branch_labels = None
depends_on = None


def upgrade():
    op.create_table('credits_earning_users',
    sa.Column('user', sa.String(length=255), nullable=False),
    sa.Column('frozen', sa.Boolean(), nullable=False),
    sa.Column('frozen_at', sa.DateTime(), nullable=True),
    sa.Column('frozen_by', sa.String(length=255), nullable=True),
    sa.Column('frozen_reason', sa.Text(), nullable=True),
    sa.PrimaryKeyConstraint('user', name=op.f('pk_credits_earning_users'))
    )
    op.create_table('credits_events',
    sa.Column('id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), autoincrement=True, nullable=False),
    sa.Column('user', sa.String(length=255), nullable=False),
    sa.Column('kind', sa.String(length=64), nullable=False),
    sa.Column('key', sa.String(length=255), nullable=False),
    sa.Column('time', sa.DateTime(), nullable=True),
    sa.Column('received_at', sa.DateTime(), nullable=False),
    sa.Column('source', sa.String(length=16), nullable=False),
    sa.Column('payload', sa.JSON(none_as_null=True), nullable=True),
    sa.Column('outcome', sa.String(length=16), nullable=False),
    sa.Column('points', sa.BigInteger(), nullable=False),
    sa.Column('rule', sa.String(length=64), nullable=True),
    sa.Column('reason', sa.Text(), nullable=False),
    sa.Column('minutes', sa.Integer(), nullable=True),
    sa.Column('expires_at', sa.DateTime(), nullable=True),
    sa.Column('transfer_id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=True),
    sa.CheckConstraint("outcome IN ('earned', 'capped', 'rejected')", name=op.f('ck_credits_events_outcome')),
    sa.CheckConstraint("points >= 0 AND (points = 0 OR outcome = 'earned')", name=op.f('ck_credits_events_points')),
    sa.CheckConstraint("source IN ('hub', 'server')", name=op.f('ck_credits_events_source')),
    sa.ForeignKeyConstraint(['transfer_id'], ['credits_transfers.id'], name=op.f('fk_credits_events_transfer_id_credits_transfers')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_credits_events'))
    )
    op.create_index('ix_credits_events_user_key', 'credits_events', ['user', 'key'], unique=True)
    op.create_index('ix_credits_events_user_received_at', 'credits_events', ['user', 'received_at'], unique=False)


def downgrade():
    op.drop_index('ix_credits_events_user_received_at', table_name='credits_events')
    op.drop_index('ix_credits_events_user_key', table_name='credits_events')
    op.drop_table('credits_events')
    op.drop_table('credits_earning_users')
