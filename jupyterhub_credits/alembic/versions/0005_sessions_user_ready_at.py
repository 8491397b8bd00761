"""Index a user's sessions by ready time

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-26

Every batch of earning events reads the sender's sessions (``SessionStore.uptimes``:
user = ?, ready_at set, ordered by ready_at); without an index that is a scan of
every session ever run. Neither column changes on the meter's billing tick, so
its in-place (HOT) updates on PostgreSQL are unaffected.
"""

from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade():
    op.create_index("ix_credits_sessions_user_ready_at", "credits_sessions", ["user", "ready_at"],
                    unique=False)


def downgrade():
    op.drop_index("ix_credits_sessions_user_ready_at", table_name="credits_sessions")
