"""Register the later photo onto the earlier one by a similarity transform (scale, rotation,
shift) fitted to ORB keypoint matches with RANSAC (skimage). The inlier count and the grey-level
correlation of the registered skin are what say whether the two photos show the same place."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage
from skimage import color, feature, measure, transform

WORK_SIDE = 512  # both photos are registered at this long side


@dataclass(frozen=True)
class Registration:
    ok: bool
    method: str
    scale: float  # later pixels -> earlier pixels (at WORK_SIDE)
    rotation_deg: float
    shift_px: tuple[float, float]
    inliers: int
    matches: int
    overlap: float  # share of the earlier frame the registered later photo covers
    skin_correlation: float  # Pearson r of the grey levels outside both lesions, after registration
    transform: transform.SimilarityTransform | None
    reason: str | None = None


def to_work(rgb: np.ndarray) -> np.ndarray:
    """An (H, W, 3) uint8 photo resized to WORK_SIDE on the long side, float in [0, 1]."""
    h, w = rgb.shape[:2]
    s = WORK_SIDE / max(h, w)
    return transform.resize(rgb, (round(h * s), round(w * s)), anti_aliasing=True, preserve_range=False)


def _keypoints(grey: np.ndarray, skin: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """ORB keypoints on the skin only (outside the dilated lesion): a lesion that grew must not pull
    the registration's scale with it."""
    orb = feature.ORB(n_keypoints=600, n_scales=6, fast_threshold=0.02)
    try:
        orb.detect_and_extract(grey)
    except RuntimeError:  # too few keypoints (a flat photo)
        return np.zeros((0, 2)), np.zeros((0, 256), bool)
    rows, cols = np.clip(orb.keypoints.round().astype(int).T, 0, np.array(grey.shape)[:, None] - 1)
    keep = skin[rows, cols]
    return orb.keypoints[keep], orb.descriptors[keep]


_SWAP = np.array([[0.0, 1, 0], [1, 0, 0], [0, 0, 1]])


def warp_affine(
    image: np.ndarray, forward: transform.SimilarityTransform, shape: tuple[int, ...], order: int, cval: float = 0.0
) -> np.ndarray:
    """`image` moved by `forward` (its (x, y) -> the output's) into an output of `shape`: scipy's affine
    warp with the inverse matrix in (row, col) order, several times faster here than skimage's `warp`
    with a transform, which maps every output coordinate through Python."""
    m = _SWAP @ np.linalg.inv(forward.params) @ _SWAP
    return ndimage.affine_transform(image, m[:2, :2], offset=m[:2, 2], output_shape=shape, order=order, cval=cval)


def register(earlier: np.ndarray, later: np.ndarray, skin_a: np.ndarray, skin_b: np.ndarray) -> Registration:
    """Similarity transform mapping `later` onto `earlier` (both WORK_SIDE float RGB); `skin_*`: bool masks
    of the skin outside each lesion (where the correlation check looks)."""
    ga, gb = color.rgb2gray(earlier), color.rgb2gray(later)
    ka, da = _keypoints(ga, skin_a)
    kb, db = _keypoints(gb, skin_b)
    fail = Registration(False, "orb-ransac-similarity", 1.0, 0.0, (0.0, 0.0), 0, 0, 0.0, 0.0, None)
    if len(ka) < 8 or len(kb) < 8:
        return _with_reason(fail, "too few landmarks to register the photos (flat or blurred photo)")
    pairs = feature.match_descriptors(da, db, cross_check=True, max_ratio=0.85)
    if len(pairs) < 8:
        return _with_reason(fail, "the two photos share too few landmarks to be registered")
    src = kb[pairs[:, 1]][:, ::-1]  # (x, y) in the later photo
    dst = ka[pairs[:, 0]][:, ::-1]
    rng = np.random.default_rng(0)
    model, inliers = measure.ransac(
        (src, dst), transform.SimilarityTransform, min_samples=3, residual_threshold=4, max_trials=2000, rng=rng
    )
    if model is None or inliers is None or inliers.sum() < 8:
        return _with_reason(fail, "no consistent registration between the two photos")
    warped = warp_affine(gb, model, ga.shape, order=1, cval=np.nan)
    skin_b_w = warp_affine(skin_b.astype(float), model, ga.shape, order=0) > 0.5
    covered = ~np.isnan(warped)
    both = covered & skin_a & skin_b_w
    r = float(np.corrcoef(ga[both], warped[both])[0, 1]) if both.sum() > 100 else 0.0
    return Registration(
        ok=True,
        method="orb-ransac-similarity",
        scale=float(model.scale),
        rotation_deg=float(np.degrees(model.rotation)),
        shift_px=(float(model.translation[0]), float(model.translation[1])),
        inliers=int(inliers.sum()),
        matches=len(pairs),
        overlap=float(covered.mean()),
        skin_correlation=r if np.isfinite(r) else 0.0,
        transform=model,
    )


def _with_reason(reg: Registration, reason: str) -> Registration:
    return Registration(**{**reg.__dict__, "reason": reason})
