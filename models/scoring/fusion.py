# size: the fusion's file format, its two-level computation and the per-factor contributions are one model
"""Fuse image evidence, symptom text and risk factors into one posterior over conditions.

The model is additive in log-odds, so every answer can show what each part contributed:

    logit_c = b_c                        baseline (fitted intercept; 0 outside the fitted classes)
            + a * log p_image(c)         image evidence, tempered by a fitted weight
            + s * sim(symptoms, c)       text-tower similarity of the symptoms to the condition
            + sum_j V_cj * x_j           fitted risk features (age, body site, lesion questions)
            + sum_k log RR_ck * z_k      cited relative risks (risk_priors.yaml) elsewhere
    posterior = softmax(logit)

`a`, `s`, `b` and `V` are fitted on PAD-UFES-20 out-of-fold image probabilities
(models/fitting/fusion_fit.py) and stored in `models/embedded/fusion.json`, tied to the image model and
the taxonomy. Risk features are centred on the training data and an unknown value contributes 0:
nothing is learnt from *whether* a field is given. A model other than the one fitted gets the
generic form (a = 1, s fitted, no fitted risk weights, cited priors only).

Contributions are reported centred across the label set (softmax ignores a shift shared by all
conditions), so for every condition: sum over parts == log p_c - mean_c' log p_c'.

`posterior_upper` is what urgency reads: for each condition, the highest posterior over the
inputs in which each *alarm* fact the patient reported (bleeding, growth, change in shape or
colour) is kept, made unknown or denied. Reporting one more alarm fact can only widen that set,
so urgency never drops when bleeding or growth is added, whatever the fitted weights do. An alarm
fact said only possibly ("might be bleeding") is unknown in the posterior and varied the same way
in the upper one, so a hedged alarm moves urgency's condition rules exactly as the plain one does.
"""

from __future__ import annotations

import functools
import itertools
import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field

from models.backends.artifacts import ModelIdentity
from models.backends.base import ImageTextModel
from models.backends.registry import default_artifacts
from models.knowledge.risk_factors import BodySite, RiskFactors
from models.knowledge.risk_priors import LiteraturePriors, load_priors
from models.knowledge.symptoms import SymptomFindings, apply_findings, findings_provenance
from models.scoring.features import LabelScores

log = logging.getLogger(__name__)

__all__ = [
    "ALARM_FIELDS",
    "EvidenceSource",
    "FactorContribution",
    "FeatureEncoding",
    "FusionBlock",
    "FusionModel",
    "FusionParts",
    "FusionResult",
    "alarm_variants",
    "fuse",
    "fuse_scores",
    "fusion_for_model",
    "label_scores",
    "load_fusion",
    "symptom_text_scores",
    "symptom_text_sims",
]

FORMAT = "dermtriage-fusion/1"
LOG_FLOOR = 1e-4  # image probabilities are floored before the log: one overconfident zero must not veto
ALARM_FIELDS = ("bleeding", "changed_size", "rapid_growth", "changed_shape", "changed_colour")
# where a contribution to the fused log-odds comes from (not the photo kind, `taxonomy.Modality`)
EvidenceSource = Literal["baseline", "image", "symptoms", "risk_factors"]

# one feature per PAD-UFES-20 region (the fit's sites); the other sites borrow their nearest region
PAD_SITES = (
    BodySite.FACE, BodySite.NOSE, BodySite.EAR, BodySite.LIP, BodySite.SCALP, BodySite.NECK, BodySite.CHEST,
    BodySite.BACK, BodySite.ABDOMEN, BodySite.ARM, BodySite.FOREARM, BodySite.HAND, BodySite.THIGH, BodySite.FOOT,
)  # fmt: skip
SITE_PROXY = {
    BodySite.EYELID: BodySite.FACE,
    BodySite.LOWER_LEG: BodySite.THIGH,
    BodySite.SHOULDER: BodySite.BACK,
    BodySite.BUTTOCK: BodySite.BACK,
}
SITE_FEATURES = tuple(f"site_{s.value}" for s in PAD_SITES)
FLAG_FEATURES = ("itch", "pain", "changed_size", "changed_appearance", "bleeding", "elevation")
FITTED_FEATURES = ("age", "age_sq", *SITE_FEATURES, *FLAG_FEATURES)
# the RiskFactors fields behind each fitted factor (a factor groups features: age and age_sq, the site groups)
FACTOR_FIELDS: dict[str, tuple[str, ...]] = {
    "age": ("age",),
    "body_site": ("body_site",),
    "itch": ("itch",),
    "pain": ("pain",),
    "changed_size": ("changed_size", "rapid_growth"),
    "changed_appearance": ("changed_shape", "changed_colour"),
    "bleeding": ("bleeding",),
    "elevation": ("elevation",),
}


def factor_of(feature: str) -> str:
    """The factor a fitted feature belongs to."""
    return "age" if feature.startswith("age") else "body_site" if feature.startswith("site_") else feature


def _pad_site(site: BodySite | None) -> BodySite | None:
    return SITE_PROXY.get(site, site) if site is not None else None


def _raw_flag(risk: RiskFactors, feature: str) -> float | None:
    """1/0 for a known flag, None when unknown."""
    if feature == "changed_size":
        values = (risk.changed_size, risk.rapid_growth)
    elif feature == "changed_appearance":
        values = (risk.changed_shape, risk.changed_colour)
    else:
        values = (getattr(risk, feature),)
    if any(v is True for v in values):
        return 1.0
    return 0.0 if any(v is False for v in values) else None


class FeatureEncoding(BaseModel):
    """How RiskFactors become the fitted features: centred on the training data, unknown -> 0."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    age_mean: float
    age_sd: float
    age_sq_mean: float
    centers: dict[str, float]  # sites and flags: training mean of the 0/1 indicator

    @classmethod
    def from_training(cls, risks: Sequence[RiskFactors]) -> FeatureEncoding:
        ages = np.array([r.age for r in risks if r.age is not None], dtype=float)
        mean, sd = (float(ages.mean()), float(ages.std() or 1.0)) if len(ages) else (50.0, 15.0)
        z2 = ((ages - mean) / sd) ** 2 if len(ages) else np.ones(1)
        centers: dict[str, float] = {}
        for site, feature in zip(PAD_SITES, SITE_FEATURES, strict=True):
            known = [_pad_site(r.body_site) is site for r in risks if r.body_site is not None]
            centers[feature] = float(np.mean(known)) if known else 0.0
        for feature in FLAG_FEATURES:
            known_flags = [v for r in risks if (v := _raw_flag(r, feature)) is not None]
            centers[feature] = float(np.mean(known_flags)) if known_flags else 0.5
        return cls(age_mean=mean, age_sd=sd, age_sq_mean=float(z2.mean()), centers=centers)

    def encode(self, risk: RiskFactors) -> np.ndarray:
        """(F,) features in FITTED_FEATURES order; every unknown field gives exactly 0."""
        x = np.zeros(len(FITTED_FEATURES))
        if risk.age is not None:
            z = (risk.age - self.age_mean) / self.age_sd
            x[0], x[1] = z, z * z - self.age_sq_mean
        if risk.body_site is not None:
            site = _pad_site(risk.body_site)
            for i, (pad_site, feature) in enumerate(zip(PAD_SITES, SITE_FEATURES, strict=True), start=2):
                x[i] = float(site is pad_site) - self.centers[feature]
        for i, feature in enumerate(FLAG_FEATURES, start=2 + len(SITE_FEATURES)):
            value = _raw_flag(risk, feature)
            if value is not None:
                x[i] = value - self.centers[feature]
        return x


class FusionModel(BaseModel):
    """Fitted (or generic) fusion parameters; `fusion.json` is this model's JSON."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    format: str = FORMAT
    image_model: dict[str, str] = Field(default_factory=dict, description="name, version, weights_sha256")
    taxonomy: dict[str, str] = Field(default_factory=dict, description="version, fingerprint")
    classes: list[str] = Field(default_factory=list, description="conditions with fitted intercepts and weights")
    image_weight: float = 1.0
    text_weight: float = 0.0
    intercepts: dict[str, float] = Field(default_factory=dict)
    features: list[str] = Field(default_factory=lambda: list(FITTED_FEATURES))
    encoding: FeatureEncoding | None = None
    risk_weights: dict[str, dict[str, float]] = Field(default_factory=dict, description="class -> feature -> weight")
    fit: dict[str, Any] = Field(default_factory=dict, description="provenance and cross-validated figures")
    urgency_thresholds: dict[str, Any] = Field(
        default_factory=dict, description="UrgencyThresholds tuned on the cross-fitted answers of this fit"
    )

    @property
    def made_for(self) -> ModelIdentity:
        """The image model (and weights) this fusion was fitted on."""
        m = self.image_model
        return ModelIdentity(str(m.get("name", "")), str(m.get("version", "")), m.get("weights_sha256") or None)

    @property
    def fitted(self) -> bool:
        return bool(self.classes) and self.encoding is not None

    def generic(self) -> FusionModel:
        """The model-agnostic form: image weight 1, the fitted text weight, cited priors only."""
        return FusionModel(text_weight=self.text_weight, fit={"note": f"generic form of {self.name}"})

    @property
    def name(self) -> str:
        if not self.fitted:
            return "generic"
        return f"fitted:{self.image_model.get('name', '?')}@{self.image_model.get('version', '?')}"

    def class_arrays(self, labels: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        """(C,) intercepts and (C, F) risk weights for `labels`; zeros for unfitted labels."""
        b = np.array([self.intercepts.get(c, 0.0) for c in labels])
        v = np.array([[self.risk_weights.get(c, {}).get(f, 0.0) for f in self.features] for c in labels])
        return b, v.reshape(len(labels), len(self.features))


@functools.lru_cache(maxsize=4)
def _read_fusion(path: Path) -> FusionModel:
    return FusionModel.model_validate_json(path.read_text(encoding="utf-8"))


def load_fusion(identity: ModelIdentity | None = None, path: Path | None = None) -> FusionModel:
    """The fusion in `path` (default: the default model's declared file) when it was fitted for
    `identity` (None: whoever it was fitted for), else its generic form.

    A fusion fitted for another model or other weights falls back to generic: its image weight and
    intercepts were tuned to another model's probabilities.
    """
    path = path if path is not None else default_artifacts().fusion
    if path is None or not path.exists():
        log.warning("fusion parameters %s missing: generic fusion (cited priors only)", path)
        return FusionModel()
    model = _read_fusion(path)
    if identity is None or identity.accepts(model.made_for):
        return model
    log.info("fusion fitted for %s, not %s: generic form", model.made_for.fingerprint, identity.fingerprint)
    return model.generic()


def fusion_for_model(model: ImageTextModel) -> FusionModel:
    """The fusion an image model declares (`model.artifacts.fusion`): fitted when made for this model
    and these weights, the generic form otherwise (also when it declares none)."""
    path = model.artifacts.fusion
    if path is None:
        return FusionModel()
    return load_fusion(model.artifacts.identity, path)


class FactorContribution(BaseModel):
    """One risk factor's effect on each condition (centred log-odds) and where the number came from."""

    model_config = ConfigDict(frozen=True)

    factor: str
    value: str
    modality: Literal["symptoms", "risk_factors"]
    source: Literal["fitted", "relative_risk", "clinical_rule"]
    effects: dict[str, float]
    citation: str | None = None


class FusionResult(BaseModel):
    """The fused posterior and what each part contributed (log-odds, centred across conditions)."""

    model_config = ConfigDict(frozen=True)

    posterior: dict[str, float]
    log_odds: dict[str, float] = Field(description="log p_c - mean log p: the sum of the contributions")
    contributions: dict[EvidenceSource, dict[str, float]]
    factors: list[FactorContribution]
    posterior_upper: dict[str, float] = Field(description="alarm-robust posterior that urgency reads")
    fitted_conditions: list[str] = Field(description="conditions whose weights were fitted on PAD-UFES-20")
    prior_conditions: list[str] = Field(description="conditions that cited priors moved in this answer")
    fusion_model: str
    risk: RiskFactors = Field(description="risk factors after the text findings filled unknown fields")
    from_text: list[str] = Field(default_factory=list, description="risk fields whose value came from the text")
    findings: SymptomFindings | None = None


def symptom_text_scores(model: ImageTextModel, label_embeddings: torch.Tensor, text: str | None) -> np.ndarray | None:
    """(C,) cosine similarity of the symptoms text with each label's text embedding (None without text).

    `model.encode_text` must return unit vectors; `label_embeddings` is the (C, D) unit-row tensor
    of the label set the image was scored against (`LabelSet.embeddings`).
    """
    if not text or not text.strip():
        return None
    z = model.encode_text([text.strip()])
    return (z @ label_embeddings.T)[0].detach().float().cpu().numpy().astype(np.float64)


def symptom_text_sims(
    model: ImageTextModel, label_embeddings: torch.Tensor, labels: Sequence[str], text: str | None
) -> dict[str, float] | None:
    """`symptom_text_scores` keyed by label (for callers that hold dicts: fitting, SHAP)."""
    sims = symptom_text_scores(model, label_embeddings, text)
    return None if sims is None else dict(zip(labels, sims.tolist(), strict=True))


# ----------------------------------------------------------------------------- the computation


class FusionBlock:
    """Flat additive logits over `labels`: intercepts, image, text and risk terms of one FusionModel."""

    def __init__(
        self, model: FusionModel, priors: LiteraturePriors, labels: list[str], p: np.ndarray, sims: np.ndarray | None
    ) -> None:
        self.labels = labels
        self.image = model.image_weight * np.log(p)
        self.text = model.text_weight * sims if sims is not None else np.zeros(len(labels))
        self.b, self.v = model.class_arrays(labels)
        self.lit = priors.log_effects(labels)
        self.model = model
        self.priors = priors

    def risk_logits(self, risks: Sequence[RiskFactors]) -> np.ndarray:
        """(K, C) fitted + cited risk terms for K risk records."""
        out = np.zeros((len(risks), len(self.labels)))
        for k, r in enumerate(risks):
            if self.model.encoding is not None:
                out[k] += self.v @ self.model.encoding.encode(r)
            out[k] += self.lit @ self.priors.indicators(r)
        return out

    def logits(self, risks: Sequence[RiskFactors]) -> np.ndarray:
        return self.b + self.image + self.text + self.risk_logits(risks)


def _softmax(z: np.ndarray) -> np.ndarray:
    z = z - z.max(-1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(-1, keepdims=True)


def _logsumexp(z: np.ndarray) -> np.ndarray:
    m = z.max(-1, keepdims=True)
    return (m + np.log(np.exp(z - m).sum(-1, keepdims=True)))[..., 0]


class FusionParts:
    """The fused posterior over the labels of one answer.

    When the fitted conditions are only part of the label set (the 6 PAD-UFES-20 classes among the
    taxonomy's 53), the fit would be misused if applied flat: its image weight (< 1) and intercepts
    were learnt on a softmax over those 6 alone, and tempering a 53-way softmax spreads the mass
    of a confident BCC over 47 conditions it was never compared with. So two levels:
    - the generic form (image weight 1, text, cited priors) over *all* labels decides how much
      mass the fitted group gets as a whole, and the posterior of every other label;
    - the fitted model, on the image probabilities renormalised within the group (exactly as it
      was fitted), shares that mass out among the fitted conditions.
    With only fitted labels (PAD evaluation) this is the fitted model itself; with none, the
    generic form.
    """

    def __init__(self, model: FusionModel, priors: LiteraturePriors, scores: LabelScores) -> None:
        self.labels = list(scores.keys)
        p = np.clip(np.asarray(scores.image, dtype=np.float64), LOG_FLOOR, 1.0)
        sims = None if scores.text is None else np.asarray(scores.text, dtype=np.float64)
        fitted = [i for i, c in enumerate(self.labels) if c in model.intercepts] if model.fitted else []
        if model.fitted and not fitted:
            model = model.generic()
        self.model = model
        self.flat = FusionBlock(model, priors, self.labels, p, sims)  # factor detail; the posterior when not split
        self.split = 0 < len(fitted) < len(self.labels)
        if self.split:
            self.f = np.array(fitted)
            sub = [self.labels[i] for i in fitted]
            self.gen = FusionBlock(model.generic(), priors, self.labels, p, sims)
            pf = p[self.f] / p[self.f].sum()
            self.fit = FusionBlock(model, priors, sub, pf, sims[self.f] if sims is not None else None)

    def posteriors(self, risks: Sequence[RiskFactors]) -> np.ndarray:
        """(K, C) posteriors for K risk records."""
        if not self.split:
            return _softmax(self.flat.logits(risks))
        out = _softmax(self.gen.logits(risks))
        mass = out[:, self.f].sum(1, keepdims=True)
        out[:, self.f] = mass * _softmax(self.fit.logits(risks))
        return out

    def terms(self, risk: RiskFactors) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(baseline, image, text) per label; with the risk terms they sum to log p + a shared constant.

        Split: the fitted group's baseline also carries the shift that gives the group its share of
        the mass (log m_F - logsumexp(fitted logits) + logsumexp(generic logits))."""
        if not self.split:
            return self.flat.b, self.flat.image, self.flat.text
        base, image, text = np.zeros(len(self.labels)), self.gen.image.copy(), self.gen.text.copy()
        g = self.gen.logits([risk])
        z = self.fit.logits([risk])
        mass = _softmax(g)[0, self.f].sum()
        shift = np.log(mass) - _logsumexp(z)[0] + _logsumexp(g)[0]
        base[self.f] = self.fit.b + shift
        image[self.f] = self.fit.image
        text[self.f] = self.fit.text
        return base, image, text


def _centre(x: np.ndarray) -> np.ndarray:
    return x - x.mean()


def alarm_variants(risk: RiskFactors) -> list[RiskFactors]:
    """`risk` with each reported alarm fact kept, made unknown or denied (all combinations); an alarm
    fact the text said only possibly ("might be bleeding", unknown in `risk`) is varied the same way,
    so urgency reads the same upper posterior as for the plain statement. Row 0 is `risk` itself."""
    reported = [f for f in ALARM_FIELDS if getattr(risk, f) is True]
    possible = [f for f in ALARM_FIELDS if getattr(risk, f) is None and f in risk.possible_findings]
    variants = []
    for values in itertools.product((True, None, False), repeat=len(reported)):
        for maybe in itertools.product((None, True, False), repeat=len(possible)):
            update = dict(zip(reported, values, strict=True)) | dict(zip(possible, maybe, strict=True))
            variants.append(risk.model_copy(update=update))
    return variants


def _factor_contributions(
    parts: FusionBlock, risk: RiskFactors, from_text: frozenset[str]
) -> tuple[list[FactorContribution], np.ndarray, np.ndarray]:
    """Per-factor centred effects, plus the summed (C,) risk and symptoms terms."""
    factors: list[FactorContribution] = []
    by_modality = {"risk_factors": np.zeros(len(parts.labels)), "symptoms": np.zeros(len(parts.labels))}
    model = parts.model
    if model.encoding is not None and model.fitted:
        x = model.encoding.encode(risk)
        grouped: dict[str, np.ndarray] = {}
        for j, feature in enumerate(model.features):
            if x[j] != 0.0:
                key = factor_of(feature)
                grouped[key] = grouped.get(key, np.zeros(len(parts.labels))) + parts.v[:, j] * x[j]
        for key, effect in grouped.items():
            set_fields = [f for f in FACTOR_FIELDS[key] if getattr(risk, f) is not None]
            modality = "symptoms" if set_fields and all(f in from_text for f in set_fields) else "risk_factors"
            factors.append(
                FactorContribution(
                    factor=key,
                    value=", ".join(f"{f}={_show(getattr(risk, f))}" for f in set_fields),
                    modality=modality,
                    source="fitted",
                    effects=dict(zip(parts.labels, _centre(effect).tolist(), strict=True)),
                )
            )
            by_modality[modality] += effect
    indicators = parts.priors.indicators(risk)
    for j, prior in enumerate(parts.priors.priors):
        effect = parts.lit[:, j] * indicators[j]
        if not indicators[j] or not effect.any():
            continue
        modality = "symptoms" if prior.factor in from_text else "risk_factors"
        factors.append(
            FactorContribution(
                factor=prior.factor,
                value=_show(getattr(risk, prior.factor)),
                modality=modality,
                source=prior.kind,
                effects=dict(zip(parts.labels, _centre(effect).tolist(), strict=True)),
                citation=prior.citation,
            )
        )
        by_modality[modality] += effect
    return factors, by_modality["risk_factors"], by_modality["symptoms"]


def _show(value: Any) -> str:
    return str(getattr(value, "value", value)).lower()


def label_scores(image_probs: Mapping[str, float], text_sims: Mapping[str, float] | None = None) -> LabelScores:
    """Dict-shaped evidence (fitting, tests) as `LabelScores` over the keys of `image_probs`."""
    keys = tuple(image_probs)
    text = np.array([float(text_sims.get(c, 0.0)) for c in keys]) if text_sims else None
    return LabelScores(keys, np.array([float(image_probs[c]) for c in keys]), text)


def fuse(
    image_probs: Mapping[str, float],
    symptom_text_sims: Mapping[str, float] | None = None,
    risk: RiskFactors | None = None,
    findings: SymptomFindings | None = None,
    *,
    model: FusionModel | None = None,
    priors: LiteraturePriors | None = None,
) -> FusionResult:
    """`fuse_scores` for dict-shaped evidence: `image_probs` is the image model's softmax over its
    label set (condition ids; other labels get image and text evidence only), `symptom_text_sims`
    the text-tower similarities of the symptoms text with the same labels."""
    if not image_probs:
        raise ValueError("fuse needs at least one label in image_probs")
    return fuse_scores(label_scores(image_probs, symptom_text_sims), risk, findings, model=model, priors=priors)


def fuse_scores(
    scores: LabelScores,
    risk: RiskFactors | None = None,
    findings: SymptomFindings | None = None,
    *,
    model: FusionModel | None = None,
    priors: LiteraturePriors | None = None,
) -> FusionResult:
    """Posterior over the labels of `scores` from image, symptom text and risk factors; `findings`
    (read from the symptoms text) fill the risk fields the caller left unknown."""
    if not scores.keys:
        raise ValueError("fuse needs at least one label")
    model = model if model is not None else load_fusion()
    priors = priors if priors is not None else load_priors()
    merged = apply_findings(risk, findings)
    from_text = findings_provenance(risk, findings)
    parts = FusionParts(model, priors, scores)
    factors, risk_term, text_risk_term = _factor_contributions(parts.flat, merged, from_text)

    variants = alarm_variants(merged)
    post = parts.posteriors(variants)  # row 0 is `merged` itself (all kept)
    posterior, upper = post[0], post.max(0)
    log_p = np.log(np.clip(posterior, 1e-300, None))
    base, image, text = parts.terms(merged)
    contributions: dict[EvidenceSource, np.ndarray] = {
        "baseline": _centre(base),
        "image": _centre(image),
        "symptoms": _centre(text + text_risk_term),
        "risk_factors": _centre(risk_term),
    }
    moved = parts.flat.lit @ priors.indicators(merged) != 0

    def as_dict(x: np.ndarray) -> dict[str, float]:
        return dict(zip(parts.labels, (float(v) for v in x), strict=True))

    return FusionResult(
        posterior=as_dict(posterior),
        log_odds=as_dict(_centre(log_p)),
        contributions={k: as_dict(v) for k, v in contributions.items()},
        factors=factors,
        posterior_upper=as_dict(upper),
        fitted_conditions=[c for c in parts.labels if c in parts.model.intercepts],
        prior_conditions=[c for c, m in zip(parts.labels, moved, strict=True) if m],
        fusion_model=parts.model.name,
        risk=merged,
        from_text=sorted(from_text),
        findings=findings,
    )
