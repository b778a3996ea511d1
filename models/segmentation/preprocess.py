"""Photo -> segmenter input: a plain resize to 256x256 (the ISIC copy's own squash) and
mean = std = 0.5, the same for training, evaluation and requests."""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image

from models.segmentation.network import INPUT_SIZE


def to_input(photo: Image.Image) -> torch.Tensor:
    """(3, 256, 256) float tensor in [-1, 1]."""
    arr = np.asarray(photo.convert("RGB").resize((INPUT_SIZE, INPUT_SIZE), Image.Resampling.BICUBIC), np.float32)
    return torch.from_numpy(arr / 127.5 - 1.0).permute(2, 0, 1).contiguous()


def load_mask(path) -> np.ndarray:
    """An expert mask PNG as a (256, 256) bool array (white = lesion)."""
    im = Image.open(path).convert("L")
    if im.size != (INPUT_SIZE, INPUT_SIZE):
        im = im.resize((INPUT_SIZE, INPUT_SIZE), Image.Resampling.NEAREST)
    return np.asarray(im) > 127
