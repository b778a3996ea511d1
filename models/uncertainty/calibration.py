"""Temperature scaling, calibration error, and the calibration file tied to one model and taxonomy.

A calibration file holds, per *stage* (`image`: the zero-shot softmax; `fused`: the posterior of
models/scoring/fusion.py), one temperature and the sorted split-conformal scores
(models/uncertainty/conformal.py) fitted on a labelled set. It names the model (name, version,
fingerprint: the weights hash for the embedded model) and the taxonomy (fingerprint);
`check_calibration` refuses it for anything else, because a temperature fitted to one model's logits
means nothing for another's.

Temperature scaling on probabilities: p_T(c) = softmax(log p(c) / T); T > 1 softens an
over-confident model. It never changes the ranking, so it can be applied before ranking.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from models.backends.artifacts import ModelIdentity
from models.uncertainty.conformal import Method, conformal_quantile, prediction_sets

__all__ = [
    "CalibrationFile",
    "CalibrationMismatchError",
    "CalibrationStage",
    "Calibrator",
    "apply_temperature",
    "check_calibration",
    "load_calibration",
]

FORMAT = "dermtriage-calibration/1"
PROB_FLOOR = 1e-12
ECE_BINS = 15
Stage = Literal["image", "fused"]


class CalibrationMismatchError(ValueError):
    """A calibration file made for another model, other weights or another taxonomy."""


# ----------------------------------------------------------------------------- the maths


def apply_temperature(probs: np.ndarray, temperature: float) -> np.ndarray:
    """softmax(log p / T) row-wise; the ranking is unchanged."""
    z = np.log(np.clip(np.asarray(probs, dtype=float), PROB_FLOOR, 1.0)) / temperature
    z -= z.max(axis=-1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=-1, keepdims=True)


# ----------------------------------------------------------------------------- the file


class CalibrationStage(BaseModel):
    """One fitted stage: a temperature and the conformal scores of its calibration answers."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    temperature: float = Field(gt=0)
    method: Method = "aps"
    lam: float = Field(default=0.0, ge=0, description="RAPS penalty per rank beyond k_reg (0: APS)")
    k_reg: int = Field(default=0, ge=0)
    scores: list[float] = Field(description="sorted conformity scores of the calibration answers")
    class_conditional: bool = Field(default=False, description="one threshold per true class (Mondrian)")
    class_scores: dict[str, list[float]] = Field(
        default_factory=dict, description="with class_conditional: sorted scores of each class's answers"
    )
    classes: list[str] = Field(description="the label set the stage was fitted over")
    n: int
    figures: dict[str, Any] = Field(default_factory=dict, description="cross-fitted figures of this fit")

    def q_hat(self, coverage: float) -> float:
        """The marginal threshold."""
        return conformal_quantile(self.scores, coverage)

    def thresholds(self, labels: Sequence[str], coverage: float) -> np.ndarray:
        """(C,) threshold per label: its class's own where fitted and finite, the marginal one otherwise."""
        marginal = self.q_hat(coverage)
        out = np.full(len(labels), marginal)
        if self.class_conditional:
            for k, label in enumerate(labels):
                if label in self.class_scores:
                    q = conformal_quantile(self.class_scores[label], coverage)
                    out[k] = q if np.isfinite(q) else marginal
        return out


class CalibrationFile(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    format: str = FORMAT
    model: dict[str, str] = Field(description="name, version, fingerprint (the embedded model: name@version#sha)")
    taxonomy: dict[str, str] = Field(description="version, fingerprint")
    stages: dict[Stage, CalibrationStage]
    fit: dict[str, Any] = Field(default_factory=dict, description="data, protocol, when")

    @property
    def id(self) -> str:
        """Short id shown in answers: model, taxonomy and a hash of this file's content."""
        blob = hashlib.sha256(self.model_dump_json().encode()).hexdigest()[:12]
        model = self.model.get("fingerprint") or self.model.get("name", "?")
        return f"{model}|taxonomy:{self.taxonomy.get('fingerprint', '')[:12]}|{blob}"

    def write(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(self.model_dump(mode="json"), indent=1) + "\n", encoding="utf-8")


def load_calibration(path: Path) -> CalibrationFile:
    cal = CalibrationFile.model_validate_json(Path(path).read_text(encoding="utf-8"))
    if cal.format != FORMAT:
        raise CalibrationMismatchError(f"{path}: format {cal.format!r}, expected {FORMAT!r}")
    return cal


def check_calibration(
    cal: CalibrationFile, *, identity: ModelIdentity, taxonomy_fingerprint: str, source: str = ""
) -> None:
    """Raise CalibrationMismatchError unless `cal` was made for this model, these weights and this taxonomy."""
    where = f"{source}: " if source else ""
    made_for = ModelIdentity.parse(cal.model.get("fingerprint") or cal.model.get("name", ""))
    if made_for.name != identity.name:
        raise CalibrationMismatchError(
            f"{where}calibration made for model {made_for.name!r}, not {identity.name!r}; "
            f"run `dermtriage calibrate --model {identity.name} --data DIR` or point DERMTRIAGE_CALIBRATION elsewhere"
        )
    if not identity.accepts(made_for):
        raise CalibrationMismatchError(
            f"{where}calibration made for {made_for.fingerprint!r}, but the loaded weights are "
            f"{identity.fingerprint!r}; recalibrate after changing the weights"
        )
    if cal.taxonomy.get("fingerprint") != taxonomy_fingerprint:
        raise CalibrationMismatchError(
            f"{where}calibration made for taxonomy {cal.taxonomy.get('fingerprint', '')[:12]}, the loaded taxonomy is "
            f"{taxonomy_fingerprint[:12]}; recalibrate after changing the taxonomy"
        )


# ----------------------------------------------------------------------------- at serving time


class Calibrator:
    """A loaded, checked calibration file at one coverage level: calibrates answers and builds sets."""

    def __init__(self, cal: CalibrationFile, coverage: float = 0.9) -> None:
        self.file = cal
        self.coverage = coverage

    @property
    def id(self) -> str:
        return self.file.id

    def stage(self, name: Stage) -> CalibrationStage:
        return self.file.stages.get(name) or self.file.stages["image"]

    def temperature(self, stage: Stage = "image") -> float:
        return self.stage(stage).temperature

    def calibrate(self, probs: np.ndarray, stage: Stage = "image") -> np.ndarray:
        return apply_temperature(probs, self.stage(stage).temperature)

    def prediction_set(self, calibrated: np.ndarray, labels: Sequence[str], stage: Stage = "image") -> np.ndarray:
        """(C,) membership for one calibrated answer over `labels` (or (N, C) for several answers)."""
        s = self.stage(stage)
        member = prediction_sets(calibrated, s.thresholds(labels, self.coverage), s.lam, s.k_reg)
        return member[0] if np.ndim(calibrated) == 1 else member
