"""TriageEngine: a decoded photo and options in, one TriageResult out. No HTTP in here.

The engine is created once (the model loads once, condition embeddings are computed once) and
is safe to call from several threads: torch inference is re-entrant for these models and the
zero-shot classifier guards its caches with a lock.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import torch

from explain.gradcam import explain_differentials
from models.backends.base import ImageTextModel
from models.symptoms import extract_findings
from models.taxonomy import Condition, Taxonomy, UnknownLabelError
from models.zeroshot import LabelSet, ZeroShotClassifier
from service.images import DecodedImage
from service.schemas import (
    ClinicalInput,
    CodeOut,
    Differential,
    LookAlike,
    ModelRef,
    Timings,
    TriageOptions,
    TriageResult,
)


@dataclass(frozen=True)
class ScoredLabels:
    labels: LabelSet
    conditions: list[Condition | None]


class TriageEngine:
    def __init__(self, model: ImageTextModel, taxonomy: Taxonomy, cache_dir: Path | None = None) -> None:
        self.model = model
        self.taxonomy = taxonomy
        self.classifier = ZeroShotClassifier(model, taxonomy, cache_dir)

    @property
    def model_ref(self) -> ModelRef:
        card = self.model.card
        return ModelRef(name=card.name, version=card.version, card_url=card.card_url or f"/v1/models/{card.name}")

    def warm_up(self) -> None:
        """Compute the condition embeddings and run one forward pass, so the first request is not slow."""
        for modality in ("clinical", "dermoscopic"):
            self.classifier.condition_set(modality)
        size = self.model.preprocessing.image_size
        self.model.encode_image(torch.zeros(1, 3, size, size, device=self.model.device))

    def _labels(self, options: TriageOptions) -> ScoredLabels:
        if not options.candidate_labels:
            labels = self.classifier.condition_set(options.modality)
            return ScoredLabels(labels, [self.taxonomy.get(i) for i in labels.ids])
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

    def _differential(self, rank: int, label: str, prob: float, cond: Condition | None) -> Differential:
        if cond is None:
            return Differential(rank=rank, label=label, condition_id=None, name=label, probability=prob)
        codes = [CodeOut(system="http://hl7.org/fhir/sid/icd-10-cm", code=cond.icd10.code, display=cond.icd10.display)]
        if cond.snomed_ct is not None:
            codes.insert(
                0, CodeOut(system="http://snomed.info/sct", code=cond.snomed_ct.code, display=cond.snomed_ct.display)
            )
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
    ) -> TriageResult:
        t0 = time.perf_counter()
        clinical = clinical or ClinicalInput()
        scored = self._labels(options)
        pixels = self.model.preprocessing.batch([image.image]).to(self.model.device)
        probs = self.classifier.probabilities(self.model.encode_image(pixels), scored.labels)[0]
        order = probs.argsort(descending=True)[: options.top_k].tolist()
        differentials = [
            self._differential(rank + 1, scored.labels.ids[i], round(float(probs[i]), 6), scored.conditions[i])
            for rank, i in enumerate(order)
        ]
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
            findings=extract_findings(clinical.symptoms) if clinical.symptoms else None,
            risk_factors=clinical.risk_factors,
        )
