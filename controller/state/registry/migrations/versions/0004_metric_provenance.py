"""metric provenance: namespace, code digest, commit and ref on every metric row

A metric a pull request's apply wrote must not read as main's (issue 27, class 7): plan,
status and the dashboard filter or label rows by namespace. Rows written before this
migration have no recorded producer and read as trusted, as versions without provenance do.

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-06
"""

from alembic import op
import sqlalchemy as sa


revision = '0004'
down_revision = '0003'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('metrics', schema=None) as batch_op:
        batch_op.add_column(
            sa.Column('namespace', sa.String(length=16), server_default='trusted', nullable=False)
        )
        batch_op.add_column(sa.Column('code_digest', sa.String(length=80), nullable=True))
        batch_op.add_column(sa.Column('git_commit', sa.String(length=64), nullable=True))
        batch_op.add_column(sa.Column('ref', sa.String(length=255), nullable=True))
        batch_op.create_index(batch_op.f('ix_metrics_namespace'), ['namespace'], unique=False)


def downgrade() -> None:
    with op.batch_alter_table('metrics', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_metrics_namespace'))
        batch_op.drop_column('ref')
        batch_op.drop_column('git_commit')
        batch_op.drop_column('code_digest')
        batch_op.drop_column('namespace')
