"""Fitting and judging a calibration offline: temperature by likelihood, conformal scores, ECE and
reliability, patient-grouped cross-fitting, coverage per group. The serving side (the file, the
`Calibrator`) lives in `models/uncertainty/calibration.py`."""

from __future__ import annotations

import datetime as dt
import itertools
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from scipy.optimize import minimize_scalar
from sklearn.model_selection import StratifiedGroupKFold
from tqdm import tqdm

from models.uncertainty.calibration import (
    ECE_BINS,
    PROB_FLOOR,
    CalibrationStage,
    apply_temperature,
)
from models.uncertainty.conformal import Method, conformity_scores, prediction_sets, set_coverage

__all__ = [
    "CrossFit",
    "coverage_report",
    "cross_fit_calibration",
    "expected_calibration_error",
    "fit_stage",
    "fit_temperature",
    "provenance",
    "reliability_bins",
]


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
    progress: str | None = None,
) -> CrossFit:
    """Patient-grouped cross-fitting: each fold is calibrated and judged by a stage fitted on the others
    (`progress`: a progress bar over the folds with this description)."""
    p = np.asarray(probs, dtype=float)
    y = np.asarray(labels, dtype=int)
    g = np.asarray(groups)
    classes = [str(k) for k in range(p.shape[1])]
    calibrated = np.zeros_like(p)
    member = np.zeros(p.shape, dtype=bool)
    temps = []
    splitter = StratifiedGroupKFold(n_splits=folds, shuffle=True, random_state=seed)
    splits = splitter.split(np.zeros(len(y)), y, g)
    for tr, te in tqdm(splits, total=folds, desc=progress, unit="fold", disable=progress is None):
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
