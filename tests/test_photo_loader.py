"""One photo loader: a rotated, ICC-tagged, alpha PNG gives the same tensor through every path.

Each path is the real function that path uses: the service's `decode_image`, the training
loader (through `cache_image_features`), evaluation's `embed_images` (also what calibration
embeds with), the OOD fitting loader (`dev_photos`) and faithfulness's default loader. The
decoded photo is also checked against independent references (rotation, ICC -> sRGB, alpha
onto white), so a path that skipped a step could not agree with the others by accident.
"""

from __future__ import annotations

import inspect
import io
import struct
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image, ImageCms

from explain.faithfulness import faithfulness_on_folder
from models.embedded.architecture import load_preprocessing
from models.fitting import ood_fit
from models.fitting.datasets import LabelledImage
from models.fitting.evaluation import embed_images
from models.fitting.train_embedded import TrainConfig, cache_image_features, pre_resize
from models.photos import load_photo, to_rgb
from service.images import decode_image

W, H = 160, 96  # landscape as stored; portrait once EXIF orientation 6 is applied

# Display P3 colorants (D50-adapted, as in Apple's Display P3 profile), s15Fixed16 in the ICC file.
_P3_COLORANTS = {
    b"rXYZ": (0.515121, 0.241196, -0.001053),
    b"gXYZ": (0.291977, 0.692245, 0.041885),
    b"bXYZ": (0.157104, 0.066574, 0.784073),
}


def display_p3_icc() -> bytes:
    """A real RGB matrix/TRC profile that is not sRGB: LittleCMS's sRGB with Display P3 primaries."""
    data = bytearray(ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes())
    data[84:100] = bytes(16)  # profile id (MD5): zero means "not computed"
    (count,) = struct.unpack(">I", data[128:132])
    for i in range(count):
        sig, offset, _ = struct.unpack(">4sII", data[132 + 12 * i : 144 + 12 * i])
        if sig in _P3_COLORANTS:
            assert data[offset : offset + 4] == b"XYZ "
            data[offset + 8 : offset + 20] = struct.pack(">3i", *(round(v * 65536) for v in _P3_COLORANTS[sig]))
    return bytes(data)


def source_rgba() -> Image.Image:
    """Mid-tone colours (P3 -> sRGB moves them), an opaque marker in the stored top-left corner,
    a transparent band (black underneath, so a dropped alpha shows) and a half-transparent one."""
    y, x = np.mgrid[0:H, 0:W]
    rgba = np.empty((H, W, 4), np.uint8)
    rgba[..., 0] = 60 + (140 * x) // W
    rgba[..., 1] = 150 - (90 * y) // H
    rgba[..., 2] = 90
    rgba[..., 3] = 255
    rgba[:12, :12] = (200, 40, 40, 255)  # marker
    rgba[:, 100:120] = (0, 0, 0, 0)  # fully transparent
    rgba[:, 120:130, 3] = 128  # half transparent
    return Image.fromarray(rgba, "RGBA")


@pytest.fixture(scope="module")
def photo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    exif = Image.Exif()
    exif[0x0112] = 6
    path = tmp_path_factory.mktemp("photo") / "PAT_1_1_1.png"
    source_rgba().save(path, "PNG", exif=exif.tobytes(), icc_profile=display_p3_icc())
    return path


def expected_rgb() -> np.ndarray:
    """Independent reference: LittleCMS P3 -> sRGB, composite onto white, rotate 270 (orientation 6)."""
    src = source_rgba()
    p3 = ImageCms.ImageCmsProfile(io.BytesIO(display_p3_icc()))
    srgb = ImageCms.profileToProfile(src, p3, ImageCms.createProfile("sRGB"), outputMode="RGBA")
    a = np.asarray(srgb).astype(np.float64)
    alpha = a[..., 3:] / 255.0
    flat = np.rint(a[..., :3] * alpha + 255.0 * (1 - alpha)).astype(np.uint8)
    return np.rot90(flat, k=-1)  # ROTATE_270 = 90 degrees clockwise


class _EchoModel:
    """Stands in for a model: its 'embedding' is the preprocessed tensor itself."""

    def __init__(self) -> None:
        self.preprocessing = load_preprocessing()
        self.device = torch.device("cpu")

    def encode_image(self, pixels: torch.Tensor) -> torch.Tensor:
        return pixels.flatten(1)


def test_decoded_photo_is_rotated_colour_converted_and_flattened(photo: Path) -> None:
    decoded = decode_image(photo.read_bytes())
    assert decoded.info.orientation_applied == 6
    assert "icc_profile" in decoded.info.metadata_stripped
    got = np.asarray(decoded.image)
    assert decoded.image.size == (H, W)  # rotated
    want = expected_rgb()
    assert np.abs(got.astype(int) - want.astype(int)).max() <= 1
    # Rotation: the stored top-left marker is now top-right.
    assert tuple(got[2, H - 3]) == pytest.approx(tuple(want[2, H - 3]), abs=1)
    assert abs(int(got[2, H - 3, 1]) - 40) > 8 or abs(int(got[2, H - 3, 0]) - 200) > 8  # and converted
    # ICC: the opaque body moved away from its stored (P3) values.
    stored = np.rot90(np.asarray(source_rgba())[..., :3], k=-1).astype(int)
    opaque = np.rot90(np.asarray(source_rgba())[..., 3] == 255, k=-1)
    assert np.abs(got.astype(int) - stored)[opaque].mean() > 3
    # Alpha: the transparent band is white, not the black underneath.
    band = np.rot90(np.asarray(source_rgba())[..., 3] == 0, k=-1)
    assert (got[band] == 255).all()
    # Nothing but pixels survives.
    assert decoded.image.info == {}
    assert load_photo(photo).info == {}
    assert np.array_equal(np.asarray(load_photo(photo)), got)


def test_every_path_gives_the_same_tensor(photo: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    served = load_preprocessing()
    service_image = decode_image(photo.read_bytes()).image
    reference = served.batch([service_image])[0]
    item = LabelledImage(photo, "mel", "PAT_1")
    model: Any = _EchoModel()

    # Evaluation (and calibration, which embeds through it).
    evaluation = embed_images(model, [item], progress=False)[0].view_as(reference)
    assert torch.equal(evaluation, reference)

    # OOD fitting: the loader `dev_photos` hands to every statistic it computes.
    monkeypatch.setattr(ood_fit, "_photo_set", lambda _m, _k, _n, load: load)
    ood_load = ood_fit.dev_photos(model, [item])
    assert torch.equal(served.batch([ood_load(0)])[0], reference)

    # Faithfulness: its default loader, preprocessed as it does.
    loader = inspect.signature(faithfulness_on_folder).parameters["loader"].default
    assert torch.equal(served.batch([loader(photo).convert("RGB")])[0], reference)

    # Training: the test-time view of the feature cache (an identity "frozen bottom"), after
    # training's own pre-resize, against the service's decode given the same pre-resize.
    _, tta = cache_image_features([item], torch.nn.Identity(), TrainConfig(train_views=1), None)
    assert torch.equal(tta[0, 0], served(pre_resize(service_image)).half())


def test_the_comparison_sees_each_step(photo: Path) -> None:
    """Skipping rotation, ICC conversion or alpha compositing changes the tensor."""
    served = load_preprocessing()
    reference = served(decode_image(photo.read_bytes()).image)
    with Image.open(photo) as im:
        im.load()
        unrotated = im.copy()
        unrotated.info.pop("exif", None)
        unrotated.getexif().pop(0x0112, None)
        no_icc = im.copy()
        no_icc.info.pop("icc_profile")
        no_alpha = im.convert("RGB")
        no_alpha.info.update(im.info)
        no_alpha.getexif()[0x0112] = 6
    for variant in (unrotated, no_icc, no_alpha):
        assert not torch.equal(served(to_rgb(variant)[0]), reference)


def test_sixteen_bit_grey_scaling_matches_the_float_formula() -> None:
    """Integer scaling of 16-bit grey equals the former float64 round(v * 255 / 65535) for every v."""
    v = np.arange(65536, dtype=np.uint16).reshape(256, 256)
    im = Image.fromarray(v)
    assert im.mode == "I;16"
    got = np.asarray(to_rgb(im)[0])[..., 0]
    want = np.rint(v.astype(np.int64) * 255 / 65535).astype(np.uint8)
    assert np.array_equal(got, want)
    wide = np.arange(-70_000, 140_000, 7, dtype=np.int32)[:30_000].reshape(100, 300)  # mode I, clipped
    got = np.asarray(to_rgb(Image.fromarray(wide))[0])[..., 0]
    assert np.array_equal(got, np.rint(np.clip(wide.astype(np.int64), 0, 65535) * 255 / 65535).astype(np.uint8))
