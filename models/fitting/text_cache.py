"""Precompute the condition embeddings a model ships (`dermtriage build-text-cache`)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch

from models.backends.base import ImageTextModel
from models.knowledge.taxonomy import Taxonomy
from models.scoring.zeroshot import LabelSet, ZeroShotClassifier, ensemble_embedding, save_label_set

MODALITIES = ("clinical", "dermoscopic")


def build_text_cache(
    model: ImageTextModel, taxonomy: Taxonomy, out_dir: Path, modalities: Sequence[str] = MODALITIES
) -> list[Path]:
    """Write one `text-<key>.pt` per modality to `out_dir`, replacing stale files there.

    Always computed from the model's text tower (a cache the model already ships is not copied),
    under the same key `ZeroShotClassifier` looks the file up by."""
    out_dir.mkdir(parents=True, exist_ok=True)
    for stale in out_dir.glob("text-*.pt"):
        stale.unlink()
    keys = ZeroShotClassifier(model, taxonomy)
    written = []
    for modality in modalities:
        templates = taxonomy.templates_for(modality)  # type: ignore[arg-type]
        emb = torch.stack([ensemble_embedding(model, c.prompt_names, templates) for c in taxonomy.conditions])
        path = out_dir / f"text-{keys.cache_key(modality)}.pt"  # type: ignore[arg-type]
        save_label_set(LabelSet(tuple(taxonomy.ids), emb), path)
        written.append(path)
    return written
