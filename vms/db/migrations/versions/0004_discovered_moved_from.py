"""discovered cameras: the address an accepted camera was accepted at, while it waits at a new one

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-02
"""
import sqlalchemy as sa
from alembic import op

revision = '0004'
down_revision = '0003'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('discovered_cameras', schema=None) as batch_op:
        batch_op.add_column(sa.Column('moved_from', sa.String(length=300), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table('discovered_cameras', schema=None) as batch_op:
        batch_op.drop_column('moved_from')
