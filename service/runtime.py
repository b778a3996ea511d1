"""What the app holds at run time: the engine, its readiness, and the threads that keep decoding and
inference off the event loop (decode pool, micro-batcher, scoring pool)."""

from __future__ import annotations

import asyncio
import hashlib
import math
import os
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from functools import partial
from pathlib import Path

import torch

from explain.gradcam import CamPass
from models.backends.base import ModelCard
from models.backends.registry import ModelSpec
from models.scoring.features import ImageFeatures
from service.batching import BatcherClosed, BatchInfo, MicroBatcher, QueueFull, serving_autocast
from service.engine import TriageEngine
from service.images import DecodedImage, ImageLimits, decode_image, storable_copy
from service.metrics import Metrics
from service.problems import Problem
from service.results import ResultStore
from service.schemas import ClinicalInput, Timings, TriageInput, TriageOptions, TriageResult, new_result_id
from service.settings import Settings
from service.shared_state import SharedState
from service.store.cases import CaseFacts, CaseStore

GIL_SWITCH_INTERVAL_S = 0.0005
HASH_INLINE_BYTES = 256 * 1024  # larger photos are hashed in a thread, off the event loop
RUNTIME_PRECISION = "float32"  # the compiled runtimes' precision: set by the agreement check (README, Performance)
MAX_BATCHERS = 2  # the default model and one per routed modality
HEATMAPS_AHEAD = 2  # heatmap passes run ahead of their answers at once (each holds the tower top's graph)


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


CGROUP_CPU_MAX = Path("/sys/fs/cgroup/cpu.max")


def cgroup_cpu_limit(path: Path | None = None) -> int | None:
    """The container's CPU quota in whole cores (cgroup v2 ``cpu.max``: ``QUOTA PERIOD``, rounded up),
    or None when unlimited (``max``) or not readable (no cgroup v2)."""
    try:
        quota, _, period = (path or CGROUP_CPU_MAX).read_text().strip().partition(" ")
        if quota == "max":
            return None
        return max(1, math.ceil(int(quota) / int(period or "100000")))
    except (OSError, ValueError, ZeroDivisionError):
        return None


def usable_cpus(cpu_max: Path | None = None) -> int:
    """Cores this process may run on: its affinity, capped by the cgroup CPU quota (a Kubernetes CPU
    limit shows the host's cores to ``sched_getaffinity`` but throttles above the quota)."""
    cores = len(os.sched_getaffinity(0))
    quota = cgroup_cpu_limit(cpu_max)
    return min(cores, quota) if quota is not None else cores


def configure_torch(settings: Settings) -> int:
    """Set torch's intra-op threads on purpose: the setting, else the usable CPU cores (`usable_cpus`) less one.

    The spare core decodes, scores (fusion, SHAP) and runs the event loop while the batcher runs the
    tower. Measured on the 2-core development machine: with 2 torch threads, a forward stalled for
    about a scheduler slice per parallel region whenever anything else held a core (1.9 s instead
    of 0.1 s per photo); 1 thread did not. Returns the count.
    """
    threads = settings.inference_threads or max(1, usable_cpus() - 1)
    torch.set_num_threads(threads)
    return threads


def build_engine(settings: Settings, model_name: str | None = None) -> TriageEngine:
    """Load a model (the configured one unless named) and the taxonomy (blocking, seconds): run it in a
    worker thread. The calibration override applies to the configured model only."""
    from models.backends.registry import load_model
    from models.embedded.runtime import attach_runtime
    from models.knowledge.taxonomy import load_taxonomy

    threads = configure_torch(settings)
    name = model_name or settings.model
    model = load_model(name, settings.device)
    attach_runtime(model, settings.runtime, settings.cache_dir, threads, RUNTIME_PRECISION)
    calibration = settings.calibration if name == settings.model else None
    return TriageEngine(
        model, load_taxonomy(), settings.cache_dir, calibration_path=calibration, coverage=settings.coverage
    )


def _overloaded(why: str) -> Problem:
    return Problem(
        "overloaded",
        503,
        f"The service is at capacity ({why}); retry shortly.",
        title="Service overloaded",
        headers={"Retry-After": "1"},
    )


class InferenceRunner:
    """Decode (and preprocess) in one pool, batch the image tower in one thread, score in another pool.

    ``decode pool -> MicroBatcher (one forward per batch) -> inference pool (size inference_workers:
    labels, fusion, urgency, heatmaps)``. The event loop only awaits. At most ``max_queue_size``
    requests are admitted at once; more get a 503 ``overloaded`` at once (back-pressure). A request
    not answered within ``timeout_s`` gets a 503 ``inference-timeout``; its work is cancelled if it
    has not started.
    """

    def __init__(
        self,
        limits: ImageLimits,
        inference_workers: int,
        decode_workers: int,
        timeout_s: float,
        metrics: Metrics,
        *,
        max_batch_size: int = 1,
        max_batch_wait_ms: float = 5.0,
        max_queue_size: int = 64,
        precision: str = "bfloat16",
    ) -> None:
        self.limits = limits
        self.timeout_s = timeout_s
        self.metrics = metrics
        self.max_batch_size = max_batch_size
        self.max_batch_wait_ms = max_batch_wait_ms
        self.max_queue_size = max_queue_size
        self.precision = precision
        self._decode = ThreadPoolExecutor(decode_workers, thread_name_prefix="dermtriage-decode")
        self._infer = ThreadPoolExecutor(inference_workers, thread_name_prefix="dermtriage-infer")
        # one batcher per engine (one per model the service holds: the default and, e.g., a dermoscopic one)
        self._batchers: dict[int, tuple[TriageEngine, MicroBatcher]] = {}
        self._lock = threading.Lock()
        self._admitted = 0  # event-loop thread only
        self._decoding = 0  # read by the batcher thread: more photos are on their way
        self._heatmaps_ahead = threading.BoundedSemaphore(HEATMAPS_AHEAD)

    @classmethod
    def from_settings(cls, settings: Settings, metrics: Metrics) -> InferenceRunner:
        return cls(
            settings.image_limits(),
            settings.inference_workers,
            settings.decode_workers,
            settings.request_timeout_s,
            metrics,
            max_batch_size=settings.max_batch_size or (16 if settings.device == "cuda" else 1),
            max_batch_wait_ms=settings.max_batch_wait_ms,
            max_queue_size=settings.max_queue_size,
            precision=settings.precision,
        )

    def batcher(self, engine: TriageEngine) -> MicroBatcher:
        """The batcher over ``engine`` (started on first use). Each engine keeps its own; beyond
        ``MAX_BATCHERS`` engines the oldest batcher is closed (an engine replaced at run time)."""
        with self._lock:
            held = self._batchers.get(id(engine))
            if held is not None and held[0] is engine:
                return held[1]
            while len(self._batchers) >= MAX_BATCHERS:
                self._batchers.pop(next(iter(self._batchers)))[1].close(timeout=0)
            batcher = MicroBatcher(
                engine.embed,
                max_batch_size=self.max_batch_size,
                max_wait_ms=self.max_batch_wait_ms,
                queue_size=self.max_queue_size,
                metrics=self.metrics,
                arrivals=lambda: self._decoding,
                autocast=serving_autocast(self.precision, engine.model.device),
                device_type=engine.model.device.type,
            )
            self._batchers[id(engine)] = (engine, batcher)
            return batcher

    def warm_up(self, engine: TriageEngine) -> None:
        """Blocking: run the batch path at batch 1 and at the largest batch, in the serving precision.

        Also shortens the GIL switch interval: the batcher thread needs the GIL between torch ops, and
        with the default 5 ms a Python-heavy scoring thread (fusion, SHAP) held it long enough to
        stall the image tower under load.
        """
        sys.setswitchinterval(GIL_SWITCH_INTERVAL_S)
        batcher = self.batcher(engine)
        size = engine.model.preprocessing.image_size
        for n in sorted({1, self.max_batch_size}):
            batcher.forward(torch.zeros(n, 3, size, size))

    def check_capacity(self) -> None:
        """Raise the 503 now if no request could be admitted (cheap; call before reading a large body)."""
        if self._admitted >= self.max_queue_size:
            self.metrics.rejected.labels("queue_full").inc()
            raise _overloaded(f"{self.max_queue_size} photos in progress")

    def _decode_job(
        self, engine: TriageEngine, data: bytes, submitted: float
    ) -> tuple[DecodedImage, torch.Tensor, float, float]:
        start = time.perf_counter()
        decoded = decode_image(data, self.limits)
        pixels = engine.preprocess(decoded)
        return decoded, pixels, (time.perf_counter() - start) * 1000, (start - submitted) * 1000

    def _score_job(
        self,
        engine: TriageEngine,
        decoded: DecodedImage,
        features: ImageFeatures,
        info: BatchInfo,
        options: TriageOptions,
        clinical: ClinicalInput | None,
        request_id: str,
        decode_ms: float,
        waited_ms: float,
        submitted: float,
        heatmap_pass: CamPass | None = None,
    ) -> TriageResult:
        queue_ms = waited_ms + info.wait_ms + (time.perf_counter() - submitted) * 1000
        self.metrics.queue.observe(queue_ms / 1000)
        result = engine.triage(
            decoded,
            options,
            clinical,
            request_id=request_id,
            decode_ms=decode_ms,
            queue_ms=queue_ms,
            image_features=features,
            heatmap_pass=heatmap_pass,
        )
        t = result.timings
        self.metrics.inference.observe((t.inference_ms + info.forward_ms / info.size) / 1000)
        timings = Timings.of(t.decode_ms, t.queue_ms, t.inference_ms + info.forward_ms, t.heatmap_ms)
        return result.model_copy(update={"timings": timings})

    async def triage(
        self,
        engine: TriageEngine,
        data: bytes,
        options: TriageOptions,
        request_id: str,
        clinical: ClinicalInput | None = None,
    ) -> TriageResult:
        self.check_capacity()
        loop = asyncio.get_running_loop()
        self._admitted += 1
        self.metrics.in_flight.inc()
        try:
            async with asyncio.timeout(self.timeout_s):
                self._decoding += 1  # until submitted: the batcher may wait for this photo
                try:
                    decoded, pixels, decode_ms, waited_ms = await loop.run_in_executor(
                        self._decode, self._decode_job, engine, data, time.perf_counter()
                    )
                    del data
                    future = self.batcher(engine).submit(pixels)
                except QueueFull:
                    self.metrics.rejected.labels("queue_full").inc()
                    raise _overloaded(f"{self.max_queue_size} photos wait for the model") from None
                finally:
                    self._decoding -= 1
                del pixels
                # heatmaps: their forward (PyTorch) runs now, beside the runtime's; the backward once ranked
                ahead = options.explain and self._heatmaps_ahead.acquire(blocking=False)
                try:
                    heatmap_forward = (
                        loop.run_in_executor(self._infer, engine.prepare_heatmaps, decoded, options) if ahead else None
                    )
                    features, info = await asyncio.wrap_future(future)
                    heatmap_pass = await heatmap_forward if heatmap_forward is not None else None
                    job = partial(self._score_job, engine, decoded, features, info, options, clinical, request_id)
                    now = time.perf_counter()
                    return await loop.run_in_executor(self._infer, job, decode_ms, waited_ms, now, heatmap_pass)
                finally:
                    if ahead:
                        self._heatmaps_ahead.release()
        except TimeoutError:
            self.metrics.rejected.labels("timeout").inc()
            raise Problem(
                "inference-timeout",
                503,
                f"The photo was not scored within {self.timeout_s:g} s (the service is busy); retry shortly.",
                title="Inference timed out",
                headers={"Retry-After": "5"},
            ) from None
        except BatcherClosed:
            raise _overloaded("shutting down") from None
        finally:
            self._admitted -= 1
            self.metrics.in_flight.dec()

    def close(self) -> None:
        """After uvicorn drained the requests: finish queued photos, then stop the threads."""
        with self._lock:
            for _, batcher in self._batchers.values():
                batcher.close()
        for pool in (self._decode, self._infer):
            pool.shutdown(wait=False, cancel_futures=True)


@dataclass
class ServiceState:
    """Shared by every handler through dependency injection."""

    settings: Settings
    metrics: Metrics
    runner: InferenceRunner
    engine: TriageEngine | None = None  # the default model's (every modality not routed elsewhere)
    modality_engines: dict[str, TriageEngine] = field(default_factory=dict)  # e.g. dermoscopic -> its model
    results: ResultStore = field(default_factory=ResultStore.in_memory)
    ready: bool = False
    load_error: str | None = None
    specs: list[ModelSpec] = field(default_factory=list)
    cards: dict[str, ModelCard] = field(default_factory=dict)
    cases: CaseStore | None = None  # the case database (service/store/); None: memory only
    shared: SharedState = field(default_factory=SharedState)  # Redis for several workers, else memory

    async def triage(
        self, received: TriageInput, request_id: str, owner: str, client: str | None = None
    ) -> TriageResult:
        """The one place a request is answered and kept: every face (REST, FHIR, CDS Hooks) calls it.

        ``request_id`` is the caller's correlation id (echoed in the answer, never a key); ``owner`` the
        principal (:func:`service.results.principal_of`) that alone may read the answer back.
        """
        if received.image is None:
            raise Problem("no-photo", 422, "The request carries no photo to triage.", title="No photo")
        engine = self.engine_for(received.options.modality)
        result = await self.runner.triage(engine, received.image, received.options, request_id, received.clinical)
        return await self.keep(result, owner, await self.case_facts(received, client))

    async def case_facts(self, received: TriageInput, client: str | None) -> CaseFacts | None:
        """What the case keeps besides the answer (None without a case store): the photo's SHA-256
        (hashed in a thread when large), the weights hash, the caller's opaque refs."""
        if self.cases is None or received.image is None:
            return None
        image = received.image
        digest = await asyncio.to_thread(sha256_hex, image) if len(image) > HASH_INLINE_BYTES else sha256_hex(image)
        identity = self.engine_for(received.options.modality).model.artifacts.identity
        options = received.options
        kept = None
        if options.consent_to_store and self.cases.keep_photos and self.cases.storage == "queued":
            kept = await self.cases.photos.put(partial(storable_copy, image, self.runner.limits))  # its own thread
        refs = (options.patient_ref, options.lesion_ref)
        return CaseFacts(digest, identity.weights_sha256, *refs, client=client, stored_photo_sha256=kept)

    async def keep(self, result: TriageResult, owner: str, facts: CaseFacts | None = None) -> TriageResult:
        """Store ``result`` for ``owner`` under a fresh server-minted id (128 random bits); returns it
        with that id. The caller's ids never become the key, and nothing replaces a stored result.
        With a case store the answer is also queued as a case (never awaited) and says so."""
        update: dict[str, object] = {"id": new_result_id()}
        if self.cases is not None:
            update["case_storage"] = self.cases.storage
        kept = result.model_copy(update=update)
        await self.results.put(kept, owner)
        if self.cases is not None and facts is not None:
            share = await self.results.share_token(kept.id, owner)
            self.cases.record_answer(kept, owner, replace(facts, share_token=share))
        return kept

    def engine_for(self, modality: str) -> TriageEngine:
        """The engine whose model answers this photo kind: a routed one (the dermoscopic model for
        dermatoscope images) or the default."""
        default = self.require_engine()
        return self.modality_engines.get(modality, default)

    def engines(self) -> list[TriageEngine]:
        """Every loaded engine, the default first."""
        default = self.require_engine()
        return [default, *(e for e in self.modality_engines.values() if e is not default)]

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
    from models.backends.registry import list_specs

    specs = list_specs()
    cards: dict[str, ModelCard] = {}
    for spec in specs:
        try:
            cards[spec.name] = spec.model_card()
        except (OSError, ValueError):
            continue
    return specs, cards
