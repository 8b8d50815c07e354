"""sites that must be covered, and where each camera stands (one row per source of the fact)

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-08
"""
import sqlalchemy as sa
from alembic import op

revision = '0006'
down_revision = '0005'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        'sites',
        sa.Column('id', sa.String(length=64), nullable=False),
        sa.Column('name', sa.String(length=200), nullable=False),
        sa.Column('kind', sa.String(length=32), nullable=False),
        sa.Column('center_id', sa.String(length=64), nullable=False),
        sa.Column('geometry', sa.JSON(), nullable=False),
        sa.Column('min_cameras', sa.Integer(), nullable=False),
        sa.Column('radius_m', sa.Float(), nullable=False),
        sa.Column('source', sa.String(length=16), nullable=False),
        sa.Column('created_at', sa.Float(), nullable=False),
        sa.Column('updated_at', sa.Float(), nullable=False),
        sa.PrimaryKeyConstraint('id'),
    )
    op.create_index('ix_sites_center_id', 'sites', ['center_id'], unique=False)
    op.create_table(
        'device_places',
        sa.Column('device_id', sa.String(length=20), nullable=False),
        sa.Column('source', sa.String(length=16), nullable=False),
        sa.Column('lon', sa.Float(), nullable=True),
        sa.Column('lat', sa.Float(), nullable=True),
        sa.Column('sites', sa.JSON(), nullable=True),
        sa.Column('at', sa.Float(), nullable=False),
        sa.Column('by', sa.String(length=100), nullable=False),
        sa.PrimaryKeyConstraint('device_id', 'source'),
    )


def downgrade() -> None:
    op.drop_table('device_places')
    op.drop_index('ix_sites_center_id', table_name='sites')
    op.drop_table('sites')
