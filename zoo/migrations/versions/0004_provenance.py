"""Provenance: per-source signature policy and signer, and each model's signature check.

`sources.require_signature` turns an unsigned or badly signed model of that source into a
refusal at fetch; `sources.signer` pins who must have signed (a public key, a certificate chain,
a Sigstore identity; see zoo.signing.Signer), overriding what the index itself says.
`models.signature` holds the last checks (publisher's and zoo's own, zoo.signing.SignatureCheck)
and `models.signature_status` their summary ("verified", "failed"), so a sync that rewrites an
entry keeps what was verified. Plain ADD COLUMN on both backends (see 0002 for why no rebuild).

Revision ID: 0004
Revises: 0003
"""
from alembic import op
import sqlalchemy as sa

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("sources", sa.Column("require_signature", sa.Boolean, nullable=False,
                                       server_default=sa.false()))
    op.add_column("sources", sa.Column("signer", sa.JSON))
    op.add_column("models", sa.Column("signature_status", sa.String(16)))
    op.add_column("models", sa.Column("signature", sa.JSON))
    op.create_index("ix_models_signature_status", "models", ["signature_status"])
