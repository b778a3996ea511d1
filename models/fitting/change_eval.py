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

from models.lesions.compare import ChangeThresholds, Comparison, PhotoSide, change_parts, compare
from models.photos import load_photo


@dataclass(frozen=True)
class Pair:
    kind: str  # stable-repeat, stable-rerender, growth, darkening, new-colour, border, different-lesion
    earlier: Image.Image
    later: Image.Image
    true_area_change_pct: float | None = None
    true_scale: float | None = None  # later pixels -> earlier pixels, for the re-rendered pairs
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


def rerender(im: Image.Image, rng: np.random.Generator) -> tuple[Image.Image, float]:
    """Another shot of the same scene: crop, small rotation, lighting, white balance, JPEG, blur; and the
    true scale from its pixels to the original's."""
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
    return Image.open(io.BytesIO(buf.getvalue())).convert("RGB"), float(1 / zoom)


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


def make_pairs(
    root: Path, half: str, seed: int = 0, synthetic_photos: int = 60, different_lesions: int = 40
) -> list[Pair]:
    """Every pair of one half (see the module's docstring)."""
    from models.segmentation import segment

    rows = [r for r in pad_rows(root) if half_of(r["patient_id"]) == half]
    rng = np.random.default_rng(seed)
    by_lesion: dict[tuple[str, str], list[dict[str, str]]] = {}
    for r in rows:  # PAD's lesion_id is numbered per patient: two patients can share one
        by_lesion.setdefault((r["patient_id"], r["lesion_id"]), []).append(r)
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
        grown, grown_pct = grow(rgb, mask, float(rng.uniform(0.10, 0.40)))
        bordered, border_pct = distort_border(rgb, mask, rng)
        made = [
            ("stable-rerender", rgb, None),
            ("growth", grown, grown_pct),
            ("darkening", darken(rgb, mask, rng.uniform(0.6, 0.8)), 0.0),
            ("new-colour", new_colour(rgb, mask, rng), 0.0),
            ("border", bordered, border_pct),
        ]
        for kind, later, true_pct in made:
            shot, scale = rerender(Image.fromarray(later), rng)
            pairs.append(Pair(kind, im, shot, true_pct, scale))
    patients = sorted({r["patient_id"] for r in rows})
    for _ in range(min(different_lesions, len(patients) // 2)):  # two patients' lesions, body sites not given
        pa, pb = rng.choice(len(singles), size=2, replace=False)
        if singles[pa]["patient_id"] != singles[pb]["patient_id"]:
            pairs.append(Pair("different-lesion", photo(singles[pa]), photo(singles[pb])))
    return pairs


EVAL_SIDE = 768  # photos are capped at this long side (registration works at 512, segmentation at 256)


def capped(im: Image.Image) -> Image.Image:
    s = EVAL_SIDE / max(im.size)
    return im if s >= 1 else im.resize((round(im.width * s), round(im.height * s)), Image.Resampling.BICUBIC)


def side_of(im: Image.Image, body_site: str | None = None) -> PhotoSide:
    from models.segmentation import segment_masks

    mask = segment_masks([np.asarray(im.convert("RGB"))])[0]
    return PhotoSide(np.asarray(im.convert("RGB")), mask if mask.any() else None, body_site=body_site)


def run_pairs(pairs: list[Pair], thresholds: ChangeThresholds) -> list[Comparison]:
    """Compare every pair (the shared earlier photo of the synthetic pairs segmented once), outlining
    both again in register as the service does."""
    from models.segmentation import segment_masks

    out, sides = [], {}
    for p in tqdm(pairs, desc="comparing pairs", mininterval=30):
        key = (id(p.earlier), p.body_sites[0])
        if key not in sides:
            sides = {key: side_of(p.earlier, p.body_sites[0])}  # pairs of one photo come in a row
        out.append(compare(sides[key], side_of(p.later, p.body_sites[1]), thresholds, segment_masks))
    return out


def _features(r: Comparison) -> list[float]:
    assert r.area_change_pct is not None and r.delta_e is not None and r.shape_change is not None
    return [abs(r.area_change_pct), r.delta_e, r.shape_change, r.appearance_change or 0.0]


FLOORS = (2.0, 1.0, 0.02, 0.02)  # area %, Delta E, shape, appearance: below these no threshold goes


def tune_thresholds(
    pairs: list[Pair], results: list[Comparison], quantile: float = 0.95, spread: float = 0.75
) -> ChangeThresholds:
    """Thresholds from the development stable pairs that were comparable: each measure is scaled by
    its `spread` quantile over them (at least its floor), the change score is the largest scaled
    measure, and one cut, the `quantile` of the stable pairs' scores, sets every threshold (cut x
    scale), so the false 'changed' rate on development stable pairs is about 1 - `quantile`."""
    stable = [_features(r) for p, r in zip(pairs, results, strict=True) if r.comparable and p.kind.startswith("stable")]
    if len(stable) < 10:
        return ChangeThresholds()
    x = np.abs(np.array(stable))
    scale = np.maximum(np.quantile(x, spread, axis=0), FLOORS)
    cut = float(np.quantile((x / scale).max(1), quantile))
    area, colour, shape, appearance = (float(t) for t in cut * scale)
    return ChangeThresholds(
        area_pct=round(area, 1), delta_e=round(colour, 2), shape=round(shape, 3), appearance=round(appearance, 3)
    )


def rescore(r: Comparison, th: ChangeThresholds) -> float | None:
    """The change score of a comparable result under other thresholds (no need to compare again)."""
    if not r.comparable:
        return None
    return max(change_parts(r, th).values())


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
    scale_errs = [  # the registration's scale (work pixels) against the re-render's zoom (photo pixels)
        abs(r.registration["scale"] * max(p.earlier.size) / max(p.later.size) / p.true_scale - 1)
        for p, r in zip(pairs, results, strict=True)
        if p.true_scale and r.registration.get("ok")
    ]
    report["registration_scale_error_median_pct"] = round(100 * float(np.median(scale_errs)), 2) if scale_errs else None
    labelled_idx = [i for i, p in enumerate(pairs) if p.kind != "different-lesion"]
    report["cannot_tell_rate_same_lesion"] = round(sum(scores[i] is None for i in labelled_idx) / len(labelled_idx), 3)
    report["thresholds"] = th.__dict__
    report["pairs"] = [  # each pair's measures, to see which fail and why
        {
            "kind": p.kind,
            "true_area_change_pct": None if p.true_area_change_pct is None else round(p.true_area_change_pct, 1),
            "verdict": "cannot tell" if s is None else "changed" if s >= 1 else "stable",  # under `th`
            "area_change_pct": r.area_change_pct,
            "delta_e": r.delta_e,
            "shape_change": r.shape_change,
            "appearance_change": r.appearance_change,
            "outline_stability": r.outline_stability,
            "score": None if s is None else round(s, 3),
            "why": None if r.comparable else r.reasons[0],
        }
        for p, r, s in zip(pairs, results, scores, strict=True)
    ]
    return report


def evaluate_change(
    root: Path, synthetic_photos: int = 60, log: Callable[[str], None] = print, different_lesions: int = 40
) -> dict:
    """Tune on the development half, report on the held-out half (and the development half, marked)."""
    dev = make_pairs(root, "dev", seed=0, synthetic_photos=synthetic_photos, different_lesions=different_lesions)
    dev_results = run_pairs(dev, ChangeThresholds())
    th = tune_thresholds(dev, dev_results)
    log(f"thresholds tuned on {len(dev)} development pairs: {th}")
    held = make_pairs(root, "held-out", seed=1, synthetic_photos=synthetic_photos, different_lesions=different_lesions)
    held_results = run_pairs(held, th)
    return {"held_out": summarise(held, held_results, th), "development_in_sample": summarise(dev, dev_results, th)}
