"""Alembic environment of the review database: run on the connection Store.migrate hands over (no ini file)."""
from alembic import context

connection = context.config.attributes["connection"]
context.configure(connection=connection, target_metadata=None, render_as_batch=True)
with context.begin_transaction():
    context.run_migrations()
