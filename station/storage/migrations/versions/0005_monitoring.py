"""Quality over time: shot and part statistics (shots.stats, parts.stats), drift and material
alarms, shadow verdicts of candidate models, and model promotions

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-04 16:30:00
"""

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None

_TS = sa.DateTime(timezone=True)
_VERDICT = sa.Enum(
    "pending", "pass", "fail", "fault", "interrupted",
    name="verdict", native_enum=False, length=16,
)  # fmt: skip


# Plain ADD COLUMN and CREATE TABLE (no table copy: see 0004).
def upgrade() -> None:
    op.add_column("shots", sa.Column("stats", sa.JSON(), nullable=True))
    op.add_column("parts", sa.Column("stats", sa.JSON(), nullable=True))
    op.create_table(
        "alarms",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("recipe", sa.String(length=128), nullable=False),
        sa.Column("signal", sa.String(length=128), nullable=False),
        sa.Column("chart", sa.String(length=16), nullable=False),
        sa.Column("since_part_id", sa.Integer(), nullable=True),
        sa.Column("since_at", _TS, nullable=True),
        sa.Column("part_id", sa.Integer(), nullable=True),
        sa.Column("raised_at", _TS, nullable=False),
        sa.Column("value", sa.Float(), nullable=True),
        sa.Column("baseline", sa.Float(), nullable=True),
        sa.Column("limit", sa.Float(), nullable=True),
        sa.Column("shift", sa.Float(), nullable=True),
        sa.Column("message", sa.Text(), nullable=False),
        sa.Column("cleared_at", _TS, nullable=True),
        sa.Column("cleared_by", sa.String(length=128), nullable=True),
        sa.ForeignKeyConstraint(["since_part_id"], ["parts.id"], ondelete="SET NULL"),
        sa.ForeignKeyConstraint(["part_id"], ["parts.id"], ondelete="SET NULL"),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index("ix_alarms_recipe_raised", "alarms", ["recipe", "raised_at"])
    op.create_table(
        "shadow_verdicts",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("part_id", sa.Integer(), nullable=False),
        sa.Column("candidate", sa.String(length=128), nullable=False),
        sa.Column("model_versions", sa.JSON(), nullable=False),
        sa.Column("verdict", _VERDICT, nullable=False),
        sa.Column("reason", sa.Text(), nullable=True),
        sa.Column("part_score", sa.Float(), nullable=True),
        sa.Column("scores", sa.JSON(), nullable=False),
        sa.Column("thresholds", sa.JSON(), nullable=False),
        sa.Column("created_at", _TS, nullable=False),
        sa.ForeignKeyConstraint(["part_id"], ["parts.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("part_id", "candidate", name="uq_shadow_verdicts_part_candidate"),
    )
    op.create_index("ix_shadow_verdicts_part_id", "shadow_verdicts", ["part_id"])
    op.create_table(
        "model_promotions",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("recipe", sa.String(length=128), nullable=False),
        sa.Column("detector", sa.String(length=64), nullable=False),
        sa.Column("from_version", sa.String(length=128), nullable=True),
        sa.Column("to_version", sa.String(length=128), nullable=False),
        sa.Column("promoted_by", sa.String(length=128), nullable=False),
        sa.Column("promoted_at", _TS, nullable=False),
        sa.Column("evidence", sa.JSON(), nullable=False),
        sa.Column("note", sa.Text(), nullable=False),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index("ix_model_promotions_recipe", "model_promotions", ["recipe"])


def downgrade() -> None:
    op.drop_index("ix_model_promotions_recipe", table_name="model_promotions")
    op.drop_table("model_promotions")
    op.drop_index("ix_shadow_verdicts_part_id", table_name="shadow_verdicts")
    op.drop_table("shadow_verdicts")
    op.drop_index("ix_alarms_recipe_raised", table_name="alarms")
    op.drop_table("alarms")
    op.drop_column("parts", "stats")
    op.drop_column("shots", "stats")
