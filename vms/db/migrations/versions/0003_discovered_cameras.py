"""discovered cameras awaiting (or holding) an admin's decision

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-30
"""
import sqlalchemy as sa
from alembic import op

revision = '0003'
down_revision = '0002'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('discovered_cameras',
    sa.Column('device_id', sa.String(length=20), nullable=False),
    sa.Column('agent_id', sa.String(length=100), nullable=False),
    sa.Column('source', sa.String(length=16), nullable=False),
    sa.Column('name', sa.String(length=200), nullable=False),
    sa.Column('location', sa.String(length=200), nullable=False),
    sa.Column('manufacturer', sa.String(length=200), nullable=True),
    sa.Column('model', sa.String(length=200), nullable=True),
    sa.Column('serial', sa.String(length=200), nullable=True),
    sa.Column('address', sa.String(length=300), nullable=True),
    sa.Column('stream_uri', sa.String(length=1000), nullable=True),
    sa.Column('first_seen_at', sa.Float(), nullable=False),
    sa.Column('last_seen_at', sa.Float(), nullable=False),
    sa.Column('state', sa.String(length=16), nullable=False),
    sa.Column('decided_by', sa.String(length=100), nullable=True),
    sa.Column('decided_at', sa.Float(), nullable=True),
    sa.Column('comment', sa.Text(), nullable=False),
    sa.PrimaryKeyConstraint('device_id')
    )
    with op.batch_alter_table('discovered_cameras', schema=None) as batch_op:
        batch_op.create_index('ix_discovered_state', ['state'], unique=False)


def downgrade() -> None:
    with op.batch_alter_table('discovered_cameras', schema=None) as batch_op:
        batch_op.drop_index('ix_discovered_state')

    op.drop_table('discovered_cameras')
