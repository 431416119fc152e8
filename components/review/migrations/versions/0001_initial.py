"""Users, queued items, the append-only decision trail.

Revision ID: 0001
Revises:
"""
import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "users",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("name", sa.String(64), nullable=False, unique=True),
        sa.Column("password_hash", sa.String(256), nullable=False),
        sa.Column("role", sa.String(16), nullable=False),
        sa.Column("active", sa.Boolean, nullable=False),
        sa.Column("created_at", sa.DateTime, nullable=False),
    )
    op.create_table(
        "items",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("queue", sa.String(32), nullable=False, index=True),
        sa.Column("source", sa.String(200), nullable=False),
        sa.Column("product_id", sa.String(128), nullable=False, index=True),
        sa.Column("rank", sa.Float, nullable=False),
        sa.Column("current_path", sa.JSON, nullable=False),
        sa.Column("suggestions", sa.JSON, nullable=False),
        sa.Column("reason", sa.Text, nullable=False),
        sa.Column("product", sa.JSON, nullable=False),
        sa.Column("status", sa.String(16), nullable=False, index=True),
        sa.Column("version", sa.Integer, nullable=False),
        sa.Column("lease_user", sa.String(64), nullable=True),
        sa.Column("lease_until", sa.DateTime, nullable=True),
        sa.Column("created_at", sa.DateTime, nullable=False),
        sa.UniqueConstraint("queue", "source", "product_id", name="uq_items_queue_source_product"),
    )
    op.create_table(
        "decisions",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("item_id", sa.Integer, sa.ForeignKey("items.id"), nullable=False, index=True),
        sa.Column("product_id", sa.String(128), nullable=False, index=True),
        sa.Column("reviewer", sa.String(64), nullable=False, index=True),
        sa.Column("action", sa.String(16), nullable=False),
        sa.Column("before", sa.JSON, nullable=False),
        sa.Column("after", sa.JSON, nullable=False),
        sa.Column("undoes", sa.Integer, nullable=True),
        sa.Column("at", sa.DateTime, nullable=False),
    )
    # The trail nobody edits: the database itself refuses to change or remove a decision.
    if op.get_bind().dialect.name == "postgresql":
        op.execute("CREATE FUNCTION review_append_only() RETURNS trigger AS $$ BEGIN "
                   "RAISE EXCEPTION 'decisions are append-only'; END $$ LANGUAGE plpgsql")
        op.execute("CREATE TRIGGER decisions_append_only BEFORE UPDATE OR DELETE ON decisions "
                   "FOR EACH ROW EXECUTE FUNCTION review_append_only()")
    else:
        for verb in ("UPDATE", "DELETE"):
            op.execute(f"CREATE TRIGGER decisions_no_{verb.lower()} BEFORE {verb} ON decisions "
                       "BEGIN SELECT RAISE(ABORT, 'decisions are append-only'); END")


def downgrade() -> None:
    op.drop_table("decisions")
    op.drop_table("items")
    op.drop_table("users")
    if op.get_bind().dialect.name == "postgresql":
        op.execute("DROP FUNCTION IF EXISTS review_append_only()")
