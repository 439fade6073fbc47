"""Where a sheet-map defect region lies (sheet_defects.box_mm, the extent of its cells) and
the twin's defects on a simulated part's sheet (parts.twin_defects): a run on the twin can
tell a reject at a defect from a reject elsewhere

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-07 09:00:00
"""

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


# Plain ADD COLUMN (no table copy: see 0004); NULL on real parts and on parts from before.
def upgrade() -> None:
    op.add_column("parts", sa.Column("twin_defects", sa.JSON(), nullable=True))
    op.add_column("sheet_defects", sa.Column("box_mm", sa.JSON(), nullable=True))


def downgrade() -> None:
    op.drop_column("sheet_defects", "box_mm")
    op.drop_column("parts", "twin_defects")
