"""Service configuration: environment variables (prefix ``DERMTRIAGE_``), overridden by CLI flags."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from models.backends.registry import DEFAULT_MODEL
from service.images import ImageLimits

MIB = 1024 * 1024
LogLevel = Literal["debug", "info", "warning", "error", "critical"]


class Settings(BaseSettings):
    """Every knob of the HTTP service; the README's Configuration table lists the same fields."""

    model_config = SettingsConfigDict(env_prefix="DERMTRIAGE_", extra="ignore", validate_default=True)

    model: str = Field(default=DEFAULT_MODEL, description="registry name, spec JSON path or ad-hoc model string")
    device: Literal["cpu", "cuda"] = "cpu"
    host: str = "127.0.0.1"
    port: int = Field(default=8000, ge=0, le=65535)
    workers: int = Field(default=1, ge=1, description="uvicorn worker processes (each loads the model)")
    max_body_bytes: int = Field(default=12 * MIB, ge=1024, description="request body limit (JSON and multipart)")
    max_image_bytes: int = Field(default=10 * MIB, ge=1, description="encoded image limit")
    max_pixels: int = Field(default=40_000_000, ge=1, description="decoded pixel limit (decompression bombs)")
    max_side: int = Field(default=12_000, ge=1, description="longest allowed side in pixels")
    min_side: int = Field(default=64, ge=1, description="shortest allowed side in pixels")
    inference_threads: int | None = Field(
        default=None, ge=1, description="torch intra-op threads (None: the usable CPU cores less one, at least 1)"
    )
    inference_workers: int = Field(default=1, ge=1, description="threads running the model concurrently")
    decode_workers: int = Field(default=2, ge=1, description="threads decoding uploads")
    log_level: LogLevel = "info"
    cors_origins: Annotated[list[str], NoDecode] = Field(default_factory=list, description="allowed CORS origins")
    cache_dir: Path | None = Field(default=None, description="disk cache for condition text embeddings")
    calibration: Path | None = Field(
        default=None,
        description="calibration file (`dermtriage calibrate`); default: the shipped one when made for the model",
    )
    coverage: float = Field(default=0.9, gt=0, lt=1, description="nominal coverage of the conformal prediction set")
    request_timeout_s: float = Field(default=30.0, gt=0, description="longest wait for decode plus inference")
    max_batch_size: int | None = Field(
        default=None,
        ge=1,
        le=256,
        description="photos per image-tower forward pass (None: 1 on CPU, where bigger was slower; 16 on CUDA)",
    )
    max_batch_wait_ms: float = Field(
        default=5.0, ge=0, le=1000, description="longest wait for more photos for a batch (while others decode)"
    )
    max_queue_size: int = Field(
        default=64, ge=1, description="triage requests admitted at once (decoding, queued or scored); more get 503"
    )
    precision: Literal["float32", "bfloat16"] = Field(
        default="bfloat16",
        description="image-tower precision; bfloat16 autocasts where the CPU or GPU supports it, else float32",
    )
    shutdown_grace_s: float = Field(
        default=30.0, ge=0, description="on SIGTERM, how long in-flight requests may take to finish"
    )
    auth_disabled: bool = Field(
        default=False, description="serve /v1, /fhir and /cds-services without credentials (local use only)"
    )
    result_store_size: int = Field(default=256, ge=0, description="recent answers kept in memory for GET by id")
    result_ttl_s: float = Field(default=3600.0, gt=0, description="how long an answer can be fetched by id")
    # authentication (issue 7): see service/auth/ and the README's Authentication section
    public_url: str | None = Field(
        default=None, description="the service's external base URL (JWT aud, card links); None: the request's"
    )
    api_keys: Annotated[list[str], NoDecode] = Field(
        default_factory=list, description="API keys as NAME:sha256:HEX[:PER_MINUTE] lines (dermtriage create-api-key)"
    )
    api_rate_per_minute: float = Field(default=60.0, gt=0, description="default requests per minute per API key")
    api_rate_burst: int = Field(default=10, ge=1, description="requests a key may send at once before waiting")
    cds_issuers: Annotated[list[str], NoDecode] = Field(
        default_factory=list, description="CDS Hooks JWT issuers (iss) accepted"
    )
    cds_jwks: str | None = Field(default=None, description="CDS Hooks JWT keys: a JWKS as JSON text or a file path")
    cds_jku_allowlist: Annotated[list[str], NoDecode] = Field(
        default_factory=list, description="JWKS URLs (jku) that CDS Hooks JWTs may name; fetched and cached"
    )
    cds_cache_size: int = Field(default=256, ge=0, description="CDS Hooks photo results kept for repeat calls")
    cds_cache_ttl_s: float = Field(default=900.0, gt=0, description="how long a CDS Hooks photo result is reused")

    @field_validator("log_level", mode="before")
    @classmethod
    def _lower_level(cls, value: object) -> object:
        return value.lower() if isinstance(value, str) else value

    @field_validator("cors_origins", "api_keys", "cds_issuers", "cds_jku_allowlist", mode="before")
    @classmethod
    def _split_origins(cls, value: object) -> object:
        """Accept a JSON list or a comma-separated string (``https://a.example,https://b.example``)."""
        if isinstance(value, str):
            text = value.strip()
            if text.startswith("["):
                return json.loads(text)
            return [part.strip() for part in text.split(",") if part.strip()]
        return value

    def image_limits(self) -> ImageLimits:
        return ImageLimits(
            max_bytes=self.max_image_bytes, max_pixels=self.max_pixels, max_side=self.max_side, min_side=self.min_side
        )

    @staticmethod
    def env_name(field: str) -> str:
        return f"DERMTRIAGE_{field.upper()}"
