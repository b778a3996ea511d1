"""The classical baseline the learned head is measured against: Otsu on a darkness channel plus
morphology, keeping the connected component nearest the photo's centre (skimage, no training)."""

from __future__ import annotations

import numpy as np
from PIL import Image
from scipy import ndimage
from skimage import filters, measure, morphology

from models.segmentation.network import INPUT_SIZE


def otsu_mask(photo: Image.Image) -> np.ndarray:
    """(256, 256) bool lesion mask of a photo resized to the segmenter's input."""
    rgb = np.asarray(photo.convert("RGB").resize((INPUT_SIZE, INPUT_SIZE), Image.Resampling.BICUBIC), np.float32)
    # The blue channel separates pigment from skin best among RGB (Celebi et al.'s usual choice).
    channel = filters.gaussian(rgb[..., 2] / 255.0, sigma=2)
    # Ignore the dark dermatoscope vignette: threshold on the central disc only.
    yy, xx = np.mgrid[:INPUT_SIZE, :INPUT_SIZE]
    r = np.hypot(yy - INPUT_SIZE / 2, xx - INPUT_SIZE / 2)
    centre = r < INPUT_SIZE * 0.45
    mask = (channel < filters.threshold_otsu(channel[centre])) & centre
    mask = ndimage.binary_opening(mask, morphology.disk(3))
    mask = morphology.remove_small_holes(mask, max_size=500)
    labels = measure.label(mask)
    if labels.max() == 0:
        return np.zeros((INPUT_SIZE, INPUT_SIZE), bool)
    regions = measure.regionprops(labels)
    mid = np.array([INPUT_SIZE / 2, INPUT_SIZE / 2])
    best = min(regions, key=lambda p: np.linalg.norm(np.array(p.centroid) - mid) / np.sqrt(p.area))
    return labels == best.label
