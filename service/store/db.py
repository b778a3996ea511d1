"""The database handle: advanced-alchemy's async config (also given to its Litestar plugin), the
Alembic upgrade, and whether the database is usable right now."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from advanced_alchemy.extensions.litestar import AsyncSessionConfig, EngineConfig, SQLAlchemyAsyncConfig
from alembic import command
from alembic.config import Config
from sqlalchemy import text
from sqlalchemy.engine import Connection, make_url
from sqlalchemy.ext.asyncio import AsyncEngine

from service.store.models import metadata

MIGRATIONS = Path(__file__).parent / "migrations"
log = logging.getLogger("dermtriage.store")
# aiosqlite's DEBUG lines print every statement's parameters (a case's answer: patient data), whatever
# level the root logger is set to
logging.getLogger("aiosqlite").setLevel(logging.INFO)


def is_sqlite(url: str) -> bool:
    return make_url(url).get_backend_name() == "sqlite"


def redacted(url: str) -> str:
    """The URL without its password, for logs and /health/ready."""
    return make_url(url).render_as_string(hide_password=True)


def alchemy_config(url: str) -> SQLAlchemyAsyncConfig:
    """advanced-alchemy's config for ``url``: sessions that do not expire objects on commit, and a
    SQLite busy timeout so concurrent writers wait instead of failing."""
    connect_args: dict[str, Any] = {"timeout": 30} if is_sqlite(url) else {"timeout": 5}
    return SQLAlchemyAsyncConfig(
        connection_string=url,
        metadata=metadata,
        session_config=AsyncSessionConfig(expire_on_commit=False),
        engine_config=EngineConfig(connect_args=connect_args, pool_pre_ping=True),
        before_send_handler=None,
        set_default_exception_handler=False,  # the service's problem+json handlers answer every error
    )


def alembic_config(connection: Connection | None = None) -> Config:
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    cfg.attributes["connection"] = connection
    return cfg


def _upgrade(connection: Connection, revision: str) -> None:
    command.upgrade(alembic_config(connection), revision)


async def upgrade(engine: AsyncEngine, revision: str = "head") -> None:
    """Run the shipped migrations up to ``revision`` (idempotent)."""
    async with engine.begin() as conn:
        if engine.dialect.name == "sqlite":
            await conn.execute(text("PRAGMA journal_mode=WAL"))
        await conn.run_sync(_upgrade, revision)


async def ping(engine: AsyncEngine) -> None:
    async with engine.connect() as conn:
        await conn.execute(text("SELECT 1"))
