"""Where the sheet was found in a part's shots (parts.sheet_placement): its offset from its
place, angle, size, corners and how far it reached past the inspected region

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-07 14:00:00
"""

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


# Plain ADD COLUMN (no table copy: see 0004); NULL on parts from before and without the check.
def upgrade() -> None:
    op.add_column("parts", sa.Column("sheet_placement", sa.JSON(), nullable=True))


def downgrade() -> None:
    op.drop_column("parts", "sheet_placement")
