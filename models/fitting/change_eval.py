"""How well `models.lesions.compare` tells change from no change (offline only).

Pairs, from PAD-UFES-20 development photos, split by patient into a development half (thresholds
are tuned there) and a held-out half (figures are reported there):
- stable: real repeat photos of the same lesion (`lesion_id`, same visit), and re-rendered copies
  of one photo (other crop, rotation, lighting, white balance, JPEG quality, blur);
- changed: synthetic growth (lesion region scaled up, area +10 to +40 %), darkening, a new colour
  over part of the lesion, border distortion (lobes grown from the border), each on the photo's
  segmented lesion (the mask is known because it made the change), then re-rendered like the
  stable copies, so registration is never the identity;
- different lesions: photos of two different patients' lesions: the answer must be 'cannot tell'.
"""

from __future__ import annotations

import csv
import hashlib
import io
import itertools
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageEnhance, ImageFilter
from scipy import ndimage
from sklearn.metrics import roc_auc_score
from tqdm import tqdm

from models.lesions.compare import ChangeThresholds, Comparison, PhotoSide, compare
from models.photos import load_photo


@dataclass(frozen=True)
class Pair:
    kind: str  # stable-repeat, stable-rerender, growth, darkening, new-colour, border, different-lesion
    earlier: Image.Image
    later: Image.Image
    true_area_change_pct: float | None = None
    body_sites: tuple[str | None, str | None] = (None, None)

    @property
    def changed(self) -> bool:
        return self.kind in CHANGED_KINDS


CHANGED_KINDS = ("growth", "darkening", "new-colour", "border")


def half_of(patient_id: str) -> str:
    """'dev' or 'held-out', fixed by a hash of the patient id (no patient in both halves)."""
    return "dev" if hashlib.sha256(patient_id.encode()).digest()[0] % 2 == 0 else "held-out"


def pad_rows(root: Path) -> list[dict[str, str]]:
    """metadata.csv rows whose photo is present, with `path` added (the copy's photos may be .jpg)."""
    files = {p.stem: p for p in (root / "images").iterdir()}
    with (root / "metadata.csv").open(newline="") as fh:
        rows = list(csv.DictReader(fh))
    return [{**r, "path": str(files[Path(r["img_id"]).stem])} for r in rows if Path(r["img_id"]).stem in files]


def rerender(im: Image.Image, rng: np.random.Generator) -> Image.Image:
    """Another shot of the same scene: crop, small rotation, lighting, white balance, JPEG, blur."""
    w, h = im.size
    angle = float(rng.uniform(-10, 10))
    out = im.rotate(angle, resample=Image.Resampling.BICUBIC, expand=False)
    keep = rng.uniform(0.8, 0.92)  # crop inside the rotated frame, off centre, then rescale (zoom)
    cw, ch = int(w * keep), int(h * keep)
    x0, y0 = int(rng.uniform(0.04, 0.96 - keep) * w), int(rng.uniform(0.04, 0.96 - keep) * h)
    zoom = rng.uniform(0.8, 1.25)
    out = out.crop((x0, y0, x0 + cw, y0 + ch)).resize((int(cw * zoom), int(ch * zoom)), Image.Resampling.BICUBIC)
    out = ImageEnhance.Brightness(out).enhance(float(rng.uniform(0.85, 1.15)))
    out = ImageEnhance.Contrast(out).enhance(float(rng.uniform(0.9, 1.1)))
    gains = rng.uniform(0.93, 1.07, 3)
    arr = np.clip(np.asarray(out, np.float32) * gains, 0, 255).astype(np.uint8)
    out = Image.fromarray(arr)
    if rng.random() < 0.5:
        out = out.filter(ImageFilter.GaussianBlur(float(rng.uniform(0.3, 1.2))))
    buf = io.BytesIO()
    out.save(buf, format="JPEG", quality=int(rng.integers(40, 92)))
    return Image.open(io.BytesIO(buf.getvalue())).convert("RGB")


def _fill_from_lesion(rgb: np.ndarray, mask: np.ndarray, new: np.ndarray) -> np.ndarray:
    """Pixels of `new` outside `mask` take the colour of the nearest lesion pixel 6 px inside."""
    inner = ndimage.binary_erosion(mask, iterations=6)
    src = inner if inner.sum() > 20 else mask
    _, (iy, ix) = ndimage.distance_transform_edt(~src, return_indices=True)
    out = rgb.copy()
    add = new & ~mask
    out[add] = rgb[iy[add], ix[add]]
    soft = ndimage.gaussian_filter(new.astype(np.float32), 1.0)[..., None]
    return (out * soft + rgb * (1 - soft)).astype(np.uint8)


def grow(rgb: np.ndarray, mask: np.ndarray, area_gain: float) -> tuple[np.ndarray, float]:
    """Scale the lesion region about its centroid so its area grows by `area_gain` (true % returned)."""
    k = float(np.sqrt(1 + area_gain))
    cy, cx = ndimage.center_of_mass(mask)
    yy, xx = np.mgrid[: mask.shape[0], : mask.shape[1]]
    sy, sx = cy + (yy - cy) / k, cx + (xx - cx) / k  # sample the original at the shrunken coordinates
    new_mask = ndimage.map_coordinates(mask.astype(np.float32), [sy, sx], order=1) > 0.5
    scaled = np.stack(
        [ndimage.map_coordinates(rgb[..., c].astype(np.float32), [sy, sx], order=1) for c in range(3)], -1
    )
    soft = ndimage.gaussian_filter(new_mask.astype(np.float32), 1.5)[..., None]
    out = (scaled * soft + rgb * (1 - soft)).astype(np.uint8)
    return out, 100 * (new_mask.sum() / mask.sum() - 1)


def darken(rgb: np.ndarray, mask: np.ndarray, factor: float) -> np.ndarray:
    soft = ndimage.gaussian_filter(mask.astype(np.float32), 2)[..., None]
    return (rgb * (1 - soft * (1 - factor))).astype(np.uint8)


def new_colour(rgb: np.ndarray, mask: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Tint a part of the lesion (a half-plane through it) blue-grey, red or black."""
    ys, xs = np.nonzero(mask)
    cy, cx = ys.mean(), xs.mean()
    theta = rng.uniform(0, 2 * np.pi)
    yy, xx = np.mgrid[: mask.shape[0], : mask.shape[1]]
    part = mask & (((yy - cy) * np.sin(theta) + (xx - cx) * np.cos(theta)) > 0)
    tint = np.array([[90, 100, 130], [150, 40, 50], [35, 25, 30]][rng.integers(3)], np.float32)
    soft = ndimage.gaussian_filter(part.astype(np.float32), 2)[..., None] * 0.6
    return (rgb * (1 - soft) + tint * soft).astype(np.uint8)


def distort_border(rgb: np.ndarray, mask: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, float]:
    """Grow 2-4 lobes from border points (discs of 20-35 % of the lesion's radius)."""
    edge = np.argwhere(mask & ~ndimage.binary_erosion(mask))
    radius = np.sqrt(mask.sum() / np.pi)
    yy, xx = np.mgrid[: mask.shape[0], : mask.shape[1]]
    new = mask.copy()
    for i in rng.choice(len(edge), size=int(rng.integers(2, 5)), replace=False):
        r = radius * rng.uniform(0.2, 0.35)
        new |= (yy - edge[i][0]) ** 2 + (xx - edge[i][1]) ** 2 < r**2
    return _fill_from_lesion(rgb, mask, new), 100 * (new.sum() / mask.sum() - 1)


def make_pairs(root: Path, half: str, seed: int = 0, synthetic_photos: int = 60) -> list[Pair]:
    """Every pair of one half (see the module's docstring)."""
    from models.segmentation import segment

    rows = [r for r in pad_rows(root) if half_of(r["patient_id"]) == half]
    rng = np.random.default_rng(seed)
    by_lesion: dict[str, list[dict[str, str]]] = {}
    for r in rows:
        by_lesion.setdefault(r["lesion_id"], []).append(r)
    photo = lambda r: capped(load_photo(r["path"]))  # noqa: E731
    pairs: list[Pair] = []
    for group in by_lesion.values():  # real same-visit repeats: consecutive photos of one lesion
        for a, b in itertools.pairwise(group):
            pairs.append(Pair("stable-repeat", photo(a), photo(b), body_sites=(a["region"], b["region"])))
    singles = [g[0] for g in by_lesion.values()]
    picks = rng.choice(len(singles), size=min(synthetic_photos, len(singles)), replace=False)
    for i in picks:
        im = photo(singles[i])
        seg = segment(im)
        if not seg.found:
            continue
        rgb, mask = np.asarray(im), seg.mask
        pairs.append(Pair("stable-rerender", im, rerender(im, rng)))
        grown, true_pct = grow(rgb, mask, float(rng.uniform(0.10, 0.40)))
        pairs.append(Pair("growth", im, rerender(Image.fromarray(grown), rng), true_pct))
        pairs.append(Pair("darkening", im, rerender(Image.fromarray(darken(rgb, mask, rng.uniform(0.6, 0.8))), rng), 0))
        pairs.append(Pair("new-colour", im, rerender(Image.fromarray(new_colour(rgb, mask, rng)), rng), 0))
        bordered, true_pct = distort_border(rgb, mask, rng)
        pairs.append(Pair("border", im, rerender(Image.fromarray(bordered), rng), true_pct))
    patients = sorted({r["patient_id"] for r in rows})
    for _ in range(min(40, len(patients) // 2)):  # different lesions, different patients, same body site unknown
        pa, pb = rng.choice(len(singles), size=2, replace=False)
        if singles[pa]["patient_id"] != singles[pb]["patient_id"]:
            pairs.append(Pair("different-lesion", photo(singles[pa]), photo(singles[pb])))
    return pairs


EVAL_SIDE = 768  # photos are capped at this long side (registration works at 512, segmentation at 256)


def capped(im: Image.Image) -> Image.Image:
    s = EVAL_SIDE / max(im.size)
    return im if s >= 1 else im.resize((round(im.width * s), round(im.height * s)), Image.Resampling.BICUBIC)


def side_of(im: Image.Image, body_site: str | None = None) -> PhotoSide:
    from models.segmentation import segment

    seg = segment(im)
    return PhotoSide(np.asarray(im.convert("RGB")), seg.mask if seg.found else None, body_site=body_site)


def run_pairs(pairs: list[Pair], thresholds: ChangeThresholds) -> list[Comparison]:
    """Compare every pair (the shared earlier photo of the synthetic pairs segmented once)."""
    out, sides = [], {}
    for p in tqdm(pairs, desc="comparing pairs", mininterval=30):
        key = (id(p.earlier), p.body_sites[0])
        if key not in sides:
            sides = {key: side_of(p.earlier, p.body_sites[0])}  # pairs of one photo come in a row
        out.append(compare(sides[key], side_of(p.later, p.body_sites[1]), thresholds))
    return out


def tune_thresholds(pairs: list[Pair], results: list[Comparison], quantile: float = 0.985) -> ChangeThresholds:
    """Each measure's threshold: its `quantile` over the development stable pairs that were comparable."""
    stable = [r for p, r in zip(pairs, results, strict=True) if p.kind.startswith("stable") and r.comparable]
    if len(stable) < 10:
        return ChangeThresholds()
    q = lambda xs: float(np.quantile(np.abs(xs), quantile))  # noqa: E731
    return ChangeThresholds(
        area_pct=round(max(q([r.area_change_pct for r in stable]), 5.0), 1),
        delta_e=round(max(q([r.delta_e for r in stable]), 2.0), 2),
        shape=round(max(q([r.shape_change for r in stable]), 0.05), 3),
    )


def rescore(r: Comparison, th: ChangeThresholds) -> float | None:
    """The change score of a comparable result under other thresholds (no need to compare again)."""
    if not r.comparable:
        return None
    return max(abs(r.area_change_pct) / th.area_pct, r.delta_e / th.delta_e, r.shape_change / th.shape)


def summarise(pairs: list[Pair], results: list[Comparison], th: ChangeThresholds) -> dict:
    """False 'changed' rate, 'cannot tell' rates, change AUROC and area error, per kind."""
    report: dict = {"n_pairs": len(pairs), "per_kind": {}}
    scores = [rescore(r, th) for r in results]
    for kind in sorted({p.kind for p in pairs}):
        idx = [i for i, p in enumerate(pairs) if p.kind == kind]
        answered = [i for i in idx if scores[i] is not None]
        report["per_kind"][kind] = {
            "n": len(idx),
            "cannot_tell": round(1 - len(answered) / len(idx), 3) if idx else None,
            "changed": round(sum(scores[i] >= 1 for i in answered) / len(idx), 3) if idx else None,
        }
    stable = [i for i, p in enumerate(pairs) if p.kind.startswith("stable")]
    report["false_changed_rate"] = round(sum(scores[i] is not None and scores[i] >= 1 for i in stable) / len(stable), 3)
    labelled = [
        (p.changed, s) for p, s in zip(pairs, scores, strict=True) if s is not None and p.kind != "different-lesion"
    ]
    if labelled and len({c for c, _ in labelled}) == 2:
        y, s = zip(*labelled, strict=True)
        report["change_auroc_answered"] = round(float(roc_auc_score(y, s)), 4)
        # counting every 'cannot tell' as a miss (score 0): the pessimistic figure
        all_lab = [
            (p.changed, s if s is not None else 0.0)
            for p, s in zip(pairs, scores, strict=True)
            if p.kind != "different-lesion"
        ]
        y2, s2 = zip(*all_lab, strict=True)
        report["change_auroc_all"] = round(float(roc_auc_score(y2, s2)), 4)
    errs = [
        abs(r.area_change_pct - p.true_area_change_pct)
        for p, r in zip(pairs, results, strict=True)
        if p.kind in ("growth", "border") and r.comparable and p.true_area_change_pct is not None
    ]
    report["area_change_abs_error_median_pp"] = round(float(np.median(errs)), 2) if errs else None
    report["thresholds"] = th.__dict__
    return report


def evaluate_change(root: Path, synthetic_photos: int = 60, log: Callable[[str], None] = print) -> dict:
    """Tune on the development half, report on the held-out half (and the development half, marked)."""
    dev = make_pairs(root, "dev", seed=0, synthetic_photos=synthetic_photos)
    dev_results = run_pairs(dev, ChangeThresholds())
    th = tune_thresholds(dev, dev_results)
    log(f"thresholds tuned on {len(dev)} development pairs: {th}")
    held = make_pairs(root, "held-out", seed=1, synthetic_photos=synthetic_photos)
    held_results = run_pairs(held, th)
    return {"held_out": summarise(held, held_results, th), "development_in_sample": summarise(dev, dev_results, th)}
