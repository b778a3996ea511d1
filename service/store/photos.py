"""The kept photos of consented cases: files in one folder (``DERMTRIAGE_PHOTO_DIR``) named by the
SHA-256 of their bytes, so a photo kept twice is one file. Every disk call runs on one dedicated
thread, never on the event loop, and at most ``max_pending`` writes wait for it: more are refused
(the case is kept without its photo) rather than queued without bound. Own code, not a storage
library: four file operations need no more."""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
import re
import tempfile
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

MEDIA_TYPE = "image/jpeg"
SHA256 = re.compile(r"^[0-9a-f]{64}$")
log = logging.getLogger("dermtriage.store")


class PhotoStore:
    def __init__(self, root: Path, max_pending: int = 16) -> None:
        self.root = Path(root)
        self.max_pending = max_pending
        self.pending = 0
        self.refused = 0
        self.failed = 0
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="photo-store")

    def path(self, sha256: str) -> Path:
        if not SHA256.match(sha256):
            raise ValueError("not a SHA-256 hex digest")
        return self.root / sha256[:2] / sha256

    # -- blocking, on the store's thread ---------------------------------------------------------
    def _write(self, encode: Callable[[], bytes]) -> str:
        data = encode()
        digest = hashlib.sha256(data).hexdigest()
        target = self.path(digest)
        if target.exists():
            return digest
        target.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=".tmp-")
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, target)  # atomic: a reader sees the whole photo or none
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        return digest

    def _read(self, sha256: str) -> bytes | None:
        try:
            return self.path(sha256).read_bytes()
        except FileNotFoundError:
            return None

    def _delete(self, sha256s: list[str]) -> int:
        gone = 0
        for sha in sha256s:
            try:
                self.path(sha).unlink()
                gone += 1
            except FileNotFoundError:
                pass
        return gone

    def _listing(self) -> list[tuple[str, float]]:
        """(SHA-256, modification time) of every kept file."""
        if not self.root.is_dir():
            return []
        return [(p.name, p.stat().st_mtime) for p in self.root.glob("??/*") if SHA256.match(p.name)]

    # -- async faces -----------------------------------------------------------------------------
    async def put(self, encode: Callable[[], bytes]) -> str | None:
        """Encode and write on the store's thread; the SHA-256 of the bytes kept, or None when
        ``max_pending`` writes are already waiting (counted in ``refused``) or the write failed (``failed``)."""
        if self.pending >= self.max_pending:
            self.refused += 1
            return None
        self.pending += 1
        try:
            return await asyncio.get_running_loop().run_in_executor(self._pool, self._write, encode)
        except Exception as exc:  # a full disk or an encoder error: the case is kept without its photo
            self.failed += 1
            log.error("photo not kept", extra={"error": type(exc).__name__})
            return None
        finally:
            self.pending -= 1

    async def get(self, sha256: str) -> bytes | None:
        return await asyncio.get_running_loop().run_in_executor(self._pool, self._read, sha256)

    async def delete(self, sha256s: list[str]) -> int:
        if not sha256s:
            return 0
        return await asyncio.get_running_loop().run_in_executor(self._pool, self._delete, sha256s)

    async def listing(self) -> list[tuple[str, float]]:
        return await asyncio.get_running_loop().run_in_executor(self._pool, self._listing)

    def close(self) -> None:
        self._pool.shutdown(wait=True)
