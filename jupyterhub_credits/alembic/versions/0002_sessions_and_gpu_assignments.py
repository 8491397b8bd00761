"""sessions and gpu assignments

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-23

Notebook sessions paid through ledger holds (one open session per named
server), the holds each session placed, and the GPUs assigned to sessions
(a device belongs to at most one live session).
"""

import sqlalchemy as sa
from alembic import op

revision = '0002'
down_revision = '0001'
branch_labels = None
depends_on = None


def upgrade():
    op.create_table('credits_sessions',
    sa.Column('id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), autoincrement=True, nullable=False),
    sa.Column('key', sa.String(length=200), nullable=False),
    sa.Column('user', sa.String(length=255), nullable=False),
    sa.Column('server_name', sa.String(length=255), nullable=False),
    sa.Column('account', sa.String(length=255), nullable=False),
    sa.Column('image', sa.String(length=255), nullable=False),
    sa.Column('gpu_type', sa.String(length=64), nullable=False),
    sa.Column('gpus', sa.Integer(), nullable=False),
    sa.Column('rate_per_hour', sa.BigInteger(), nullable=False),
    sa.Column('held', sa.BigInteger(), nullable=False),
    sa.Column('state', sa.String(length=16), nullable=False),
    sa.Column('requested_at', sa.DateTime(), nullable=False),
    sa.Column('ready_at', sa.DateTime(), nullable=True),
    sa.Column('paid_until', sa.DateTime(), nullable=True),
    sa.Column('billed_until', sa.DateTime(), nullable=True),
    sa.Column('ended_at', sa.DateTime(), nullable=True),
    sa.Column('end_reason', sa.String(length=64), nullable=True),
    sa.Column('charged', sa.BigInteger(), nullable=True),
    sa.Column('auto_extend', sa.Boolean(), nullable=False),
    sa.Column('warnings', sa.JSON(), nullable=True),
    sa.Column('devices', sa.JSON(), nullable=True),
    sa.CheckConstraint("state IN ('starting', 'running', 'settling', 'ended')", name=op.f('ck_credits_sessions_state')),
    sa.CheckConstraint('gpus >= 0 AND rate_per_hour > 0 AND held >= 0', name=op.f('ck_credits_sessions_amounts')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_credits_sessions')),
    sa.UniqueConstraint('key', name=op.f('uq_credits_sessions_key'))
    )
    op.create_index('ix_credits_sessions_open_server', 'credits_sessions', ['user', 'server_name'], unique=True, sqlite_where=sa.text("state != 'ended'"), postgresql_where=sa.text("state != 'ended'"))
    op.create_index('ix_credits_sessions_state_paid_until', 'credits_sessions', ['state', 'paid_until'], unique=False)
    op.create_table('credits_gpu_assignments',
    sa.Column('id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), autoincrement=True, nullable=False),
    sa.Column('host', sa.String(length=255), nullable=False),
    sa.Column('gpu_type', sa.String(length=64), nullable=False),
    sa.Column('device', sa.String(length=128), nullable=False),
    sa.Column('session_id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=False),
    sa.Column('assigned_at', sa.DateTime(), nullable=False),
    sa.Column('released_at', sa.DateTime(), nullable=True),
    sa.ForeignKeyConstraint(['session_id'], ['credits_sessions.id'], name=op.f('fk_credits_gpu_assignments_session_id_credits_sessions')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_credits_gpu_assignments'))
    )
    op.create_index('ix_credits_gpu_assignments_live_device', 'credits_gpu_assignments', ['host', 'device'], unique=True, sqlite_where=sa.text('released_at IS NULL'), postgresql_where=sa.text('released_at IS NULL'))
    op.create_index(op.f('ix_credits_gpu_assignments_session_id'), 'credits_gpu_assignments', ['session_id'], unique=False)
    op.create_table('credits_session_holds',
    sa.Column('session_id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=False),
    sa.Column('seq', sa.Integer(), nullable=False),
    sa.Column('hold_key', sa.String(length=255), nullable=False),
    sa.Column('amount', sa.BigInteger(), nullable=False),
    sa.CheckConstraint('amount > 0', name=op.f('ck_credits_session_holds_amount_positive')),
    sa.ForeignKeyConstraint(['session_id'], ['credits_sessions.id'], name=op.f('fk_credits_session_holds_session_id_credits_sessions')),
    sa.PrimaryKeyConstraint('session_id', 'seq', name=op.f('pk_credits_session_holds')),
    sa.UniqueConstraint('hold_key', name=op.f('uq_credits_session_holds_hold_key'))
    )


def downgrade():
    op.drop_table('credits_session_holds')
    op.drop_index(op.f('ix_credits_gpu_assignments_session_id'), table_name='credits_gpu_assignments')
    op.drop_index('ix_credits_gpu_assignments_live_device', table_name='credits_gpu_assignments', sqlite_where=sa.text('released_at IS NULL'), postgresql_where=sa.text('released_at IS NULL'))
    op.drop_table('credits_gpu_assignments')
    op.drop_index('ix_credits_sessions_state_paid_until', table_name='credits_sessions')
    op.drop_index('ix_credits_sessions_open_server', table_name='credits_sessions', sqlite_where=sa.text("state != 'ended'"), postgresql_where=sa.text("state != 'ended'"))
    op.drop_table('credits_sessions')
