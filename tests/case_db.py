"""The two case databases every store test runs against: a SQLite file (always) and a real PostgreSQL
server (``DERMTRIAGE_TEST_POSTGRES_URL``, an asyncpg URL; `.ci/run` starts one). Without that
variable the PostgreSQL runs are skipped, except under ``CI=true``, where they fail."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

import pytest
from sqlalchemy.engine import make_url

POSTGRES_ENV = "DERMTRIAGE_TEST_POSTGRES_URL"


def _reset_postgres(url: str) -> None:
    """An empty public schema (tables, triggers, the trigger function), so each test starts clean."""
    import asyncpg

    async def reset() -> None:
        u = make_url(url)
        conn = await asyncpg.connect(
            host=u.host, port=u.port or 5432, user=u.username, password=u.password, database=u.database
        )
        try:
            await conn.execute("DROP SCHEMA public CASCADE")
            await conn.execute("CREATE SCHEMA public")
        finally:
            await conn.close()

    asyncio.run(reset())


def database_url(kind: str, tmp_path: Path) -> str:
    if kind == "sqlite":
        return f"sqlite+aiosqlite:///{tmp_path / 'cases.db'}"
    url = os.environ.get(POSTGRES_ENV)
    if not url:
        reason = f"no PostgreSQL server: set {POSTGRES_ENV} (an asyncpg URL); .ci/run starts one"
        if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
            pytest.fail(reason)
        pytest.skip(reason)
    _reset_postgres(url)
    return url
