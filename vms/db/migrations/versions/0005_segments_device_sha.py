"""segments: the start as the agent sent it, and an index by device and content (sha256), so a
retried upload whose start the hub's skew correction moved is found as a duplicate

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-06
"""
import sqlalchemy as sa
from alembic import op

revision = '0005'
down_revision = '0004'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('segments', schema=None) as batch_op:
        batch_op.add_column(sa.Column('agent_start', sa.Float(), nullable=True))
        batch_op.create_index('ix_segments_device_sha', ['device_id', 'sha256'], unique=False)


def downgrade() -> None:
    with op.batch_alter_table('segments', schema=None) as batch_op:
        batch_op.drop_index('ix_segments_device_sha')
        batch_op.drop_column('agent_start')
