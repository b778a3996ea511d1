"""TriageEngine: a decoded photo and options in, one TriageResult out. No HTTP in here.

The engine is created once (the model loads once, condition embeddings are computed once) and
is safe to call from several threads: torch inference is re-entrant for these models and the
zero-shot classifier guards its caches with a lock.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np
import torch

from explain.gradcam import CamPass
from explain.heatmaps import explain_differentials, prepare_heatmaps
from explain.risk_shap import explain_urgency
from explain.risk_shap import warm_up as warm_up_shap
from models.backends.base import ImageTextModel
from models.knowledge.risk_priors import load_priors
from models.knowledge.symptoms import extract_findings
from models.knowledge.taxonomy import Condition, Taxonomy, UnknownLabelError
from models.scoring.features import ImageFeatures, LabelScores, image_features
from models.scoring.fusion import FusionResult, fuse_scores, fusion_for_model, symptom_text_scores
from models.scoring.scope import ScopeReader, ScopeReading
from models.scoring.urgency import UrgencyThresholds, assess_urgency, thresholds_for_model
from models.scoring.zeroshot import LabelSet, ZeroShotClassifier
from models.uncertainty.gates import UncertaintyGate
from service.images import DecodedImage
from service.schemas import (
    ClinicalInput,
    Differential,
    LabelScope,
    LookAlike,
    ModelRef,
    RankChange,
    Timings,
    TriageOptions,
    TriageResult,
    condition_codes,
)

# plain words for the fitted factors and cited priors (models/scoring/fusion.py FACTOR_FIELDS, risk_priors.yaml)
FACTOR_WORDS = {
    "changed_size": "growth",
    "changed_appearance": "change in shape or colour",
    "body_site": "body site",
    "family_history_melanoma": "family history of melanoma",
    "personal_history_skin_cancer": "past skin cancer",
    "many_moles": "many moles",
    "sunburn_history": "sunburn history",
    "spreading_redness": "spreading redness",
    "widespread_blistering": "widespread blistering",
    "skin_pain": "skin pain",
}
MOVE_MIN = 0.05  # log-odds: a part that moved a condition less than this against its rival is not named


def factor_words(factor: str, value: str) -> str:
    """One risk factor or finding in words: 'growth', 'no pain', 'age 67', 'Fitzpatrick type 2'."""
    name = FACTOR_WORDS.get(factor, factor.replace("_", " "))
    values = [v.split("=", 1)[-1] for v in value.split(", ")] if value else []
    if values and all(v == "true" for v in values):
        return name
    if values and all(v == "false" for v in values):
        return f"no {name}"
    if factor == "age" and values:
        return f"age {values[0].removesuffix('.0')}"
    if factor == "fitzpatrick" and values:
        return f"Fitzpatrick type {values[0]}"
    return f"{name} {', '.join(v.replace('_', ' ') for v in values)}".strip()


class RankMoves:
    """Where a condition's fused rank differs from its photo-alone rank, which parts of the fused log-odds
    moved it past (or behind) its strongest rival, read off the contributions the fusion already computed."""

    def __init__(self, scored: ScoredLabels, scores: LabelScores, fused: FusionResult, calibrated: np.ndarray):
        n = len(scores.keys)
        self.scored, self.calibrated = scored, calibrated
        self.fused_rank, self.image_rank = np.empty(n, int), np.empty(n, int)
        self.fused_rank[np.argsort(-calibrated, kind="stable")] = np.arange(1, n + 1)
        self.image_rank[np.argsort(-np.asarray(scores.image), kind="stable")] = np.arange(1, n + 1)
        c = fused.contributions
        parts: dict[str, np.ndarray] = {
            "base rate": np.array([c["baseline"][k] for k in scores.keys]),
            "the photo, as weighed by the fusion": np.array([c["image"][k] for k in scores.keys]),
            "the symptom words": np.array([c["symptoms"][k] for k in scores.keys]),
        }
        for f in fused.factors:
            effect = np.array([f.effects.get(k, 0.0) for k in scores.keys])
            if f.modality == "symptoms":  # what is left of the symptoms part is the text tower's match
                parts["the symptom words"] = parts["the symptom words"] - effect
            words = factor_words(f.factor, f.value)
            parts[words] = parts.get(words, np.zeros(n)) + effect
        self.parts = parts

    def change(self, i: int) -> RankChange | None:
        fr, ir = int(self.fused_rank[i]), int(self.image_rank[i])
        if fr == ir:
            return None
        up = fr < ir
        if up:
            rivals = np.flatnonzero((self.image_rank < ir) & (self.fused_rank > fr))
        else:
            rivals = np.flatnonzero((self.image_rank > ir) & (self.fused_rank < fr))
        j = int(rivals[np.argmax(self.calibrated[rivals])])
        sign = 1.0 if up else -1.0
        deltas = sorted(((sign * (v[i] - v[j]), k) for k, v in self.parts.items()), reverse=True)
        by = [k for d, k in deltas if d > MOVE_MIN][:3] or [deltas[0][1]]
        cond = self.scored.conditions[j]
        rival = cond.name if cond is not None else self.scored.labels.ids[j]
        where = "past" if up else "behind"
        text = f"moved {'up' if up else 'down'} from #{ir} on the photo alone, {where} {rival}, by: {', '.join(by)}"
        return RankChange(image_rank=ir, direction="up" if up else "down", versus=rival, by=by, text=text)


@dataclass(frozen=True)
class ScoredLabels:
    labels: LabelSet
    conditions: list[Condition | None]

    @cached_property
    def keys(self) -> list[str]:
        """One key per label for fusion and urgency: the condition id where the label resolved to a
        condition (once), else the label itself, so the fitted weights and cited priors apply."""
        keys: list[str] = []
        for label, cond in zip(self.labels.ids, self.conditions, strict=True):
            key = cond.id if cond is not None else label
            keys.append(key if key not in keys else label)
        return keys


class TriageEngine:
    def __init__(
        self,
        model: ImageTextModel,
        taxonomy: Taxonomy,
        cache_dir: Path | None = None,
        thresholds: UrgencyThresholds | None = None,
        calibration_path: Path | None = None,
        coverage: float = 0.9,
    ) -> None:
        self.model = model
        self.cache_dir = cache_dir
        self.taxonomy = taxonomy
        self.classifier = ZeroShotClassifier(model, taxonomy, cache_dir)
        # declared artifacts: fusion (else generic), thresholds, calibration (for other weights: fails), OOD stats
        self.fusion = fusion_for_model(model)
        self.priors = load_priors()
        self.thresholds = thresholds or thresholds_for_model(model)
        self.uncertainty = UncertaintyGate(model, taxonomy, calibration_path, coverage)
        # the OOD gate's ImageNet rule reads the frozen trunk's ImageNet view of the photo, computed in
        # the same forward as the embedding where the backend offers it (models/embedded/domain.py)
        self.with_domain = self.uncertainty.uses_imagenet_view
        self._taxonomy_labels: dict[str, ScoredLabels] = {}  # per modality: built once, with its keys
        # the conditions the card validates (taxonomy order): ranked alone by default (options.label_scope)
        self.scopes = ScopeReader(taxonomy, model.card.validated_conditions, self.fusion.generic(), self.priors)
        self.validated = self.scopes.validated

    @property
    def model_ref(self) -> ModelRef:
        card = self.model.card
        return ModelRef(name=card.name, version=card.version, card_url=card.card_url or f"/v1/models/{card.name}")

    # ------------------------------------------------------------------ stage 1: pixels -> features

    def preprocess(self, image: DecodedImage) -> torch.Tensor:
        """The model's own preprocessing of one photo: a (3, H, W) tensor on the CPU."""
        return self.model.preprocessing.batch([image.image])[0]

    def embed(self, images: Sequence[DecodedImage] | torch.Tensor) -> ImageFeatures:
        """Photos (or a stack of :meth:`preprocess` outputs) -> their features in one forward pass
        (the batcher slices the rows per request)."""
        if isinstance(images, torch.Tensor):
            pixels = images.to(self.model.device)
        else:
            pixels = self.model.preprocessing.batch([i.image for i in images]).to(self.model.device)
        return image_features(self.model, pixels, with_domain=self.with_domain)

    def prepare_heatmaps(self, image: DecodedImage, options: TriageOptions) -> CamPass:
        """The heatmaps' pass for one photo before the answer ranks the differentials (issue 19)."""
        return prepare_heatmaps(self.model, image.image, candidates=self.labels(options).labels.embeddings)

    def warm_up(self) -> None:
        """Compute the condition embeddings and run one forward pass, so the first request is not slow."""
        for modality in ("clinical", "dermoscopic"):
            self.classifier.condition_set(modality)
        size = self.model.preprocessing.image_size
        self.embed(torch.zeros(1, 3, size, size))  # the served path (ImageNet view included)
        warm_up_shap(self.cache_dir)

    # ------------------------------------------------------------------ stage 2: features -> scores

    def label_scope(self, options: TriageOptions) -> LabelScope | None:
        """The taxonomy scope one answer ranks: the caller's, else 'validated' where the card validates
        two or more conditions (a card that validates nothing keeps the whole taxonomy); None for own labels."""
        if options.candidate_labels:
            return None
        if len(self.validated) < 2:
            return "taxonomy"
        return options.label_scope or "validated"

    def taxonomy_set(self, modality: str) -> ScoredLabels:
        scored = self._taxonomy_labels.get(modality)
        if scored is None:
            labels = self.classifier.condition_set(modality)  # type: ignore[arg-type]
            scored = ScoredLabels(labels, [self.taxonomy.get(i) for i in labels.ids])
            self._taxonomy_labels[modality] = scored
        return scored

    def labels(self, options: TriageOptions) -> ScoredLabels:
        """The label index one answer is scored over: the taxonomy (or its validated conditions), or the
        caller's own labels."""
        if not options.candidate_labels:
            full = self.taxonomy_set(options.modality)
            if self.label_scope(options) != "validated":
                return full
            key = f"{options.modality}/validated"
            scored = self._taxonomy_labels.get(key)
            if scored is None:
                labels = self.classifier.subset(self.validated, options.modality)
                scored = ScoredLabels(labels, [self.taxonomy.get(i) for i in labels.ids])
                self._taxonomy_labels[key] = scored
            return scored
        conditions: list[Condition | None] = []
        for label in options.candidate_labels:
            try:
                conditions.append(self.taxonomy.resolve(label))
            except UnknownLabelError:
                conditions.append(None)
        known = [c.id for c in conditions if c is not None]
        if len(known) == len(conditions):
            return ScoredLabels(self.classifier.subset(known, options.modality), conditions)
        custom = self.classifier.custom_set(options.candidate_labels, options.modality)
        if known:  # known conditions keep their full prompt ensemble
            full = self.classifier.condition_set(options.modality)
            rows = [
                full.embeddings[full.ids.index(c.id)] if c is not None else custom.embeddings[i]
                for i, c in enumerate(conditions)
            ]
            custom = LabelSet(custom.ids, torch.stack(rows))
        return ScoredLabels(custom, conditions)

    def score(self, features: ImageFeatures, scored: ScoredLabels, symptoms: str | None) -> LabelScores:
        """One photo's image softmax and symptom-text similarity over the label index."""
        embedding = torch.from_numpy(features.embedding[:1])
        image = self.classifier.probabilities(embedding, scored.labels)[0].numpy().astype(np.float64)
        text = symptom_text_scores(self.model, scored.labels.embeddings, symptoms)
        return LabelScores(tuple(scored.keys), image, text)

    def scope_scores(
        self,
        features: ImageFeatures,
        scored: ScoredLabels,
        scope: LabelScope | None,
        modality: str,
        clinical: ClinicalInput,
        findings: Any,
    ) -> tuple[LabelScores, ScopeReading | None]:
        """The scores over `scored` and, for a model that validates conditions, what points outside them
        (the photo over the whole taxonomy, scored once; the validated scope reads its rows)."""
        if scope is None or len(self.validated) < 2:
            return self.score(features, scored, clinical.symptoms), None
        full = self.score(features, self.taxonomy_set(modality), clinical.symptoms)
        scores = self.within(full, scored) if scope == "validated" else full
        return scores, self.scopes.evidence(full, clinical.risk_factors, clinical.symptoms, findings)

    def within(self, full: LabelScores, scored: ScoredLabels) -> LabelScores:
        """Taxonomy-wide scores restricted to `scored`'s conditions: the image softmax renormalised within
        them (exactly the softmax over them alone), the text similarities as they are."""
        idx = [full.keys.index(k) for k in scored.keys]
        image = full.image[idx] / full.image[idx].sum()
        return LabelScores(tuple(scored.keys), image, None if full.text is None else full.text[idx])

    # ------------------------------------------------------------------ stage 3: scores -> result

    def triage(
        self,
        image: DecodedImage,
        options: TriageOptions,
        clinical: ClinicalInput | None = None,
        *,
        request_id: str,
        decode_ms: float = 0.0,
        queue_ms: float = 0.0,
        image_features: ImageFeatures | None = None,
        heatmap_pass: CamPass | None = None,
    ) -> TriageResult:
        """``image_features`` (a row of :meth:`embed`) skips the image tower, ``heatmap_pass`` the heatmaps' pass."""
        t0 = time.perf_counter()
        clinical = clinical or ClinicalInput()
        scope = self.label_scope(options)
        scored = self.labels(options)
        features = image_features if image_features is not None else self.embed([image])
        findings = extract_findings(clinical.symptoms) if clinical.symptoms else None
        scores, evidence = self.scope_scores(features, scored, scope, options.modality, clinical, findings)
        fused = fuse_scores(scores, clinical.risk_factors, findings, model=self.fusion, priors=self.priors)
        stage = "fused" if self.fusion.fitted else "image"
        # calibrated before ranking (temperature keeps the order); every number the answer quotes is one of these
        calibrated = self.uncertainty.calibrate(np.array([fused.posterior[k] for k in scores.keys]), stage)
        order = [int(i) for i in np.argsort(-calibrated, kind="stable")[: options.top_k]]
        differentials = self._differentials(scored, scores, fused, calibrated, order)
        uncertainty = self.uncertainty.assess(
            scores.keys,
            calibrated,
            stage=stage,
            embedding=features.embedding[:1],
            image=image.image,
            imagenet_probs=None if features.domain is None else features.domain[:1],
            quality=image.info.quality.model_dump(),
            top_validated=differentials[0].validated_for_model if differentials[0].condition_id else None,
            fitzpatrick=clinical.risk_factors.fitzpatrick if clinical.risk_factors else None,
            scope=evidence,
        )
        shown = dict(zip(scores.keys, calibrated.tolist(), strict=True))
        urgency = assess_urgency(fused, self.thresholds, self.taxonomy, shown=shown)
        shap_values = explain_urgency(
            dict(zip(scores.keys, scores.image.tolist(), strict=True)),
            None if scores.text is None else dict(zip(scores.keys, scores.text.tolist(), strict=True)),
            clinical.risk_factors,
            findings,
            model=self.fusion,
            priors=self.priors,
            thresholds=self.thresholds,
            taxonomy=self.taxonomy,
        )
        inference_ms = (time.perf_counter() - t0) * 1000
        heatmaps, heatmap_ms = None, 0.0
        if options.explain:
            t1 = time.perf_counter()
            text, grid = scored.labels.embeddings[order], options.heatmap_grid
            heatmaps = explain_differentials(self.model, image.image, text, want_grid=grid, cam_pass=heatmap_pass)
            # the prepared pass counts too, though it ran beside the served runtime's forward
            heatmap_ms = (time.perf_counter() - t1) * 1000 + (heatmap_pass.forward_ms if heatmap_pass else 0.0)
        return TriageResult(
            request_id=request_id,
            model=self.model_ref,
            taxonomy_version=self.taxonomy.version,
            modality=options.modality,
            label_source="candidate_labels" if options.candidate_labels else "taxonomy",
            label_scope=scope,
            scope_note=self.scopes.note(scope),
            differentials=differentials,
            image=image.info,
            timings=Timings.of(decode_ms, queue_ms, inference_ms, heatmap_ms),
            heatmaps=heatmaps,
            findings=findings,
            risk_factors=clinical.risk_factors,
            fusion_model=fused.fusion_model,
            urgency=urgency,
            urgency_shap=shap_values,
            uncertainty=uncertainty,
        )

    def _differentials(
        self, scored: ScoredLabels, scores: LabelScores, fused: FusionResult, calibrated: np.ndarray, order: list[int]
    ) -> list[Differential]:
        """The top differentials: the calibrated fused probability, the calibrated photo-alone one (the
        image stage's temperature) and the raw softmax, and one line where the rank moved off the photo's."""
        image = self.uncertainty.calibrate(scores.image, "image")
        moves = RankMoves(scored, scores, fused, calibrated)
        out = []
        for rank, i in enumerate(order):
            extra = {
                "image_probability": round(float(image[i]), 6),
                "image_probability_raw": round(float(scores.image[i]), 6),
                "contributions": {m: round(v[scores.keys[i]], 4) for m, v in fused.contributions.items()},
                "rank_change": moves.change(i),
            }
            out.append(self._differential(rank + 1, scored, i, float(calibrated[i]), extra))
        return out

    def _differential(
        self, rank: int, scored: ScoredLabels, i: int, prob: float, extra: dict[str, Any]
    ) -> Differential:
        label, cond = scored.labels.ids[i], scored.conditions[i]
        prob = round(prob, 6)
        if cond is None:
            return Differential(rank=rank, label=label, condition_id=None, name=label, probability=prob, **extra)
        look_alikes = [
            LookAlike(condition_id=c, name=self.taxonomy.get(c).name) for c in cond.look_alikes if c in self.taxonomy
        ]
        return Differential(
            rank=rank,
            label=label,
            condition_id=cond.id,
            name=cond.name,
            probability=prob,
            codes=condition_codes(cond),
            malignant=cond.malignant,
            look_alikes=look_alikes,
            validated_for_model=self.model.card.name in cond.validated_models,
            **extra,
        )
