"""Alembic environment: runs on the connection `service.store.db.upgrade` hands over (sync view of the
async engine), so the same code path serves SQLite (aiosqlite) and PostgreSQL (asyncpg)."""

from __future__ import annotations

from alembic import context

from service.store.models import metadata

connection = context.config.attributes.get("connection")
if connection is None:  # offline SQL generation is not supported
    raise RuntimeError("run the migrations with `dermtriage db upgrade` (service.store.db.upgrade)")
context.configure(connection=connection, target_metadata=metadata, render_as_batch=True, compare_type=True)
with context.begin_transaction():
    context.run_migrations()
