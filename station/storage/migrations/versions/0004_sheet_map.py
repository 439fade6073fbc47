"""The sheet map of a part: its fused map image and where it lies on the table (parts), each
shot's footprint on the table (shots), and the defects found on the map (sheet_defects)

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-10 10:00:00
"""

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None

_PART_COLUMNS = (
    ("sheet_map_path", sa.Text()),
    ("sheet_map_extent_mm", sa.JSON()),
    ("sheet_map_mm_per_px", sa.Float()),
    ("sheet_map_fusion", sa.String(length=16)),
    ("sheet_map_camera", sa.Text()),
    ("sheet_region_mm", sa.JSON()),
)


# Plain ADD COLUMN and CREATE TABLE: no table copy, which on SQLite (foreign keys on) would
# drop `parts` and cascade the delete to every shot and detection. Every new column is
# nullable: parts inspected before the sheet map have none.
def upgrade() -> None:
    for name, type_ in _PART_COLUMNS:
        op.add_column("parts", sa.Column(name, type_, nullable=True))
    op.add_column("shots", sa.Column("footprint_mm", sa.JSON(), nullable=True))
    op.create_table(
        "sheet_defects",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("part_id", sa.Integer(), nullable=False),
        sa.Column("defect_index", sa.Integer(), nullable=False),
        sa.Column("detector", sa.String(length=64), nullable=False),
        sa.Column("x_mm", sa.Float(), nullable=False),
        sa.Column("y_mm", sa.Float(), nullable=False),
        sa.Column("area_mm2", sa.Float(), nullable=False),
        sa.Column("peak", sa.Float(), nullable=True),
        sa.Column("shots", sa.JSON(), nullable=False),
        sa.ForeignKeyConstraint(["part_id"], ["parts.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("part_id", "defect_index", name="uq_sheet_defects_part_index"),
    )
    op.create_index("ix_sheet_defects_part_id", "sheet_defects", ["part_id"])


def downgrade() -> None:
    op.drop_index("ix_sheet_defects_part_id", table_name="sheet_defects")
    op.drop_table("sheet_defects")
    op.drop_column("shots", "footprint_mm")  # SQLite 3.35 and later drop a column in place
    for name, _ in reversed(_PART_COLUMNS):
        op.drop_column("parts", name)
