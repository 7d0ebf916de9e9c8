"""An index of the artifacts whose file is not on disk, for `zoo search --local` / `--remote`.

"Every file is on disk" is a NOT EXISTS over a model's artifacts without a path. Without this
partial index PostgreSQL's planner hashes every such artifact of the catalog for each search
(17 ms of a 25 ms `squeezenet --local` on 100,000 entries); with it, one index probe per
candidate. A partial index is plain DDL on both backends (SQLite has them since 3.8).

Revision ID: 0006
Revises: 0005
"""
from alembic import op
import sqlalchemy as sa

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    where = sa.text("path IS NULL AND role <> 'onnx'")
    op.create_index("ix_artifacts_missing", "artifacts", ["model_id"],
                    postgresql_where=where, sqlite_where=where)


def downgrade() -> None:
    op.drop_index("ix_artifacts_missing", table_name="artifacts")
