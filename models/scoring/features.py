"""The typed stages of one answer between the image tower and the result (as transformers pipelines
split preprocess, forward, postprocess): `ImageFeatures` from one forward pass, then `LabelScores`
over one label index. numpy from here on; torch stays inside the backends and the label embeddings.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from models.backends.base import ImageTextModel


@dataclass(frozen=True)
class ImageFeatures:
    """What one forward pass of the image tower gives for B photos."""

    embedding: np.ndarray  # (B, D) float32 unit rows
    domain: np.ndarray | None = None  # (B, 1000) frozen-ImageNet probabilities (the OOD domain rule), if asked

    def __len__(self) -> int:
        return len(self.embedding)

    def __getitem__(self, rows: int | slice) -> ImageFeatures:
        """The features of some photos, copied (a row must not keep the whole batch alive)."""
        rows = rows if isinstance(rows, slice) else slice(rows, rows + 1)
        domain = None if self.domain is None else self.domain[rows].copy()
        return ImageFeatures(self.embedding[rows].copy(), domain)


def image_features(model: ImageTextModel, pixels: torch.Tensor, *, with_domain: bool = False) -> ImageFeatures:
    """(B, 3, H, W) preprocessed pixels -> features in one forward pass (the domain view from the same pass)."""
    if with_domain:
        emb, domain = model.encode_image_with_domain(pixels)
    else:
        emb, domain = model.encode_image(pixels), None
    return ImageFeatures(
        emb.detach().float().cpu().numpy(), None if domain is None else domain.detach().float().cpu().numpy()
    )


@dataclass(frozen=True)
class LabelScores:
    """One photo's evidence over one label index: `keys[i]` is the condition id (or the caller's own
    label) of row i of every array; fusion, urgency and calibration read these rows in this order."""

    keys: tuple[str, ...]
    image: np.ndarray  # (C,) image-stage softmax over the labels (uncalibrated)
    text: np.ndarray | None = None  # (C,) cosine of the symptoms text with each label, None without text

    def __post_init__(self) -> None:
        if len(self.image) != len(self.keys) or (self.text is not None and len(self.text) != len(self.keys)):
            raise ValueError("every score array needs one value per label")
