"""The lesion routes' request and answer shapes (`/v1/lesions`): a comparison of two visits and a
lesion's timeline. The outline itself (`LesionOutline`) is part of the triage answer (service/schemas.py)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from models.knowledge.risk_factors import BodySite
from models.scoring.urgency import UrgencyResult
from service.schemas import DISCLAIMER, LesionOutline


class LesionPhotoIn(BaseModel):
    """One visit's photo: a stored case (its kept photo and answer) or an upload (base64)."""

    model_config = ConfigDict(extra="forbid")

    case_id: str | None = Field(default=None, max_length=64, description="a kept case whose photo was stored")
    image: str | None = Field(default=None, description="the photo in base64 (or a data: URL)")
    body_site: BodySite | None = Field(default=None, description="where the lesion is (a case's own risk factors win)")
    taken: str | None = Field(default=None, max_length=40, description="when the photo was taken (echoed back)")

    @model_validator(mode="after")
    def _one_source(self) -> LesionPhotoIn:
        if (self.case_id is None) == (self.image is None):
            raise ValueError("give exactly one of case_id or image")
        return self


class CompareRequest(BaseModel):
    """Two photos of one lesion, earlier first."""

    model_config = ConfigDict(extra="forbid")

    earlier: LesionPhotoIn
    later: LesionPhotoIn
    modality: Literal["clinical", "dermoscopic"] = Field(default="clinical", description="photo kind of uploads")
    overlays: bool = Field(default=True, description="add the before/after overlay PNG for the viewer")


class Ng12Change(BaseModel):
    """The NG12 change items a measured comparison supports (each 2 points, like a reported change)."""

    change_in_size: bool = False
    change_in_shape: bool = False
    change_in_colour: bool = False


class LesionComparison(BaseModel):
    """Has the lesion changed between two photos? Measures after registration, a verdict, reasons."""

    verdict: Literal["changed", "stable", "cannot tell"]
    reasons: list[str] = Field(description="why this verdict (for 'cannot tell': every reason found)")
    comparable: bool = Field(description="same lesion, same kind of photo, registered with enough overlap")
    registration: dict[str, object] = Field(description="how the later photo was mapped onto the earlier one")
    area_change_pct: float | None = Field(default=None, description="area change, %, after registration")
    diameter_change_pct: float | None = Field(default=None, description="longest diameter change, %")
    delta_e: float | None = Field(default=None, description="CIE76 Delta E of the lesion colour relative to its skin")
    shape_change: float | None = Field(default=None, description="1 - IoU of the registered outlines at equal area")
    border_irregularity_change: float | None = None
    appearance_change: float | None = Field(
        default=None, description="1 - correlation of the lesion's picture with the earlier at its best magnification"
    )
    outline_stability: float | None = Field(
        default=None, description="IoU of each outline between a loose and a tight crop (the lower of the two)"
    )
    change_score: float | None = Field(default=None, description="largest measure over its threshold (>= 1: changed)")
    differential_change: dict[str, float] = Field(
        default_factory=dict, description="later minus earlier probability of each condition both answers rank"
    )
    measured_ng12: Ng12Change = Field(default_factory=Ng12Change, description="the NG12 change items measured")
    earlier: LesionOutline
    later: LesionOutline
    later_outline_on_earlier: list[tuple[int, int]] = Field(
        default_factory=list, description="the later outline registered onto the earlier working copy"
    )
    overlay_png: str | None = Field(default=None, description="base64 PNG: before | after, outlines drawn")
    later_urgency: UrgencyResult | None = Field(
        default=None,
        description="the later photo's urgency; a measured change counts as the NG12 items a reported one would, "
        "and a reason says it was measured",
    )
    taken: tuple[str | None, str | None] = (None, None)
    disclaimer: str = DISCLAIMER


class TimelineVisit(BaseModel):
    """One kept case of the lesion."""

    case_id: str
    created_at: str
    photo_stored: bool
    top_condition: str | None = None
    top_probability: float | None = None
    urgency: str | None = None
    outline: LesionOutline | None = Field(default=None, description="the lesion's outline (kept photos only)")


class TimelineStep(BaseModel):
    """What changed between two consecutive visits whose photos are kept."""

    earlier_case_id: str
    later_case_id: str
    verdict: Literal["changed", "stable", "cannot tell"]
    reasons: list[str]
    area_change_pct: float | None = None
    diameter_change_pct: float | None = None
    delta_e: float | None = None
    shape_change: float | None = None
    later_outline_on_earlier: list[tuple[int, int]] = Field(default_factory=list)


class LesionTimeline(BaseModel):
    lesion_ref: str
    total: int = Field(description="kept cases of this lesion in all (the last `limit` are listed)")
    visits: list[TimelineVisit] = Field(description="oldest first")
    changes: list[TimelineStep] = Field(description="between consecutive visits with kept photos")
    disclaimer: str = DISCLAIMER
