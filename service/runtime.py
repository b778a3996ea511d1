"""What the app holds at run time: the engine, its readiness, and the thread pools that keep
decoding and inference off the event loop."""

from __future__ import annotations

import asyncio
import logging
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from models.backends.base import ModelCard
from models.registry import ModelSpec
from service.engine import TriageEngine
from service.images import DecodedImage, ImageLimits, decode_image
from service.metrics import Metrics
from service.problems import Problem
from service.results import MemoryResultStore, ResultStore
from service.schemas import ClinicalInput, TriageOptions, TriageResult
from service.settings import Settings

log = logging.getLogger("dermtriage.service")


def build_engine(settings: Settings) -> TriageEngine:
    """Load model and taxonomy (blocking, seconds): run it in a worker thread."""
    import torch

    from models.registry import load_model
    from models.taxonomy import load_taxonomy

    if settings.inference_threads:
        torch.set_num_threads(settings.inference_threads)
    model = load_model(settings.model, settings.device)
    return TriageEngine(model, load_taxonomy(), settings.cache_dir)


class InferenceRunner:
    """Decode in one pool, score in another (size ``inference_workers``), with queue time measured.

    Each stage runs via ``loop.run_in_executor``; the event loop only awaits. A request waiting
    longer than ``timeout_s`` gets a 503; a job not yet started is then cancelled.
    """

    def __init__(
        self, limits: ImageLimits, inference_workers: int, decode_workers: int, timeout_s: float, metrics: Metrics
    ) -> None:
        self.limits = limits
        self.timeout_s = timeout_s
        self.metrics = metrics
        self._decode = ThreadPoolExecutor(decode_workers, thread_name_prefix="dermtriage-decode")
        self._infer = ThreadPoolExecutor(inference_workers, thread_name_prefix="dermtriage-infer")

    def _decode_job(self, data: bytes, submitted: float) -> tuple[DecodedImage, float, float]:
        start = time.perf_counter()
        decoded = decode_image(data, self.limits)
        return decoded, (time.perf_counter() - start) * 1000, (start - submitted) * 1000

    def _infer_job(
        self,
        engine: TriageEngine,
        decoded: DecodedImage,
        options: TriageOptions,
        clinical: ClinicalInput,
        request_id: str,
        decode_ms: float,
        waited_ms: float,
        submitted: float,
    ) -> TriageResult:
        queue_ms = waited_ms + (time.perf_counter() - submitted) * 1000
        self.metrics.queue.observe(queue_ms / 1000)
        result = engine.triage(
            decoded, options, clinical, request_id=request_id, decode_ms=decode_ms, queue_ms=queue_ms
        )
        self.metrics.inference.observe(result.timings.inference_ms / 1000)
        return result

    async def triage(
        self,
        engine: TriageEngine,
        data: bytes,
        options: TriageOptions,
        request_id: str,
        clinical: ClinicalInput | None = None,
    ) -> TriageResult:
        loop = asyncio.get_running_loop()
        self.metrics.in_flight.inc()
        try:
            async with asyncio.timeout(self.timeout_s):
                decoded, decode_ms, waited_ms = await loop.run_in_executor(
                    self._decode, self._decode_job, data, time.perf_counter()
                )
                del data
                return await loop.run_in_executor(
                    self._infer,
                    self._infer_job,
                    engine,
                    decoded,
                    options,
                    clinical or ClinicalInput(),
                    request_id,
                    decode_ms,
                    waited_ms,
                    time.perf_counter(),
                )
        except TimeoutError:
            raise Problem(
                "inference-timeout",
                503,
                f"The photo was not scored within {self.timeout_s:g} s (the service is busy); retry shortly.",
                title="Inference timed out",
                headers={"Retry-After": "5"},
            ) from None
        finally:
            self.metrics.in_flight.dec()

    def close(self) -> None:
        for pool in (self._decode, self._infer):
            pool.shutdown(wait=False, cancel_futures=True)


@dataclass
class ServiceState:
    """Shared by every handler through dependency injection."""

    settings: Settings
    metrics: Metrics
    runner: InferenceRunner
    engine: TriageEngine | None = None
    results: ResultStore = field(default_factory=MemoryResultStore)
    ready: bool = False
    load_error: str | None = None
    specs: list[ModelSpec] = field(default_factory=list)
    cards: dict[str, ModelCard] = field(default_factory=dict)

    def require_engine(self) -> TriageEngine:
        if self.ready and self.engine is not None:
            return self.engine
        if self.load_error:
            detail = f"The model failed to load ({self.load_error}); fix the configuration and restart."
        else:
            detail = "The model is still loading and warming up; retry in a few seconds."
        raise Problem("not-ready", 503, detail, title="Service not ready", headers={"Retry-After": "5"})


def registry_catalog() -> tuple[list[ModelSpec], dict[str, ModelCard]]:
    """The registry's specs and every card that can be read (a missing card file is skipped)."""
    from models.registry import list_specs

    specs = list_specs()
    cards: dict[str, ModelCard] = {}
    for spec in specs:
        try:
            cards[spec.name] = spec.model_card()
        except (OSError, ValueError):
            continue
    return specs, cards
