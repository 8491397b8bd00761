"""Index a server's sessions by id

Revision ID: 0007
Revises: 0006
Create Date: 2026-11-28

Every status poll of a server with no open session (``sessions.status``) reads the
newest session of that server, ``max(id)`` for (user, server_name). The partial
index on open sessions cannot answer it, and (user, ready_at) reads every session the
user ever ran; (user, server_name, id) reads one index entry. None of the columns
changes on the meter's billing tick, so its in-place (HOT) updates on PostgreSQL are
unaffected.
"""

from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade():
    op.create_index("ix_credits_sessions_user_server_name_id", "credits_sessions",
                    ["user", "server_name", "id"], unique=False)


def downgrade():
    op.drop_index("ix_credits_sessions_user_server_name_id", table_name="credits_sessions")
