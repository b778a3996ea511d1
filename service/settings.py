"""Service configuration: environment variables (prefix ``DERMTRIAGE_``), overridden by CLI flags."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import Field, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from models.backends.registry import DEFAULT_MODEL, default_dermoscopic_model
from service.auth.cds_config import IssuerConfig, decode_issuers_setting, parse_issuers
from service.images import ImageLimits
from service.smart.config import SmartClient, decode_smart_clients_setting, parse_smart_clients

MIB = 1024 * 1024
LogLevel = Literal["debug", "info", "warning", "error", "critical"]


class Settings(BaseSettings):
    """Every knob of the HTTP service; the README's Configuration table lists the same fields."""

    model_config = SettingsConfigDict(env_prefix="DERMTRIAGE_", extra="ignore", validate_default=True)

    model: str = Field(default=DEFAULT_MODEL, description="registry name, spec JSON path or ad-hoc model string")
    dermoscopic_model: str | None = Field(
        default_factory=default_dermoscopic_model,
        description="model for modality=dermoscopic (default: the embedded dermoscopic model when it ships; "
        "`none`: dermoscopic photos go to `model`)",
    )
    device: Literal["cpu", "cuda"] = "cpu"
    host: str = "127.0.0.1"
    port: int = Field(default=8000, ge=0, le=65535)
    workers: int = Field(default=1, ge=1, description="uvicorn worker processes (each loads the model)")
    max_body_bytes: int = Field(default=12 * MIB, ge=1024, description="request body limit (JSON and multipart)")
    max_fhir_resources: int = Field(
        default=1000, ge=1, description="FHIR resources in one request body (Bundle entries, CDS prefetch); more: 413"
    )
    body_read_timeout_s: float = Field(
        default=30.0, gt=0, description="longest time to receive a request body (slow uploads get 408 and are cut off)"
    )
    limit_concurrency: int = Field(
        default=256, ge=1, description="connections served at once, counted from their first byte; more get 503"
    )
    allow_unauthenticated_network: bool = Field(
        default=False, description="with auth_disabled, allow binding a non-loopback address (never in production)"
    )
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
    runtime: Literal["torch", "onnxruntime", "openvino", "auto"] = Field(
        default="auto",
        description="image-tower runtime on CPU for the embedded models (auto: the fastest installed at equal "
        "answers, README Performance); heatmaps and CUDA run PyTorch",
    )
    shutdown_grace_s: float = Field(
        default=30.0, ge=0, description="on SIGTERM, how long in-flight requests may take to finish"
    )
    auth_disabled: bool = Field(
        default=False, description="serve /v1, /fhir and /cds-services without credentials (local use only)"
    )
    result_store_size: int = Field(default=256, ge=0, description="recent answers kept in memory for GET by id")
    result_ttl_s: float = Field(default=3600.0, gt=0, description="how long an answer can be fetched by id")
    result_purge_interval_s: float = Field(
        default=60.0, gt=0, description="how often expired answers (and CDS Hooks photo results) are purged"
    )
    result_heatmap_bytes: int = Field(
        default=64 * MIB, ge=0, description="heatmap PNG bytes kept across stored answers (oldest dropped first)"
    )
    # authentication (issue 7): see service/auth/ and the README's Authentication section
    public_url: str | None = Field(
        default=None, description="the service's external base URL (JWT aud, card links); None: the request's"
    )
    api_keys: Annotated[list[str], NoDecode] = Field(
        default_factory=list, description="API keys as NAME:sha256:HEX[:PER_MINUTE] lines (dermtriage create-api-key)"
    )
    api_rate_per_minute: float = Field(default=60.0, gt=0, description="default requests per minute per API key")
    api_rate_burst: int = Field(default=10, ge=1, description="requests a key may send at once before waiting")
    cds_issuers: Annotated[dict[str, Any] | list[str], NoDecode] = Field(
        default_factory=list,
        description="CDS Hooks issuers: JSON object iss -> {jwks, jku, fhir} (service/auth/cds_config.py) or file",
    )
    cds_jwks: str | None = Field(default=None, description="older form, one issuer only: its JWKS (JSON text or file)")
    cds_jku_allowlist: Annotated[list[str], NoDecode] = Field(
        default_factory=list, description="older form, one issuer only: JWKS URLs (jku) its JWTs may name"
    )
    cds_fetch_allow_hosts: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="hosts a CDS fetch (fhirServer, jku) may reach over plain http or at a non-public address",
    )
    cds_fetch_timeout_s: float = Field(default=10.0, gt=0, description="one deadline for all FHIR reads of a CDS call")
    cds_fetch_max_bytes: int = Field(
        default=32 * MIB, ge=1024, description="bytes all FHIR reads of one CDS Hooks call may return together"
    )
    cds_cache_size: int = Field(default=256, ge=0, description="CDS Hooks photo results kept for repeat calls")
    cds_cache_ttl_s: float = Field(default=900.0, gt=0, description="how long a CDS Hooks photo result is reused")
    # cases, reviews and audit (issue 18): see service/store/ and the README's "Cases, reviews and audit"
    database_url: str = Field(
        default="sqlite+aiosqlite:///./dermtriage.db",
        description="SQLAlchemy async URL of the case database (default: a SQLite file in the working directory; "
        "PostgreSQL: postgresql+asyncpg://user:password@host/db)",
    )
    database_required: bool = Field(
        default=True,
        description="true: /health/ready is 503 while the database is unreachable; false: triage runs without "
        "persistence when it is down at start (every answer says `case_storage: off`)",
    )
    database_migrate: bool | None = Field(
        default=None, description="run the migrations at start (None: only for the embedded SQLite default)"
    )
    database_queue_size: int = Field(
        default=1024, ge=1, description="case and audit writes waiting for the database; more are counted as lost"
    )
    reviewers: Annotated[list[str], NoDecode] = Field(
        default_factory=list, description="API key names with the reviewer role (read and review every case)"
    )
    store_photos: bool = Field(
        default=False, description="keep the photo (re-encoded, metadata-free) of answers whose request consents"
    )
    photo_dir: Path = Field(default=Path("photos"), description="folder of kept photos, addressed by SHA-256")
    retention_days: float | None = Field(
        default=None, gt=0, description="purge cases and their photos older than this (None: keep)"
    )
    # more than one process (issue 20): see service/shared_state.py and the README's "More than one process"
    redis_url: str | None = Field(
        default=None,
        description="Redis shared by every worker and replica (redis://host:6379/0): answers by id, CDS photo "
        "cache and card links, rate-limit buckets, JWT replay set; None: this process's memory",
    )

    # EHR integration (issue 23): see service/smart/ and the README's "Integrating with an EHR"
    smart_clients: Annotated[dict[str, Any], NoDecode] = Field(
        default_factory=dict,
        description="SMART clients per EHR: JSON object FHIR base (iss) -> {client_id, client_secret?, scope?, "
        "backend?} (service/smart/config.py) or file; empty: no SMART launch, CDS card links are `absolute`",
    )
    smart_session_ttl_s: float = Field(
        default=900.0, gt=0, description="how long a SMART launch (its tokens, server-side only) is kept"
    )
    smart_sessions_max: int = Field(default=1000, ge=1, description="SMART launches kept at once (oldest dropped)")

    @field_validator("dermoscopic_model", mode="before")
    @classmethod
    def _no_dermoscopic_model(cls, value: object) -> object:
        return None if isinstance(value, str) and value.strip().lower() in ("", "none", "off") else value

    @field_validator("log_level", mode="before")
    @classmethod
    def _lower_level(cls, value: object) -> object:
        return value.lower() if isinstance(value, str) else value

    @field_validator(
        "cors_origins", "api_keys", "cds_jku_allowlist", "cds_fetch_allow_hosts", "reviewers", mode="before"
    )
    @classmethod
    def _split_origins(cls, value: object) -> object:
        """Accept a JSON list or a comma-separated string (``https://a.example,https://b.example``)."""
        if isinstance(value, str):
            text = value.strip()
            if text.startswith("["):
                return json.loads(text)
            return [part.strip() for part in text.split(",") if part.strip()]
        return value

    @field_validator("smart_clients", mode="before")
    @classmethod
    def _decode_smart(cls, value: object) -> object:
        return decode_smart_clients_setting(value)

    @field_validator("cds_issuers", mode="before")
    @classmethod
    def _decode_issuers(cls, value: object) -> object:
        return decode_issuers_setting(value)

    @model_validator(mode="after")
    def _cds_needs_public_url(self) -> Settings:
        """CDS issuers: each with its own keys and FHIR servers, and the JWT aud on the configured public URL."""
        public = self.public_url or ""
        self.smart_client_configs()  # refused at start when malformed
        if self.cds_issuer_configs() and not public.startswith(("https://", "http://")):
            raise ValueError(
                "DERMTRIAGE_PUBLIC_URL (an absolute http(s) URL) is required with DERMTRIAGE_CDS_ISSUERS: "
                "the CDS Hooks JWT audience is checked against it, never against the request's Host"
            )
        return self

    def smart_client_configs(self) -> dict[str, SmartClient]:
        hosts = frozenset(h.strip().strip("[]").lower() for h in self.cds_fetch_allow_hosts if h.strip())
        return parse_smart_clients(self.smart_clients, hosts)

    def cds_issuer_configs(self) -> dict[str, IssuerConfig]:
        return parse_issuers(self.cds_issuers, self.cds_jwks, self.cds_jku_allowlist, self.cds_fetch_allow_hosts)

    def image_limits(self) -> ImageLimits:
        return ImageLimits(
            max_bytes=self.max_image_bytes, max_pixels=self.max_pixels, max_side=self.max_side, min_side=self.min_side
        )

    @staticmethod
    def env_name(field: str) -> str:
        return f"DERMTRIAGE_{field.upper()}"
