"""Both label scopes of `dermtriage evaluate` in one run: the published zero-shot protocol and the service's default.

- `dataset`: only the conditions the folder contains are ranked (how zero-shot papers report);
- `taxonomy_default`: what `POST /v1/triage` ranks when the caller names no labels: the conditions the
  model's card validates (`label_scope="validated"`), judged on the folder's photos of those conditions;
  for a model whose card validates nothing, the whole taxonomy.

Each scope carries its image-only and fused figures (fused: PAD layout, fusion refit per patient fold).
For the embedded model on its development photos both use its out-of-fold probabilities
(models/fitting/evaluation.py), so the figures are patient-grouped CV, not in-sample.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from models.backends.base import ImageTextModel
from models.knowledge.taxonomy import Taxonomy

__all__ = ["SCOPE_KEYS", "scope_summary", "scopes_report"]

SCOPE_KEYS = ("n", "balanced_accuracy", "accuracy", "top3_accuracy", "malignant_auroc", "melanoma_sensitivity")


def scope_summary(report: dict[str, Any]) -> dict[str, Any]:
    """One scope's figures from an `evaluate` report: its labels, image-only and fused blocks."""
    fused = report.get("fused")
    return {
        "label_scope": report.get("label_scope"),
        "labels": report.get("labels"),
        "image_probabilities": report.get("image_probabilities"),
        "image": {k: report.get(k) for k in (*SCOPE_KEYS, "per_class")},
        "fused": None if not fused else {k: fused.get(k) for k in (*SCOPE_KEYS[1:], "per_class")},
        "fused_note": report.get("fused_note"),
    }


def scopes_report(
    model: ImageTextModel, taxonomy: Taxonomy, data_dir: str | Path, report: dict[str, Any], **kwargs: Any
) -> dict[str, Any]:
    """`{"dataset": ..., "taxonomy_default": ...}`, reusing `report` for the scope it was computed in;
    `kwargs` go to `evaluate` (modality, split, batch_size, progress)."""
    from models.fitting.evaluation import evaluate, validated_conditions

    default = "validated" if validated_conditions(model, taxonomy) is not None else "taxonomy"
    done = report.get("label_scope")
    out: dict[str, Any] = {}
    for key, scope in (("dataset", "dataset"), ("taxonomy_default", default)):
        rep = report if done == scope else evaluate(model, taxonomy, data_dir, label_scope=scope, **kwargs)
        out[key] = scope_summary(rep)
    n_all = out["dataset"]["image"]["n"]
    out["taxonomy_default"]["photos_outside_scope"] = (n_all or 0) - (out["taxonomy_default"]["image"]["n"] or 0)
    return out
