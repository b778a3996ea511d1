"""SHAP values of the urgency score over the risk factors and the image and symptoms modalities.

The "features" are the parts of one answer: the photo (absent: no image evidence, a uniform
distribution over the same labels), the symptoms (absent: no text similarities and no findings)
and each risk factor the caller gave (absent: unknown). The background is the answer with every
part absent, so SHAP's base value is the urgency score of "nothing known" and
base + sum(values) == the answer's score (exact Shapley values over all 2^G coalitions).

Only the factors that were given are features (an absent factor's SHAP value is 0 by definition).
When more than `max_features - 2` are given they are grouped by theme, so one answer costs at
most 2^max_features evaluations of a vectorised fusion + urgency core (a few ms each).
"""

from __future__ import annotations

import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numba
import numpy as np
import shap
from numba.core.registry import CPUDispatcher
from pydantic import BaseModel, ConfigDict, Field

from models.backends.artifacts import default_cache_root
from models.knowledge.risk_factors import RiskFactors
from models.knowledge.risk_priors import LiteraturePriors, load_priors
from models.knowledge.symptoms import SymptomFindings, apply_findings
from models.knowledge.taxonomy import Taxonomy, load_taxonomy
from models.scoring.fusion import FusionModel, FusionParts, alarm_variants, label_scores, load_fusion
from models.scoring.urgency import UrgencyThresholds, decide, default_thresholds, label_table

__all__ = ["THEMES", "UrgencyShap", "cache_shap_kernels", "explain_urgency", "warm_up"]

IMAGE, SYMPTOMS = "image", "symptoms"
THEMES: dict[str, tuple[str, ...]] = {
    "patient": ("age", "sex", "fitzpatrick"),
    "history": (
        "family_history_melanoma",
        "family_history_skin_cancer",
        "personal_history_skin_cancer",
        "history_other_cancer",
        "immunosuppression",
        "sunburn_history",
        "many_moles",
        "smoker",
    ),
    "lesion_site_size": ("body_site", "diameter_mm", "lesion_duration_days"),
    "lesion_change": (
        "changed_size",
        "rapid_growth",
        "changed_shape",
        "changed_colour",
        "irregular_shape",
        "irregular_colour",
    ),
    "lesion_symptoms": ("bleeding", "itch", "pain", "ulceration", "elevation", "inflammation"),
    "systemic": ("fever", "spreading_redness", "widespread_blistering", "skin_pain", "near_eye"),
}


class UrgencyShap(BaseModel):
    """SHAP decomposition of one urgency score: base_value + sum(values) == score."""

    model_config = ConfigDict(frozen=True)

    score: float
    base_value: float = Field(description="urgency score with nothing known (no photo, no text, no risk factors)")
    values: dict[str, float] = Field(description="feature -> SHAP value (score units)")
    features: dict[str, list[str]] = Field(description="feature -> the inputs it stands for")
    additivity_error: float


@dataclass
class _Game:
    """The cooperative game: a coalition of present features -> urgency score."""

    image_probs: Mapping[str, float]
    text_sims: Mapping[str, float] | None
    risk: RiskFactors
    findings: SymptomFindings | None
    groups: dict[str, list[str]]
    model: FusionModel
    priors: LiteraturePriors
    thresholds: UrgencyThresholds
    taxonomy: Taxonomy

    def __post_init__(self) -> None:
        labels = list(self.image_probs)
        uniform = dict.fromkeys(labels, 1.0 / len(labels))
        self.parts = {
            (img, txt): FusionParts(
                self.model,
                self.priors,
                label_scores(self.image_probs if img else uniform, self.text_sims if txt else None),
            )
            for img in (False, True)
            for txt in (False, True)
        }
        self.table = label_table(tuple(labels), self.thresholds, self.taxonomy)
        self.names = list(self.groups)
        self.explicit = self.risk.model_dump(exclude_none=True)
        self.cache: dict[tuple[bool, ...], float] = {}

    def score(self, present: Sequence[bool]) -> float:
        key = tuple(bool(p) for p in present)
        if key not in self.cache:
            on = dict(zip(self.names, key, strict=True))
            fields = {f for name, ok in on.items() if ok and name not in (IMAGE, SYMPTOMS) for f in self.groups[name]}
            risk = RiskFactors(**{k: v for k, v in self.explicit.items() if k in fields})
            with_text = on.get(SYMPTOMS, False)
            merged = apply_findings(risk, self.findings if with_text else None)
            parts = self.parts[(on.get(IMAGE, False), with_text and bool(self.text_sims))]
            post = parts.posteriors(alarm_variants(merged))
            shingles = with_text and self.findings is not None and "shingles" in self.findings.present
            d = decide(post.max(0), post[0], merged, shingles, self.thresholds, self.table)
            self.cache[key] = d.score
        return self.cache[key]

    def __call__(self, x: np.ndarray) -> np.ndarray:
        return np.array([self.score(row > 0.5) for row in np.atleast_2d(x)])


def _groups(risk: RiskFactors, has_text: bool, max_features: int) -> dict[str, list[str]]:
    given = list(risk.model_dump(exclude_none=True))
    groups: dict[str, list[str]] = {IMAGE: ["image_probs"]}
    if has_text:
        groups[SYMPTOMS] = ["symptom_text_sims", "findings"]
    room = max_features - len(groups)
    if len(given) <= room:
        groups.update({f: [f] for f in given})
    else:
        for theme, fields in THEMES.items():
            members = [f for f in fields if f in given]
            if members:
                groups[theme] = members
    return groups


def explain_urgency(
    image_probs: Mapping[str, float],
    symptom_text_sims: Mapping[str, float] | None = None,
    risk: RiskFactors | None = None,
    findings: SymptomFindings | None = None,
    *,
    model: FusionModel | None = None,
    priors: LiteraturePriors | None = None,
    thresholds: UrgencyThresholds | None = None,
    taxonomy: Taxonomy | None = None,
    max_features: int = 8,
) -> UrgencyShap:
    """Exact SHAP values (shap's Exact explainer) of the urgency score of one answer.

    Same inputs as `models.scoring.fusion.fuse` (+ the urgency thresholds); the score it explains equals
    `assess_urgency(fuse(...)).score` for those inputs.
    """
    risk = risk or RiskFactors()
    has_text = bool(symptom_text_sims) or bool(findings and findings.status)  # any status moves fusion or urgency
    groups = _groups(risk, has_text, max_features)
    game = _Game(
        image_probs=image_probs,
        text_sims=symptom_text_sims,
        risk=risk,
        findings=findings,
        groups=groups,
        model=model if model is not None else load_fusion(),
        priors=priors if priors is not None else load_priors(),
        thresholds=thresholds or default_thresholds(),
        taxonomy=taxonomy or load_taxonomy(),
    )
    g = len(groups)
    masker = shap.maskers.Independent(np.zeros((1, g)), max_samples=1)
    explainer = shap.explainers.Exact(game, masker, feature_names=list(groups))
    explanation = explainer(np.ones((1, g)), silent=True)
    values = np.asarray(explanation.values[0], dtype=float)
    base = float(np.asarray(explanation.base_values).ravel()[0])
    score = game.score([True] * g)
    return UrgencyShap(
        score=score,
        base_value=base,
        values=dict(zip(groups, values.tolist(), strict=True)),
        features=groups,
        additivity_error=abs(base + float(values.sum()) - score),
    )


def cache_shap_kernels(folder: Path) -> int:
    """Let numba keep shap's compiled kernels in ``folder``; returns how many kernels may be cached.

    shap's ``@njit`` kernels carry no ``cache=True``, so every process compiled them again before
    ready (6.4 s here); ``Dispatcher.enable_caching`` is numba's own switch for that. The kernel that
    takes shap's link function as an argument cannot be cached by numba and still compiles (2.8 s).
    Sets numba's process-wide cache folder (nothing else here asks numba to cache)."""
    numba.config.CACHE_DIR = str(folder)
    kernels = [
        obj
        for name, module in list(sys.modules.items())
        if name == "shap" or name.startswith("shap.")
        for obj in list(vars(module).values())
        if isinstance(obj, CPUDispatcher)
    ]
    try:
        for kernel in kernels:
            kernel.enable_caching()
    except RuntimeError:  # numba found nowhere writable: compile at every start, as before
        return 0
    return len(kernels)


def warm_up(cache_dir: Path | None = None) -> None:
    """Compile shap's numba kernels (6.4 s once per process; 2.8 s once an earlier start filled
    ``numba/`` under ``cache_dir``, else beside the runtime export: `cache_shap_kernels`) so the
    first answer is not slow."""
    cache_shap_kernels((cache_dir or default_cache_root()) / "numba")
    game = lambda x: np.asarray(x, dtype=float).sum(1)  # noqa: E731
    shap.explainers.Exact(game, shap.maskers.Independent(np.zeros((1, 2)), max_samples=1))(np.ones((1, 2)), silent=True)
