"""The uncertainty part of a triage answer: calibrated probabilities, a conformal set, gates.

This module holds the typed contract only; calibration (temperature, conformal threshold), the
out-of-distribution and photo-quality gates fill it (see models/uncertainty/calibration.py and
models/uncertainty/gates.py).
Every flag carries the measured value and the threshold it crossed, so a clinician or an
integrator can see *why* a case was sent to a human.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

FlagName = Literal[
    "out_of_distribution",
    "poor_quality",
    "low_confidence",
    "ambiguous",
    "unvalidated_condition",
    "underrepresented_skin_type",
    "uncalibrated",
    "outside_scope",
]


class Flag(BaseModel):
    """One gate that fired: what was measured, against which threshold, in plain words."""

    model_config = ConfigDict(frozen=True)

    name: FlagName
    measure: str = Field(description="what was measured, e.g. 'laplacian_variance' or 'top_probability'")
    value: float | str | None = Field(description="the measured value")
    threshold: float | str | None = Field(description="the threshold it crossed")
    requires_review: bool = Field(description="this flag alone sends the case to a human")
    message: str = Field(description="the flag in plain words for a clinician")


class Uncertainty(BaseModel):
    """How far to trust this answer."""

    model_config = ConfigDict(frozen=True)

    calibrated: bool = Field(description="probabilities went through a calibration fitted for this model")
    calibration_id: str | None = Field(default=None, description="which calibration file (model, taxonomy, hash)")
    temperature: float | None = None
    prediction_set: list[str] = Field(
        default_factory=list, description="labels (condition ids) in the conformal set, most probable first"
    )
    coverage: float | None = Field(default=None, description="nominal coverage of the set, e.g. 0.9")
    entropy: float = Field(ge=0, description="Shannon entropy of the returned probabilities (nats)")
    top2_margin: float = Field(ge=0, le=1, description="top-1 minus top-2 probability")
    flags: list[Flag] = Field(default_factory=list)
    needs_review: bool = Field(description="a human should review this case before acting on it")
    review_reasons: list[str] = Field(default_factory=list, description="why, in plain words")
