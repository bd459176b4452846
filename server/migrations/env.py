"""Alembic's environment: always handed an open connection by ``server.migrations``.

There is no alembic.ini and no URL here: the server (``rapport db upgrade``, or ``rapport
serve`` at start) opens the connection, takes the migration lock and passes it in, so every
way of migrating runs the same code under the same lock.
"""

from __future__ import annotations

from alembic import context

from server.models import Base

connection = context.config.attributes["connection"]
context.configure(
    connection=connection,
    target_metadata=Base.metadata,
    # SQLite cannot ALTER most things: later revisions use batch operations (copy and swap).
    render_as_batch=True,
    compare_type=True,
)
with context.begin_transaction():
    context.run_migrations()
