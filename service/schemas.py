"""Request options and the one typed triage result that every face (JSON, FHIR, CDS Hooks, viewer) adapts.

Optional parts (heatmaps, urgency, its SHAP values, uncertainty) are fields of `TriageResult`
that may be null; clients that ignore unknown keys keep working.
"""

from __future__ import annotations

import base64
import secrets
from dataclasses import dataclass, field
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from explain.heatmaps import Heatmap
from explain.risk_shap import UrgencyShap
from models.knowledge.risk_factors import RiskFactors
from models.knowledge.symptoms import SymptomFindings
from models.knowledge.taxonomy import Condition
from models.scoring.urgency import UrgencyResult
from models.segmentation import SEGMENTER_NAME, LesionSegmentation, mask_png
from models.uncertainty.contract import Uncertainty
from service.images import ImageInfo

DISCLAIMER = "Decision support for clinicians, not a diagnosis. Confirm with a clinical assessment."
MAX_CANDIDATE_LABELS = 50
MAX_LABEL_CHARS = 120
MAX_SYMPTOMS_CHARS = 2000
# 'validated': the conditions the model card validates; 'taxonomy': every condition (see TriageOptions.label_scope)
LabelScope = Literal["validated", "taxonomy"]


class ClinicalInput(BaseModel):
    """The patient's own words and risk factors: optional, validated, fused with the photo.

    The symptoms count twice: through the model's text tower (similarity to each condition) and as
    structured findings (negations and durations kept) that fill risk factors the caller left unknown.
    """

    model_config = ConfigDict(extra="forbid")

    symptoms: str | None = Field(
        default=None,
        max_length=MAX_SYMPTOMS_CHARS,
        description="the patient's own words",
        examples=["mole bleeding and getting bigger, no pain"],
    )
    risk_factors: RiskFactors | None = Field(default=None, description="all optional; units in each field")


REF_PATTERN = r"^[A-Za-z0-9._:/-]{1,128}$"


class TriageOptions(BaseModel):
    """What the caller may ask for besides the photo; unknown keys are refused, not ignored."""

    model_config = ConfigDict(extra="forbid")

    top_k: int = Field(default=5, ge=1, le=20, description="how many differentials to return")
    explain: bool = Field(default=False, description="add a Grad-CAM heatmap (PNG overlay) per differential")
    heatmap_grid: bool = Field(default=False, description="with explain: also return each raw low-resolution grid")
    modality: Literal["clinical", "dermoscopic"] = Field(default="clinical", description="photo kind")
    candidate_labels: list[str] | None = Field(
        default=None,
        min_length=2,
        max_length=MAX_CANDIDATE_LABELS,
        description="rank these labels instead of the taxonomy (taxonomy names resolve to their condition)",
    )
    patient_ref: str | None = Field(
        default=None,
        pattern=REF_PATTERN,
        description="your opaque patient reference, kept with the case (never a name; 1-128 of A-Z a-z 0-9 . _ : / -)",
    )
    lesion_ref: str | None = Field(
        default=None, pattern=REF_PATTERN, description="your opaque lesion reference, kept with the case"
    )
    consent_to_store: bool = Field(
        default=False,
        description="the patient consents to keeping the photo with the case (kept only where the operator enables "
        "it: DERMTRIAGE_STORE_PHOTOS; the stored copy is re-encoded without EXIF/GPS)",
    )
    segment: bool = Field(
        default=False,
        description="add the lesion's outline: a polygon and a PNG mask in the photo's working pixels, area, longest "
        "diameter, border irregularity and colour variegation (models/segmentation/MODEL_CARD.md)",
    )
    mm_per_pixel: float | None = Field(
        default=None,
        gt=0,
        le=10,
        description="with segment: the photo's scale (millimetres per pixel of the photo as sent), for mm and mm² "
        "measures; without it they are null",
    )
    label_scope: LabelScope | None = Field(
        default=None,
        description="which taxonomy conditions to rank (not with candidate_labels): 'validated' ranks only the "
        "conditions the model's card validates (the default when it validates any) and flags a photo outside "
        "them; 'taxonomy' ranks all conditions, the validated and the never-validated alike",
    )

    @model_validator(mode="after")
    def _one_label_source(self) -> TriageOptions:
        if self.label_scope is not None and self.candidate_labels:
            raise ValueError("give label_scope or candidate_labels, not both: candidate_labels ranks your own labels")
        return self

    @field_validator("candidate_labels")
    @classmethod
    def _clean_labels(cls, labels: list[str] | None) -> list[str] | None:
        if labels is None:
            return None
        cleaned = [x.strip() for x in labels]
        if any(not x or len(x) > MAX_LABEL_CHARS for x in cleaned):
            raise ValueError(f"each candidate label must be 1-{MAX_LABEL_CHARS} characters")
        if len({x.casefold() for x in cleaned}) != len(cleaned):
            raise ValueError("candidate labels must be distinct")
        return cleaned


SNOMED_CT = "http://snomed.info/sct"
ICD10_CM = "http://hl7.org/fhir/sid/icd-10-cm"


class CodeOut(BaseModel):
    system: str
    code: str
    display: str


def condition_codes(cond: Condition) -> list[CodeOut]:
    """A condition's codes, SNOMED CT first where the taxonomy has one, then ICD-10-CM."""
    codes = [CodeOut(system=ICD10_CM, code=cond.icd10.code, display=cond.icd10.display)]
    if cond.snomed_ct is not None:
        codes.insert(0, CodeOut(system=SNOMED_CT, code=cond.snomed_ct.code, display=cond.snomed_ct.display))
    return codes


class LookAlike(BaseModel):
    condition_id: str
    name: str


class RankChange(BaseModel):
    """How the history moved a condition against the photo-alone ranking, in one line."""

    image_rank: int = Field(ge=1, description="its rank on the photo alone (by `image_probability`, all labels)")
    direction: Literal["up", "down"]
    versus: str | None = Field(
        default=None, description="the strongest condition it passed (up) or that passed it (down)"
    )
    by: list[str] = Field(
        default_factory=list,
        description="what moved it, strongest first (up to 3): risk factors and findings in words, "
        "'the symptom words' (text match), 'base rate' or 'the photo, as weighed by the fusion'",
    )
    text: str = Field(description="e.g. 'moved up from #14 on the photo alone, past actinic keratosis, by: growth'")


class Differential(BaseModel):
    """One ranked condition. `condition_id` is null for a caller label that is not in the taxonomy."""

    rank: int
    label: str
    condition_id: str | None
    name: str
    probability: float = Field(ge=0, le=1)
    codes: list[CodeOut] = Field(default_factory=list)
    malignant: bool | None = None
    look_alikes: list[LookAlike] = Field(default_factory=list)
    validated_for_model: bool = False
    image_probability: float | None = Field(
        default=None,
        ge=0,
        le=1,
        description="the photo alone: its calibrated zero-shot probability (image-stage temperature), before fusion",
    )
    image_probability_raw: float | None = Field(
        default=None, ge=0, le=1, description="the photo's zero-shot softmax before calibration (what fusion reads)"
    )
    rank_change: RankChange | None = Field(
        default=None, description="set when symptoms, risk factors or the fusion moved it against the photo alone"
    )
    contributions: dict[str, float] | None = Field(
        default=None,
        description="log-odds each part added (baseline, image, symptoms, risk_factors; centred over the labels)",
    )


class LesionOutline(BaseModel):
    """The lesion's outline on the photo and what it measures (options.segment)."""

    found: bool = Field(description="false when no lesion could be outlined (then every measure is null)")
    reason: str | None = Field(default=None, description="why nothing was found, or a caveat about the outline")
    method: str = Field(description="the segmenter (its card: models/segmentation/MODEL_CARD.md)")
    photo_width: int = Field(description="width of the working copy the polygon and mask are drawn on")
    photo_height: int = Field(description="height of the working copy")
    confidence: float = Field(description="mean lesion probability inside the outline (0-1)")
    polygon: list[tuple[int, int]] = Field(default_factory=list, description="outline as [x, y] working-copy pixels")
    mask_png: str | None = Field(default=None, description="the mask as a base64 1-bit PNG (white = lesion)")
    area_px: float | None = Field(default=None, description="lesion area in pixels of the photo as sent")
    area_mm2: float | None = Field(default=None, description="lesion area in mm² (needs options.mm_per_pixel)")
    longest_diameter_px: float | None = Field(default=None, description="longest (Feret) diameter, photo pixels")
    longest_diameter_mm: float | None = Field(default=None, description="longest diameter in mm (needs the scale)")
    border_irregularity: float | None = Field(
        default=None, description="perimeter² / (4π area): 1 for a disc, higher for a ragged border"
    )
    solidity: float | None = Field(default=None, description="area / convex hull area: 1 for a convex outline")
    colour_variegation: float | None = Field(
        default=None, description="RMS CIELAB Delta E of the lesion's pixels from its mean colour"
    )

    @classmethod
    def of(
        cls, seg: LesionSegmentation, sent_width: int, mm_per_pixel: float | None = None, with_mask: bool = True
    ) -> LesionOutline:
        """Adapt a segmentation of the working copy; `sent_width` converts its pixels to the photo's as sent."""
        h, w = seg.mask.shape
        scale = sent_width / w  # photo pixels (as sent) per working pixel
        outline = cls(
            found=seg.found,
            reason=seg.reason,
            method=SEGMENTER_NAME,
            photo_width=w,
            photo_height=h,
            confidence=seg.confidence,
            polygon=seg.polygon,
            mask_png=base64.b64encode(mask_png(seg.mask)).decode() if with_mask and seg.found else None,
        )
        m = seg.measures
        if m is None:
            return outline
        mm = mm_per_pixel * scale if mm_per_pixel else None  # mm per working pixel
        return outline.model_copy(
            update={
                "area_px": round(m.area_px * scale**2, 1),
                "area_mm2": round(m.area_px * mm**2, 2) if mm else None,
                "longest_diameter_px": round(m.longest_diameter_px * scale, 1),
                "longest_diameter_mm": round(m.longest_diameter_px * mm, 2) if mm else None,
                "border_irregularity": m.border_irregularity,
                "solidity": m.solidity,
                "colour_variegation": m.colour_variegation,
            }
        )


class ModelRef(BaseModel):
    name: str
    version: str
    card_url: str | None = None


class Timings(BaseModel):
    decode_ms: float = 0.0
    queue_ms: float = 0.0
    inference_ms: float = 0.0
    heatmap_ms: float = 0.0
    total_ms: float = 0.0

    @classmethod
    def of(cls, decode_ms: float, queue_ms: float, inference_ms: float, heatmap_ms: float) -> Timings:
        """The one place timings are rounded and totalled."""
        parts = {"decode_ms": decode_ms, "queue_ms": queue_ms, "inference_ms": inference_ms, "heatmap_ms": heatmap_ms}
        return cls(**{k: round(v, 2) for k, v in parts.items()}, total_ms=round(sum(parts.values()), 2))


@dataclass(frozen=True)
class TriageInput:
    """One triage request, whichever face it came through (REST form or JSON, FHIR `$triage`, CDS Hooks
    prefetch): the photo's bytes (None when a CDS prefetch holds no photo), the options, the clinical
    input, and the caller's references that the FHIR and CDS answers echo back."""

    image: bytes | None
    options: TriageOptions
    clinical: ClinicalInput
    subject: str | None = None  # "Patient/123" when the caller's Patient has an id
    photo_ref: str | None = None  # "Media/9" when the caller's photo resource has an id
    photo_taken: str = ""  # when the photo was taken, as the resource says
    inputs: list[str] = field(default_factory=list)  # Observation references that were used


def new_result_id() -> str:
    """A fresh result id: 128 random bits as 32 hex digits (safe in URLs and as a FHIR id)."""
    return secrets.token_hex(16)


class TriageResult(BaseModel):
    """The domain answer for one photo."""

    id: str = Field(
        default_factory=new_result_id,
        description="the result id, minted by the server (128 random bits): `GET /v1/triage/{id}` reads it back",
    )
    request_id: str = Field(
        description="the caller's X-Request-ID (or a server-made one): a correlation id for logs, never a key"
    )
    model: ModelRef
    taxonomy_version: str
    modality: Literal["clinical", "dermoscopic"]
    label_source: Literal["taxonomy", "candidate_labels"]
    label_scope: LabelScope | None = Field(
        default=None,
        description="which taxonomy conditions were ranked: 'validated' (only those the model was validated for; "
        "the others are not ranked, and a photo that looks outside them gets an `outside_scope` flag) or "
        "'taxonomy' (all); null with candidate_labels",
    )
    scope_note: str | None = Field(
        default=None, description="the ranked scope in words, as the viewer, FHIR and CDS card say it"
    )
    differentials: list[Differential]
    image: ImageInfo
    timings: Timings
    heatmaps: list[Heatmap] | None = Field(default=None, description="one per differential, same order (explain)")
    segmentation: LesionOutline | None = Field(default=None, description="the lesion's outline (options.segment)")
    findings: SymptomFindings | None = Field(default=None, description="what the symptoms text says, negations kept")
    risk_factors: RiskFactors | None = Field(default=None, description="the validated risk factors received")
    fusion_model: str | None = Field(default=None, description="the fusion behind `probability`")
    urgency: UrgencyResult | None = Field(default=None, description="how soon to be seen, why, and the next step")
    urgency_shap: UrgencyShap | None = Field(
        default=None, description="SHAP values of the urgency score: base_value + sum(values) == score"
    )
    uncertainty: Uncertainty | None = Field(default=None, description="calibration, conformal set and gates")
    case_storage: Literal["queued", "off"] | None = Field(
        default=None,
        description="'queued': this answer is being kept as a case (GET /v1/cases/{id}); 'off': the case database "
        "was unreachable at start and DERMTRIAGE_DATABASE_REQUIRED=false, so nothing is kept",
    )
    disclaimer: str = DISCLAIMER
