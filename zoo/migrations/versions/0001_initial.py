"""The first catalog schema: models, artifacts, sources.

Revision ID: 0001
"""
from alembic import op
import sqlalchemy as sa

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "models",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("name", sa.String(255), nullable=False, unique=True),
        sa.Column("framework", sa.String(32), nullable=False, index=True),
        sa.Column("format", sa.String(64)),
        sa.Column("task", sa.String(128), index=True),
        sa.Column("dataset", sa.String(128), index=True),
        sa.Column("architecture", sa.String(128)),
        sa.Column("description", sa.Text),
        sa.Column("license", sa.String(255)),
        sa.Column("tags", sa.JSON),
        sa.Column("source", sa.String(255), index=True),
        sa.Column("homepage", sa.Text),
        sa.Column("paper", sa.Text),
        sa.Column("input_spec", sa.JSON),
        sa.Column("parameters", sa.Integer),
        sa.Column("metrics", sa.JSON),
        sa.Column("meta", sa.JSON),
        sa.Column("created_at", sa.Float),
        sa.Column("updated_at", sa.Float),
    )
    op.create_table(
        "artifacts",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("model_id", sa.Integer, sa.ForeignKey("models.id", ondelete="CASCADE"), index=True),
        sa.Column("role", sa.String(32), nullable=False),
        sa.Column("filename", sa.String(512), nullable=False),
        sa.Column("urls", sa.JSON),
        sa.Column("size", sa.Integer),
        sa.Column("checksum", sa.String(160)),
        sa.Column("extract", sa.String(16)),
        sa.Column("path", sa.Text),
        sa.Column("sha256", sa.String(64), index=True),
        sa.Column("meta", sa.JSON),
        sa.UniqueConstraint("model_id", "role", "filename"),
    )
    op.create_table(
        "sources",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("name", sa.String(255), nullable=False, unique=True),
        sa.Column("url", sa.Text, nullable=False),
        sa.Column("etag", sa.String(255)),
        sa.Column("synced_at", sa.Float),
        sa.Column("created_at", sa.Float),
    )
