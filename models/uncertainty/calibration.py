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

import datetime as dt
import hashlib
import itertools
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field
from scipy.optimize import minimize_scalar
from sklearn.model_selection import StratifiedGroupKFold

from models.backends.artifacts import ModelIdentity
from models.uncertainty.conformal import Method, conformal_quantile, conformity_scores, prediction_sets, set_coverage

__all__ = [
    "CalibrationFile",
    "CalibrationMismatchError",
    "CalibrationStage",
    "Calibrator",
    "CrossFit",
    "apply_temperature",
    "check_calibration",
    "coverage_report",
    "cross_fit_calibration",
    "expected_calibration_error",
    "fit_stage",
    "fit_temperature",
    "load_calibration",
    "reliability_bins",
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


def _nll(probs: np.ndarray, y: np.ndarray) -> float:
    return float(-np.log(np.clip(probs[np.arange(len(y)), y], PROB_FLOOR, 1.0)).mean())


def fit_temperature(probs: np.ndarray, labels: Sequence[int]) -> float:
    """The T in [0.05, 20] minimising the negative log-likelihood of the true labels."""
    y = np.asarray(labels, dtype=int)
    res = minimize_scalar(
        lambda t: _nll(apply_temperature(probs, float(np.exp(t))), y),
        bounds=(np.log(0.05), np.log(20.0)),
        method="bounded",
    )
    return float(np.exp(res.x))


def reliability_bins(probs: np.ndarray, labels: Sequence[int], bins: int = ECE_BINS) -> list[dict[str, float]]:
    """Top-label reliability: per equal-width confidence bin, n, mean confidence and accuracy."""
    p = np.asarray(probs, dtype=float)
    conf, hit = p.max(1), p.argmax(1) == np.asarray(labels)
    edges = np.linspace(0.0, 1.0, bins + 1)
    out = []
    for k, (lo, hi) in enumerate(itertools.pairwise(edges)):
        m = (conf > lo) & (conf <= hi) if k else (conf >= lo) & (conf <= hi)
        if m.any():
            out.append(
                {"lo": float(lo), "hi": float(hi), "n": int(m.sum()), "confidence": float(conf[m].mean()),
                 "accuracy": float(hit[m].mean())}
            )  # fmt: skip
    return out


def expected_calibration_error(probs: np.ndarray, labels: Sequence[int], bins: int = ECE_BINS) -> float:
    """Top-label ECE (Guo et al. 2017): sum over bins of n_b / N * |accuracy_b - confidence_b|."""
    rows = reliability_bins(probs, labels, bins)
    n = sum(r["n"] for r in rows)
    return float(sum(r["n"] / n * abs(r["accuracy"] - r["confidence"]) for r in rows)) if n else 0.0


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


# ----------------------------------------------------------------------------- fitting and judging


def fit_stage(
    probs: np.ndarray,
    labels: Sequence[int],
    classes: Sequence[str],
    *,
    method: Method = "aps",
    lam: float = 0.0,
    k_reg: int = 0,
    class_conditional: bool = False,
    figures: dict[str, Any] | None = None,
) -> CalibrationStage:
    """Temperature on all rows, then conformal scores of the temperature-scaled answers."""
    y = np.asarray(labels, dtype=int)
    t = fit_temperature(probs, y)
    lam = lam if method == "raps" else 0.0
    raw = conformity_scores(apply_temperature(probs, t), y, lam, k_reg)
    per_class = (
        {c: [round(float(v), 6) for v in np.sort(raw[y == k])] for k, c in enumerate(classes) if (y == k).any()}
        if class_conditional
        else {}
    )
    return CalibrationStage(
        temperature=round(t, 6),
        method=method,
        lam=lam,
        k_reg=k_reg if method == "raps" else 0,
        scores=[round(float(v), 6) for v in np.sort(raw)],
        class_conditional=class_conditional,
        class_scores=per_class,
        classes=list(classes),
        n=len(raw),
        figures=figures or {},
    )


@dataclass
class CrossFit:
    """Per row: the answer calibrated by a stage fitted without the row's patient, and its set."""

    calibrated: np.ndarray  # (N, C)
    member: np.ndarray  # (N, C) bool
    covered: np.ndarray  # (N,) bool
    temperatures: list[float] = field(default_factory=list)


def cross_fit_calibration(
    probs: np.ndarray,
    labels: Sequence[int],
    groups: Sequence[str],
    *,
    coverage: float = 0.9,
    method: Method = "aps",
    lam: float = 0.0,
    k_reg: int = 0,
    class_conditional: bool = False,
    folds: int = 5,
    seed: int = 0,
) -> CrossFit:
    """Patient-grouped cross-fitting: each fold is calibrated and judged by a stage fitted on the others."""
    p = np.asarray(probs, dtype=float)
    y = np.asarray(labels, dtype=int)
    g = np.asarray(groups)
    classes = [str(k) for k in range(p.shape[1])]
    calibrated = np.zeros_like(p)
    member = np.zeros(p.shape, dtype=bool)
    temps = []
    splitter = StratifiedGroupKFold(n_splits=folds, shuffle=True, random_state=seed)
    for tr, te in splitter.split(np.zeros(len(y)), y, g):
        assert not set(g[tr]) & set(g[te]), "a patient in both fit and judge rows"
        stage = fit_stage(
            p[tr], y[tr], classes, method=method, lam=lam, k_reg=k_reg, class_conditional=class_conditional
        )
        temps.append(stage.temperature)
        calibrated[te] = apply_temperature(p[te], stage.temperature)
        member[te] = prediction_sets(calibrated[te], stage.thresholds(classes, coverage), stage.lam, stage.k_reg)
    return CrossFit(calibrated, member, set_coverage(member, y), temps)


def coverage_report(
    cf: CrossFit,
    labels: Sequence[int],
    classes: Sequence[str],
    fitzpatrick: Sequence[int | None] | None = None,
) -> dict[str, Any]:
    """Coverage and mean set size overall, per class and per Fitzpatrick type."""
    y = np.asarray(labels, dtype=int)
    size = cf.member.sum(1)
    per_class = {
        c: {
            "n": int((y == k).sum()),
            "coverage": float(cf.covered[y == k].mean()),
            "mean_set_size": float(size[y == k].mean()),
        }
        for k, c in enumerate(classes)
        if (y == k).any()
    }
    per_fitz: dict[str, dict[str, float | int]] = {}
    if fitzpatrick is not None:
        fz = np.array([f if f is not None else 0 for f in fitzpatrick])
        for t in sorted(set(fz.tolist())):
            m = fz == t
            key = str(t) if t else "unknown"
            per_fitz[key] = {
                "n": int(m.sum()),
                "coverage": float(cf.covered[m].mean()),
                "mean_set_size": float(size[m].mean()),
            }
    return {
        "coverage": float(cf.covered.mean()),
        "mean_set_size": float(size.mean()),
        "per_class": per_class,
        "per_fitzpatrick": per_fitz,
    }


def provenance(data: str, protocol: str, **extra: Any) -> dict[str, Any]:
    return {
        "data": data,
        "protocol": protocol,
        "fitted_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        **extra,
    }


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
