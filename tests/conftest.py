"""Shared fixtures: the development photos (never committed) and a tiny real CLIP model."""

from __future__ import annotations

import csv
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
PAD_DEFAULT = REPO.parent / "shared" / "data" / "pad-ufes-20"
# The case database of apps built by the suite: never ./dermtriage.db in the repository. Apps built in
# module- or session-scoped fixtures share this session file; every test gets its own (below).
_SESSION_DB = Path(tempfile.mkdtemp(prefix="dermtriage-test-db-")) / "session.db"
os.environ["DERMTRIAGE_DATABASE_URL"] = f"sqlite+aiosqlite:///{_SESSION_DB}"


@pytest.fixture(autouse=True)
def _own_case_database(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Each test's apps get a SQLite file of their own (tests do not share cases)."""
    monkeypatch.setenv("DERMTRIAGE_DATABASE_URL", f"sqlite+aiosqlite:///{tmp_path / 'cases.db'}")


@pytest.fixture(scope="session")
def pad_dir() -> Path:
    """PAD-UFES-20 development subset; a missing folder fails under CI (DERMTRIAGE_REQUIRE_DATA=1)."""
    path = Path(os.environ.get("DERMTRIAGE_DATA", PAD_DEFAULT))
    if not (path / "metadata.csv").exists():
        reason = f"PAD-UFES-20 development data not found at {path} (set DERMTRIAGE_DATA)"
        if os.environ.get("DERMTRIAGE_REQUIRE_DATA") == "1":
            pytest.fail(reason)
        pytest.skip(reason)
    return path


def pad_subset(pad_dir: Path, dest: Path, per_class: int) -> Path:
    """A small PAD-layout folder with `per_class` photos of each diagnosis (copies, first rows)."""
    (dest / "images").mkdir(parents=True, exist_ok=True)
    with (pad_dir / "metadata.csv").open(newline="") as fh:
        reader = csv.DictReader(fh)
        fields = reader.fieldnames or []
        rows, seen = [], {}
        for row in reader:
            if seen.get(row["diagnostic"], 0) >= per_class:
                continue
            src = pad_dir / "images" / (Path(row["img_id"]).stem + ".jpg")
            if not src.exists():
                continue
            shutil.copy(src, dest / "images" / src.name)
            seen[row["diagnostic"]] = seen.get(row["diagnostic"], 0) + 1
            rows.append(row)
    with (dest / "metadata.csv").open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=fields)
        writer.writeheader()
        writer.writerows(rows)
    return dest


@pytest.fixture(scope="session")
def pad_small(pad_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return pad_subset(pad_dir, tmp_path_factory.mktemp("pad_small"), per_class=5)


@pytest.fixture(scope="session")
def tiny_clip():
    """A tiny, randomly initialised but real open_clip model behind the backend protocol."""
    import open_clip

    from models.backends.base import ModelCard, Preprocessing
    from models.backends.open_clip_backend import OpenClipBackend

    torch.manual_seed(0)
    model = open_clip.CLIP(
        embed_dim=32,
        vision_cfg=open_clip.CLIPVisionCfg(layers=2, width=64, head_width=32, patch_size=16, image_size=64),
        text_cfg=open_clip.CLIPTextCfg(context_length=32, vocab_size=49408, width=64, heads=2, layers=2),
    )
    tokenizer = open_clip.SimpleTokenizer(context_length=32)
    card = ModelCard(name="tiny-test-clip", version="0", family="open_clip", source="test", license="none")
    pre = Preprocessing(image_size=64, mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5))
    return OpenClipBackend.from_model(model, tokenizer, card=card, preprocessing=pre)


@pytest.fixture(scope="session")
def embedded_model():
    from models.backends.registry import load_model

    return load_model("embedded-pad-lite0")


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A fresh case database for each test, on SQLite and on the real PostgreSQL server (tests/case_db.py)."""
    from tests.case_db import database_url

    return database_url(request.param, tmp_path)


@pytest.fixture(scope="module")
def engine(tiny_clip: Any) -> Any:
    """A triage engine over the tiny test model (a module may define its own `engine`)."""
    from models.knowledge.taxonomy import load_taxonomy
    from service.engine import TriageEngine

    return TriageEngine(tiny_clip, load_taxonomy())


@pytest.fixture(scope="session")
def redis_server() -> str:
    """A real Redis server's URL (``DERMTRIAGE_TEST_REDIS_URL``; `.ci/run` starts Debian's). Without the
    variable the Redis tests are skipped, except under ``CI=true``, where they fail."""
    url = os.environ.get("DERMTRIAGE_TEST_REDIS_URL")
    if not url:
        reason = "no Redis server: set DERMTRIAGE_TEST_REDIS_URL (redis://127.0.0.1:PORT/0); .ci/run starts one"
        if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
            pytest.fail(reason)
        pytest.skip(reason)
    return url


@pytest.fixture
def redis_url(redis_server: str) -> str:
    """The real Redis server, emptied for this test."""
    import redis

    with redis.Redis.from_url(redis_server) as client:
        client.flushdb()
    return redis_server
