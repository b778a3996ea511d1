"""Register the later photo onto the earlier one by a similarity transform (scale, rotation,
shift) fitted to SIFT keypoint matches on the skin with RANSAC (OpenCV). The inlier count and the grey-level
correlation of the registered skin are what say whether the two photos show the same place."""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np
from scipy import ndimage
from skimage import color, transform

WORK_SIDE = 512  # both photos are registered at this long side
METHOD = "sift-ransac-similarity"
RATIO = 0.8  # Lowe's ratio test on the two nearest descriptors


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


def _grey_u8(rgb: np.ndarray) -> np.ndarray:
    """Grey levels with local contrast raised (CLAHE), so the faint texture of skin gives keypoints."""
    grey = (color.rgb2gray(rgb) * 255).astype(np.uint8)
    return cv2.createCLAHE(clipLimit=2.0, tileGridSize=(8, 8)).apply(grey)


def _keypoints(grey: np.ndarray, skin: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
    """SIFT keypoints on the skin only (outside the dilated lesion): a lesion that grew must not pull
    the registration's scale with it. (x, y) points and their descriptors."""
    sift = cv2.SIFT_create(nfeatures=1500, contrastThreshold=0.02)
    kps, desc = sift.detectAndCompute(grey, skin.astype(np.uint8) * 255)
    return np.array([k.pt for k in kps], np.float32).reshape(-1, 2), desc


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
    ga, gb = _grey_u8(earlier), _grey_u8(later)
    ka, da = _keypoints(ga, skin_a)
    kb, db = _keypoints(gb, skin_b)
    fail = Registration(False, METHOD, 1.0, 0.0, (0.0, 0.0), 0, 0, 0.0, 0.0, None)
    if len(ka) < 8 or len(kb) < 8 or da is None or db is None:
        return _with_reason(fail, "too few landmarks to register the photos (flat or blurred photo)")
    knn = cv2.BFMatcher(cv2.NORM_L2).knnMatch(db, da, k=2)
    good = [m[0] for m in knn if len(m) == 2 and m[0].distance < RATIO * m[1].distance]
    if len(good) < 8:
        return _with_reason(fail, "the two photos share too few landmarks to be registered")
    src = kb[[m.queryIdx for m in good]]  # (x, y) in the later photo
    dst = ka[[m.trainIdx for m in good]]
    matrix, inl = cv2.estimateAffinePartial2D(
        src, dst, method=cv2.RANSAC, ransacReprojThreshold=4.0, maxIters=4000, confidence=0.999, refineIters=20
    )
    if matrix is None or inl is None or int(inl.sum()) < 8:
        return _with_reason(fail, "no consistent registration between the two photos")
    model = transform.SimilarityTransform(matrix=np.vstack([matrix, [0.0, 0.0, 1.0]]))
    ga, gb = color.rgb2gray(earlier), color.rgb2gray(later)  # the check on the plain grey levels
    warped = warp_affine(gb, model, ga.shape, order=1, cval=np.nan)
    skin_b_w = warp_affine(skin_b.astype(float), model, ga.shape, order=0) > 0.5
    covered = ~np.isnan(warped)
    both = covered & skin_a & skin_b_w
    r = float(np.corrcoef(ga[both], warped[both])[0, 1]) if both.sum() > 100 else 0.0
    return Registration(
        ok=True,
        method=METHOD,
        scale=float(model.scale),
        rotation_deg=float(np.degrees(model.rotation)),
        shift_px=(float(model.translation[0]), float(model.translation[1])),
        inliers=int(inl.sum()),
        matches=len(good),
        overlap=float(covered.mean()),
        skin_correlation=r if np.isfinite(r) else 0.0,
        transform=model,
    )


def _with_reason(reg: Registration, reason: str) -> Registration:
    return Registration(**{**reg.__dict__, "reason": reason})
