"""The JSON shapes of the case routes: what a caller sends (``*In``, unknown keys refused, every string
bounded) and what it gets back. Checks that need the case (coordinates inside the photo, taxonomy
labels) are made by :mod:`service.store.cases`."""

from __future__ import annotations

from datetime import date, datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator

from models.knowledge.taxonomy import UrgencyTier

MAX_NOTE_CHARS = 4000
MAX_POINTS = 1000
PAGE_SIZE = 50
MAX_PAGE_SIZE = 200
Confidence = Literal["low", "medium", "high"]
Point = tuple[float, float]


class _In(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ReviewIn(_In):
    agrees: bool = Field(description="the reviewer agrees with the top differential")
    diagnosis: str | None = Field(default=None, max_length=100, description="the reviewer's diagnosis: a taxonomy id")
    confidence: Confidence
    urgency_override: UrgencyTier | None = Field(default=None, description="the urgency the reviewer sets instead")
    urgency_reason: str | None = Field(
        default=None, max_length=MAX_NOTE_CHARS, validate_default=True, description="why (required with an override)"
    )
    note: str | None = Field(default=None, max_length=MAX_NOTE_CHARS)

    @field_validator("urgency_reason")
    @classmethod
    def _override_needs_reason(cls, value: str | None, info: ValidationInfo) -> str | None:
        if info.data.get("urgency_override") is not None and not (value or "").strip():
            raise ValueError("required with urgency_override")
        return value


class ReviewOut(ReviewIn):
    id: int
    case_id: str
    reviewer: str
    created_at: datetime


class OutcomeIn(_In):
    diagnosis: str = Field(max_length=100, description="a taxonomy id")
    date: date
    source: Literal["histopathology", "follow-up"]


class OutcomeOut(OutcomeIn):
    id: int
    case_id: str
    recorded_by: str
    created_at: datetime


class LesionTags(_In):
    subtype: str | None = Field(default=None, max_length=100)
    severity: Literal["mild", "moderate", "severe"] | None = None
    body_site: str | None = Field(default=None, max_length=64)
    fitzpatrick: Literal["I", "II", "III", "IV", "V", "VI"] | None = Field(
        default=None, description="Fitzpatrick skin type as judged by the clinician"
    )


class AnnotationIn(_In):
    """``box``: ``[x, y, width, height]``; ``polygon`` (3 or more points) and ``keypoints`` (1 or more):
    ``points`` as ``[x, y]`` pairs; all in pixels of the photo as decoded (`image.width` x `image.height`).
    ``tags``: lesion-level tags, alone (kind ``tags``) or with a shape."""

    kind: Literal["box", "polygon", "keypoints", "tags"]
    label: str | None = Field(
        default=None, max_length=100, validate_default=True, description="a taxonomy id (required for shapes)"
    )
    box: tuple[float, float, float, float] | None = Field(default=None, validate_default=True)
    points: list[Point] | None = Field(default=None, max_length=MAX_POINTS, validate_default=True)
    tags: LesionTags | None = Field(default=None, validate_default=True)

    @field_validator("label", "box", "points", "tags")
    @classmethod
    def _shape(cls, value: Any, info: ValidationInfo) -> Any:
        """Each field checked against `kind`, so a 422 names the field that is wrong."""
        kind, name = info.data.get("kind"), info.field_name
        if name == "label" and kind not in (None, "tags") and not value:
            raise ValueError("a shape needs a taxonomy label")
        if name == "box" and kind == "box" and value is None:
            raise ValueError("a box annotation needs box [x, y, width, height]")
        if name == "points" and kind == "polygon" and len(value or ()) < 3:
            raise ValueError("a polygon needs at least 3 points")
        if name == "points" and kind == "keypoints" and not value:
            raise ValueError("keypoints need at least 1 point")
        if name == "tags" and kind == "tags" and value is None:
            raise ValueError("a tags annotation needs tags")
        return value


class AnnotationOut(AnnotationIn):
    id: int
    case_id: str
    annotator: str
    created_at: datetime


class ModelOfCase(BaseModel):
    name: str
    version: str
    weights_sha256: str | None


class CaseSummary(BaseModel):
    id: str = Field(description="the triage answer's server-minted `id`")
    created_at: datetime
    owner: str
    model: ModelOfCase
    calibration_id: str | None
    taxonomy_version: str
    photo_sha256: str
    photo_width: int
    photo_height: int
    patient_ref: str | None
    lesion_ref: str | None
    reviewed: bool
    photo_stored: bool = Field(description="the photo is kept (consent given and DERMTRIAGE_STORE_PHOTOS on)")


class CaseOut(CaseSummary):
    answer: dict[str, Any] = Field(description="the triage answer as given (heatmap PNGs left out)")


class CasePage(BaseModel):
    items: list[CaseSummary]
    total: int
    limit: int
    offset: int


class AuditOut(BaseModel):
    at: datetime
    actor: str
    action: Literal["create", "read", "update", "export", "delete"]
    resource_type: str
    resource_id: str
    client: str | None
    outcome: Literal["success", "denied", "failed"]
