"""Zero-shot scoring: prompt ensembles, cached condition embeddings, probabilities.

Each condition's embedding is the normalised mean over its names and synonyms of the
normalised mean over the modality's templates. The embeddings for a (model, taxonomy,
modality) are computed once: kept in memory and, when a cache folder is given, on disk under
a key hashing the model's identity and the taxonomy's fingerprint.
"""

from __future__ import annotations

import hashlib
import logging
import threading
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from models.backends.base import ImageTextModel
from models.knowledge.taxonomy import Modality, Taxonomy

log = logging.getLogger(__name__)

CUSTOM_LABEL_CACHE = 256


@dataclass(frozen=True)
class LabelSet:
    """The classes one scoring runs over: taxonomy condition ids, or a caller's own labels."""

    ids: tuple[str, ...]
    embeddings: torch.Tensor  # (C, D), unit rows


def save_label_set(labels: LabelSet, path: Path) -> None:
    """Atomic write, so a concurrent reader never sees half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    torch.save({"ids": list(labels.ids), "embeddings": labels.embeddings}, tmp)
    tmp.replace(path)


def ensemble_embedding(model: ImageTextModel, names: Sequence[str], templates: Sequence[str]) -> torch.Tensor:
    """One unit vector for a class named several ways, each way put through several templates."""
    prompts = [tpl.format(name) for name in names for tpl in templates]
    z = model.encode_text(prompts).view(len(names), len(templates), -1)
    per_name = F.normalize(z.mean(1), dim=-1)
    return F.normalize(per_name.mean(0), dim=-1)


class ZeroShotClassifier:
    """Scores image embeddings against the taxonomy's conditions or against caller labels."""

    def __init__(self, model: ImageTextModel, taxonomy: Taxonomy, cache_dir: Path | None = None) -> None:
        self.model = model
        self.taxonomy = taxonomy
        self.cache_dir = cache_dir
        self._lock = threading.Lock()
        self._sets: dict[str, LabelSet] = {}
        self._custom: OrderedDict[tuple[str, str], torch.Tensor] = OrderedDict()

    def cache_key(self, modality: Modality) -> str:
        blob = f"{self.model.artifacts.fingerprint}|{self.taxonomy.fingerprint}|{modality}"
        return hashlib.sha256(blob.encode()).hexdigest()[:24]

    def condition_set(self, modality: Modality = "clinical") -> LabelSet:
        """All taxonomy conditions; computed once per modality, then served from memory."""
        with self._lock:
            if modality not in self._sets:
                self._sets[modality] = self._load_or_compute(modality)
            return self._sets[modality]

    def _load_or_compute(self, modality: Modality) -> LabelSet:
        ids = tuple(self.taxonomy.ids)
        name = f"text-{self.cache_key(modality)}.pt"
        path = self.cache_dir / name if self.cache_dir else None
        shipped = self.model.artifacts.text_cache  # read-only cache a model may ship
        for candidate in (path, shipped / name if shipped else None):
            if candidate is not None and candidate.exists():
                blob = torch.load(candidate, weights_only=True)
                if tuple(blob["ids"]) == ids:
                    return LabelSet(ids, blob["embeddings"])
        templates = self.taxonomy.templates_for(modality)
        emb = torch.stack([ensemble_embedding(self.model, c.prompt_names, templates) for c in self.taxonomy.conditions])
        if path:
            save_label_set(LabelSet(ids, emb), path)
        log.info("computed %d condition embeddings (%s)", len(ids), modality)
        return LabelSet(ids, emb)

    def subset(self, condition_ids: Sequence[str], modality: Modality = "clinical") -> LabelSet:
        full = self.condition_set(modality)
        index = [full.ids.index(self.taxonomy.get(c).id) for c in condition_ids]
        return LabelSet(tuple(full.ids[i] for i in index), full.embeddings[index])

    def custom_set(self, labels: Sequence[str], modality: Modality = "clinical") -> LabelSet:
        """A caller's own labels: a known condition name reuses its ensemble; other text is embedded as is."""
        templates = self.taxonomy.templates_for(modality)
        rows = []
        for label in labels:
            key = (label.strip().lower(), modality)
            with self._lock:
                cached = self._custom.get(key)
                if cached is not None:
                    self._custom.move_to_end(key)
            if cached is None:
                cached = ensemble_embedding(self.model, [label.strip()], templates)
                with self._lock:
                    self._custom[key] = cached
                    while len(self._custom) > CUSTOM_LABEL_CACHE:
                        self._custom.popitem(last=False)
            rows.append(cached)
        return LabelSet(tuple(labels), torch.stack(rows))

    def probabilities(self, image_embeddings: torch.Tensor, labels: LabelSet, temperature: float = 1.0) -> torch.Tensor:
        """(B, D) unit image vectors -> (B, C) softmax over the label set at the model's logit scale."""
        logits = self.model.logit_scale * image_embeddings @ labels.embeddings.T
        return torch.softmax(logits / temperature, dim=-1)
