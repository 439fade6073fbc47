"""detections.score may be NULL: a detector that returned no finite score (NaN, inf)

Revision ID: 0002
Revises: 0001
Create Date: 2026-12-01 23:50:00
"""

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("detections", schema=None) as batch_op:
        batch_op.alter_column("score", existing_type=sa.Float(), nullable=True)


def downgrade() -> None:
    op.execute("DELETE FROM detections WHERE score IS NULL")
    with op.batch_alter_table("detections", schema=None) as batch_op:
        batch_op.alter_column("score", existing_type=sa.Float(), nullable=False)
