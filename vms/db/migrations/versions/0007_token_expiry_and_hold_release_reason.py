"""tokens: an optional expiry and the last use; legal holds: why one was released

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-09
"""
import sqlalchemy as sa
from alembic import op

revision = '0007'
down_revision = '0006'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('tokens') as b:
        b.add_column(sa.Column('expires_at', sa.Float(), nullable=True))
        b.add_column(sa.Column('last_used_at', sa.Float(), nullable=True))
    with op.batch_alter_table('legal_holds') as b:
        b.add_column(sa.Column('release_reason', sa.Text(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table('legal_holds') as b:
        b.drop_column('release_reason')
    with op.batch_alter_table('tokens') as b:
        b.drop_column('last_used_at')
        b.drop_column('expires_at')
