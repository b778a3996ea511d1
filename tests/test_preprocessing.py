"""The checkpoint's own preprocessing: the centre crop (`crop_pct`) and the box it maps back to."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from models.backends.base import Preprocessing
from models.backends.registry import PreprocessingOverride
from models.embedded.architecture import load_preprocessing

MEAN_STD = {"mean": (0.5, 0.5, 0.5), "std": (0.5, 0.5, 0.5)}


def _framed_photo(width: int = 400, height: int = 300, frame: float = 0.15) -> Image.Image:
    """Green centre, red frame of `frame` x the short side on every edge."""
    rng = np.random.default_rng(0)
    pixels = np.zeros((height, width, 3), dtype=np.uint8)
    pixels[..., 0] = 220
    f = round(frame * min(width, height))
    pixels[f:-f, f:-f] = rng.integers(0, 120, (height - 2 * f, width - 2 * f, 3), dtype=np.uint8)
    pixels[f:-f, f:-f, 0] = 0
    return Image.fromarray(pixels, "RGB")


@pytest.mark.parametrize("resize_mode", ["shortest", "squash"])
def test_crop_pct_keeps_the_centre_and_geometry_says_where(resize_mode: str) -> None:
    photo = _framed_photo()
    full = Preprocessing(image_size=64, resize_mode=resize_mode, **MEAN_STD)  # type: ignore[arg-type]
    cropped = Preprocessing(image_size=64, resize_mode=resize_mode, crop_pct=0.6, **MEAN_STD)  # type: ignore[arg-type]
    red = lambda x: int((x[0] > 0.5).sum())  # noqa: E731  red pixels of a normalised tensor
    assert red(full(photo)) > 0, "without the crop the frame shows"
    assert red(cropped(photo)) == 0, "the 60 % centre crop must drop the 15 % frame"

    box = cropped.geometry(*photo.size)
    if resize_mode == "shortest":
        assert box == pytest.approx((110.0, 60.0, 290.0, 240.0))  # 0.6 x 300 px square, centred
    else:
        assert box == pytest.approx((80.0, 60.0, 320.0, 240.0))  # 0.6 of each side
    # the box is what the model saw: cropping the photo there and resizing gives the same input
    seen = full(photo.crop(tuple(round(v) for v in box)))
    assert float((seen - cropped(photo)).abs().mean()) < 0.05
    assert full.geometry(*photo.size) == ((50.0, 0.0, 350.0, 300.0) if resize_mode == "shortest" else (0, 0, 400, 300))


def test_crop_pct_is_validated_and_overridable() -> None:
    with pytest.raises(ValueError, match="crop_pct"):
        Preprocessing(image_size=64, crop_pct=0.0, **MEAN_STD)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="crop_pct"):
        PreprocessingOverride(crop_pct=1.5)
    base = Preprocessing(image_size=64, **MEAN_STD)  # type: ignore[arg-type]
    assert PreprocessingOverride(crop_pct=0.875).apply(base).crop_pct == 0.875
    complete = PreprocessingOverride(image_size=64, interpolation="bilinear", resize_mode="shortest", **MEAN_STD)
    assert complete.complete() == Preprocessing(image_size=64, interpolation="bilinear", **MEAN_STD)  # type: ignore[arg-type]


def test_embedded_model_serves_the_crop_it_was_validated_with() -> None:
    """Training's test-time views and the service read the same config (models/fitting/train_embedded.py)."""
    pre = load_preprocessing()
    assert pre.crop_pct == 0.8 and pre.image_size == 224
