"""The case database's driver never logs statement parameters (answers carry patient data), even with the
root logger at DEBUG: aiosqlite's DEBUG lines print them."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

import pytest
from sqlalchemy import text

from service.store.db import alchemy_config


def test_sqlite_driver_does_not_log_parameters(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    secret = "zebra-striped-marker-lesion"

    async def go() -> None:
        engine = alchemy_config(f"sqlite+aiosqlite:///{tmp_path / 'x.db'}").get_engine()
        async with engine.begin() as conn:
            await conn.execute(text("CREATE TABLE t (v TEXT)"))
            await conn.execute(text("INSERT INTO t VALUES (:v)"), {"v": secret})
        await engine.dispose()

    with caplog.at_level(logging.DEBUG):
        asyncio.run(go())
    assert secret not in "\n".join(r.getMessage() for r in caplog.records)
