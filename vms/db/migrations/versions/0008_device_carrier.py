"""devices: whether a device carries channels (NULL: not known yet)

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-06
"""
import sqlalchemy as sa
from alembic import op

revision = '0008'
down_revision = '0007'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('devices') as b:
        b.add_column(sa.Column('carrier', sa.Boolean(), nullable=True))
    # What the hub assumed of every device until now: no carrier until its catalog says otherwise.
    op.execute("UPDATE devices SET carrier = false")


def downgrade() -> None:
    with op.batch_alter_table('devices') as b:
        b.drop_column('carrier')
