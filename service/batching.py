"""Micro-batching of the image tower across concurrent requests (the Triton / Ray Serve / BentoML idea).

Requests put their preprocessed pixels on a bounded queue and get a ``Future``. One batcher thread
takes the first waiting photo, adds whatever else is queued up to ``max_batch_size``, and waits up to
``max_wait_ms`` for more only while other requests are still being decoded (a lone request never
waits). One forward pass scores the batch; each future gets its own embedding row.

The thread is the only one running the image tower, so torch's intra-op threads are not
oversubscribed by several concurrent forwards. A future cancelled before its batch starts (the
request timed out) is skipped.
"""

from __future__ import annotations

import contextlib
import logging
import queue
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Any

import torch

from service.metrics import Metrics

log = logging.getLogger("dermtriage.service")


class QueueFull(Exception):
    """The batch queue holds ``queue_size`` photos already: answer 503 now instead of growing memory."""


class BatcherClosed(RuntimeError):
    """The service is shutting down and takes no more photos."""


@dataclass(frozen=True)
class BatchInfo:
    """How one photo was scored: its batch's size, its wait for the batch and the batch's forward time."""

    size: int
    wait_ms: float
    forward_ms: float


@dataclass
class _Job:
    pixels: torch.Tensor
    future: Future[tuple[Any, BatchInfo]]
    enqueued: float


def bf16_supported(device: torch.device) -> bool:
    """Whether bfloat16 autocast has fast kernels here (AVX512-BF16 / AMX on CPU, Ampere+ on CUDA)."""
    if device.type == "cuda":
        return torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def serving_autocast(precision: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype for the image tower: bfloat16 when asked and fast here, else None (float32)."""
    if precision != "bfloat16":
        return None
    if bf16_supported(device):
        return torch.bfloat16
    log.info("bfloat16 has no fast kernels on this device; the image tower runs float32")
    return None


class MicroBatcher:
    """Collects photos from a bounded queue into batches for ``embed`` ((B, 3, H, W) -> (B, D))."""

    def __init__(
        self,
        embed: Callable[[torch.Tensor], Any],  # pixels -> rows sliceable per photo (ImageFeatures)
        *,
        max_batch_size: int,
        max_wait_ms: float,
        queue_size: int,
        metrics: Metrics,
        arrivals: Callable[[], int] = lambda: 0,
        autocast: torch.dtype | None = None,
        device_type: str = "cpu",
    ) -> None:
        self.embed = embed
        self.max_batch_size = max_batch_size
        self.max_wait_s = max_wait_ms / 1000
        self.metrics = metrics
        self.arrivals = arrivals  # requests still decoding: worth waiting for
        self.autocast = autocast
        self.device_type = device_type
        self._queue: queue.Queue[_Job] = queue.Queue(maxsize=queue_size)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="dermtriage-batcher", daemon=True)
        self._thread.start()

    @property
    def depth(self) -> int:
        return self._queue.qsize()

    def submit(self, pixels: torch.Tensor) -> Future[tuple[Any, BatchInfo]]:
        """Queue one (3, H, W) photo; raises :class:`QueueFull` at once when the queue is full."""
        if self._stop.is_set():
            raise BatcherClosed("the service is shutting down")
        job = _Job(pixels, Future(), time.perf_counter())
        try:
            self._queue.put_nowait(job)
        except queue.Full:
            raise QueueFull from None
        self.metrics.queue_depth.set(self._queue.qsize())
        return job.future

    def forward(self, pixels: torch.Tensor) -> Any:
        """One forward pass, under bfloat16 autocast when asked; float32 features out."""
        ctx = (
            torch.autocast(self.device_type, dtype=self.autocast)
            if self.autocast is not None
            else contextlib.nullcontext()
        )
        with ctx:
            out = self.embed(pixels)
        return out.float() if isinstance(out, torch.Tensor) else out

    def _collect(self, first: _Job) -> list[_Job]:
        batch = [first]
        deadline = time.perf_counter() + self.max_wait_s
        while len(batch) < self.max_batch_size:
            try:
                batch.append(self._queue.get_nowait())
                continue
            except queue.Empty:
                pass
            left = deadline - time.perf_counter()
            if left <= 0 or self.arrivals() <= 0:
                break
            try:
                batch.append(self._queue.get(timeout=left))
            except queue.Empty:
                break
        return batch

    def _run(self) -> None:
        while True:
            try:
                first = self._queue.get(timeout=0.2)
            except queue.Empty:
                if self._stop.is_set():
                    return
                continue
            jobs = [j for j in self._collect(first) if j.future.set_running_or_notify_cancel()]
            self.metrics.queue_depth.set(self._queue.qsize())
            if jobs:
                self._score(jobs)

    def _score(self, jobs: list[_Job]) -> None:
        start = time.perf_counter()
        try:
            feats = self.forward(torch.stack([j.pixels for j in jobs]))
        except BaseException as exc:  # every waiting request learns of it; the thread carries on
            log.exception("image tower failed on a batch", extra={"batch_size": len(jobs)})
            for job in jobs:
                job.future.set_exception(exc)
            return
        forward_ms = (time.perf_counter() - start) * 1000
        self.metrics.batch_size.observe(len(jobs))
        self.metrics.batch_inference.observe(forward_ms / 1000)
        for i, job in enumerate(jobs):
            info = BatchInfo(len(jobs), (start - job.enqueued) * 1000, forward_ms)
            row = feats[i : i + 1]  # ImageFeatures copy their rows; a tensor row is cloned
            job.future.set_result((row.clone() if isinstance(row, torch.Tensor) else row, info))

    def close(self, timeout: float = 10.0) -> None:
        """Stop after the queued photos are scored (uvicorn has drained requests by now); fail any left."""
        self._stop.set()
        self._thread.join(timeout)
        while True:
            try:
                job = self._queue.get_nowait()
            except queue.Empty:
                break
            if job.future.set_running_or_notify_cancel():
                job.future.set_exception(BatcherClosed("the service is shutting down"))
        self.metrics.queue_depth.set(0)
