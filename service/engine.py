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

import numpy as np
import torch

from explain.gradcam import explain_differentials
from explain.risk_shap import explain_urgency
from explain.risk_shap import warm_up as warm_up_shap
from models.backends.base import ImageTextModel, encode_image_and_imagenet
from models.knowledge.risk_priors import load_priors
from models.knowledge.symptoms import extract_findings
from models.knowledge.taxonomy import Condition, Taxonomy, UnknownLabelError
from models.scoring.fusion import FusionResult, fuse, fusion_for_model, symptom_text_sims
from models.scoring.urgency import UrgencyThresholds, assess_urgency, default_thresholds
from models.scoring.zeroshot import LabelSet, ZeroShotClassifier
from models.uncertainty.gates import UncertaintyGate
from service.images import DecodedImage
from service.schemas import (
    ClinicalInput,
    Differential,
    LookAlike,
    ModelRef,
    Timings,
    TriageOptions,
    TriageResult,
    condition_codes,
)


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
        self.taxonomy = taxonomy
        self.classifier = ZeroShotClassifier(model, taxonomy, cache_dir)
        self.fusion = fusion_for_model(model)  # fitted for the embedded model, generic (cited priors) otherwise
        self.priors = load_priors()
        self.thresholds = thresholds or default_thresholds()
        # calibration (checked against model + taxonomy: a mismatch fails start-up), OOD statistics, gates
        self.uncertainty = UncertaintyGate(model, taxonomy, calibration_path, coverage)
        # the OOD gate's ImageNet rule reads the frozen trunk's ImageNet view of the photo, computed in
        # the same forward as the embedding where the backend offers it (models/embedded/domain.py)
        self.with_domain = self.uncertainty.uses_imagenet_view
        self.embed_dim = int(model.encode_text(["skin"]).shape[-1])
        self._taxonomy_labels: dict[str, ScoredLabels] = {}  # per modality: built once, with its keys

    @property
    def model_ref(self) -> ModelRef:
        card = self.model.card
        return ModelRef(name=card.name, version=card.version, card_url=card.card_url or f"/v1/models/{card.name}")

    def preprocess(self, image: DecodedImage) -> torch.Tensor:
        """The model's own preprocessing of one photo: a (3, H, W) tensor on the CPU."""
        return self.model.preprocessing.batch([image.image])[0]

    def embed(self, images: Sequence[DecodedImage] | torch.Tensor) -> torch.Tensor:
        """Photos (or a stack of :meth:`preprocess` outputs) -> (B, F) image features in one forward pass.

        A row is the (D,) image embedding, followed, when the OOD gate uses it, by the frozen
        trunk's (1000,) ImageNet probabilities of the same photo: one opaque row per photo for the
        batcher; `_split` takes it apart."""
        if isinstance(images, torch.Tensor):
            pixels = images.to(self.model.device)
        else:
            pixels = self.model.preprocessing.batch([i.image for i in images]).to(self.model.device)
        if self.with_domain:
            emb, probs = encode_image_and_imagenet(self.model, pixels)
            if probs is not None:
                return torch.cat([emb, probs.to(emb.dtype)], dim=1)
            return emb
        return self.model.encode_image(pixels)

    def _split(self, features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(B, F) features -> (B, D) embeddings and (B, 1000) ImageNet probabilities or None."""
        if features.shape[-1] > self.embed_dim:
            return features[:, : self.embed_dim], features[:, self.embed_dim :]
        return features, None

    def warm_up(self) -> None:
        """Compute the condition embeddings and run one forward pass, so the first request is not slow."""
        for modality in ("clinical", "dermoscopic"):
            self.classifier.condition_set(modality)
        size = self.model.preprocessing.image_size
        self.embed(torch.zeros(1, 3, size, size))  # the served path (ImageNet view included)
        warm_up_shap()

    def _labels(self, options: TriageOptions) -> ScoredLabels:
        if not options.candidate_labels:
            scored = self._taxonomy_labels.get(options.modality)
            if scored is None:
                labels = self.classifier.condition_set(options.modality)
                scored = ScoredLabels(labels, [self.taxonomy.get(i) for i in labels.ids])
                self._taxonomy_labels[options.modality] = scored
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

    def _differential(
        self,
        rank: int,
        label: str,
        prob: float,
        cond: Condition | None,
        fused: FusionResult,
        key: str,
        image_prob: float,
    ) -> Differential:
        extra = {
            "image_probability": round(image_prob, 6),
            "contributions": {m: round(v[key], 4) for m, v in fused.contributions.items()},
        }
        if cond is None:
            return Differential(rank=rank, label=label, condition_id=None, name=label, probability=prob, **extra)
        codes = condition_codes(cond)
        look_alikes = [
            LookAlike(condition_id=i, name=self.taxonomy.get(i).name) for i in cond.look_alikes if i in self.taxonomy
        ]
        return Differential(
            rank=rank,
            label=label,
            condition_id=cond.id,
            name=cond.name,
            probability=prob,
            codes=codes,
            malignant=cond.malignant,
            look_alikes=look_alikes,
            validated_for_model=self.model.card.name in cond.validated_models,
            **extra,
        )

    def triage(
        self,
        image: DecodedImage,
        options: TriageOptions,
        clinical: ClinicalInput | None = None,
        *,
        request_id: str,
        decode_ms: float = 0.0,
        queue_ms: float = 0.0,
        image_features: torch.Tensor | None = None,
    ) -> TriageResult:
        """``image_features`` (a (1, D) row of :meth:`embed`) skips the image tower: the service batches it."""
        t0 = time.perf_counter()
        clinical = clinical or ClinicalInput()
        scored = self._labels(options)
        keys = scored.keys
        if image_features is None:
            image_features = self.embed([image])
        image_features, imagenet_probs = self._split(image_features)
        image_probs = self.classifier.probabilities(image_features, scored.labels)[0]
        findings = extract_findings(clinical.symptoms) if clinical.symptoms else None
        sims = symptom_text_sims(self.model, scored.labels.embeddings, keys, clinical.symptoms)
        image_evidence = dict(zip(keys, image_probs.tolist(), strict=True))
        fused = fuse(image_evidence, sims, clinical.risk_factors, findings, model=self.fusion, priors=self.priors)
        urgency = assess_urgency(fused, self.thresholds, self.taxonomy)
        shap_values = explain_urgency(
            image_evidence,
            sims,
            clinical.risk_factors,
            findings,
            model=self.fusion,
            priors=self.priors,
            thresholds=self.thresholds,
            taxonomy=self.taxonomy,
        )
        stage = "fused" if self.fusion.fitted else "image"
        calibrated = self.uncertainty.calibrate(np.array([fused.posterior[k] for k in keys]), stage)
        probs = torch.from_numpy(calibrated)  # calibrated before ranking (temperature keeps the order)
        order = probs.argsort(descending=True)[: options.top_k].tolist()
        differentials = [
            self._differential(
                rank + 1,
                scored.labels.ids[i],
                round(float(probs[i]), 6),
                scored.conditions[i],
                fused,
                keys[i],
                image_evidence[keys[i]],
            )
            for rank, i in enumerate(order)
        ]
        uncertainty = self.uncertainty.assess(
            keys,
            calibrated,
            stage=stage,
            embedding=image_features,
            image=image.image,
            imagenet_probs=imagenet_probs,
            quality=image.info.quality.model_dump(),
            top_validated=differentials[0].validated_for_model if differentials[0].condition_id else None,
            fitzpatrick=clinical.risk_factors.fitzpatrick if clinical.risk_factors else None,
        )
        inference_ms = (time.perf_counter() - t0) * 1000
        heatmaps, heatmap_ms = None, 0.0
        if options.explain:
            t1 = time.perf_counter()
            heatmaps = explain_differentials(
                self.model, image.image, scored.labels.embeddings[order], want_grid=options.heatmap_grid
            )
            heatmap_ms = (time.perf_counter() - t1) * 1000
        return TriageResult(
            request_id=request_id,
            model=self.model_ref,
            taxonomy_version=self.taxonomy.version,
            modality=options.modality,
            label_source="candidate_labels" if options.candidate_labels else "taxonomy",
            differentials=differentials,
            image=image.info,
            timings=Timings(
                decode_ms=round(decode_ms, 2),
                queue_ms=round(queue_ms, 2),
                inference_ms=round(inference_ms, 2),
                heatmap_ms=round(heatmap_ms, 2),
                total_ms=round(decode_ms + queue_ms + inference_ms + heatmap_ms, 2),
            ),
            heatmaps=heatmaps,
            findings=findings,
            risk_factors=clinical.risk_factors,
            fusion_model=fused.fusion_model,
            urgency=urgency,
            urgency_shap=shap_values,
            uncertainty=uncertainty,
        )
