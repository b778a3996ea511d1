"""Score any image-text model on a labelled folder with the same zero-shot path the service uses."""

from __future__ import annotations

import logging
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from PIL import Image, ImageOps
from tqdm import tqdm

from models.backends.base import ImageTextModel
from models.datasets import LabelledImage, load_labelled_folder
from models.metrics import classification_report
from models.taxonomy import Taxonomy
from models.zeroshot import LabelSet, Modality, ZeroShotClassifier

log = logging.getLogger(__name__)

LabelScope = Literal["dataset", "taxonomy"]


def load_rgb(path: Path) -> Image.Image:
    with Image.open(path) as im:
        return ImageOps.exif_transpose(im).convert("RGB")


def embed_images(
    model: ImageTextModel, items: Sequence[LabelledImage], batch_size: int = 16, progress: bool = True
) -> torch.Tensor:
    out = []
    bar = tqdm(total=len(items), desc="scoring photos", unit="img", disable=not progress)
    for i in range(0, len(items), batch_size):
        chunk = items[i : i + batch_size]
        pixels = model.preprocessing.batch([load_rgb(it.path) for it in chunk]).to(model.device)
        out.append(model.encode_image(pixels).cpu())
        bar.update(len(chunk))
    bar.close()
    return torch.cat(out)


def evaluate(
    model: ImageTextModel,
    taxonomy: Taxonomy,
    data_dir: str | Path,
    *,
    label_scope: LabelScope = "dataset",
    modality: Modality = "clinical",
    batch_size: int = 16,
    progress: bool = True,
    classifier: ZeroShotClassifier | None = None,
) -> dict[str, object]:
    """Figures for `model` on the photos under `data_dir`.

    `label_scope="dataset"` ranks only the conditions the folder contains (the published
    zero-shot protocol); `"taxonomy"` ranks every condition the service knows.
    """
    items = load_labelled_folder(data_dir, taxonomy)
    clf = classifier or ZeroShotClassifier(model, taxonomy)
    present = sorted({i.condition_id for i in items})
    labels: LabelSet = clf.subset(present, modality) if label_scope == "dataset" else clf.condition_set(modality)
    probs = clf.probabilities(embed_images(model, items, batch_size, progress), labels).numpy()
    y = np.array([labels.ids.index(i.condition_id) for i in items])
    malignant = [taxonomy.get(c).malignant for c in labels.ids]
    report = classification_report(probs, y, list(labels.ids), malignant, [i.fitzpatrick for i in items])
    overlap = len({i.stem for i in items} & set(model.card.training_image_ids))
    if overlap:
        msg = (
            f"{model.card.name} was trained on {overlap} of these {len(items)} photos: these figures are optimistic. "
            "Its patient-grouped cross-validation figures are on its model card."
        )
        warnings.warn(msg, stacklevel=2)
    report.update(
        {
            "model": {"name": model.card.name, "version": model.card.version},
            "label_scope": label_scope,
            "labels": list(labels.ids),
            "modality": modality,
            "trained_on_overlap": overlap,
        }
    )
    return report
