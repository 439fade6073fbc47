"""parts.run_id and parts.part_key: the run and the record that wrote a part row, so a journal
record replayed at start-up can be checked against the row it names

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-03 13:45:00
"""

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


# Plain ADD COLUMN and CREATE INDEX: no table copy, which on SQLite (foreign keys on) would
# drop `parts` and cascade the delete to every shot and detection.
def upgrade() -> None:
    op.add_column("parts", sa.Column("run_id", sa.String(length=32), nullable=True))
    op.add_column("parts", sa.Column("part_key", sa.String(length=32), nullable=True))
    op.create_index("ix_parts_part_key", "parts", ["part_key"], unique=True)


def downgrade() -> None:
    op.drop_index("ix_parts_part_key", table_name="parts")
    op.drop_column("parts", "part_key")  # SQLite 3.35 and later drop a column in place
    op.drop_column("parts", "run_id")
