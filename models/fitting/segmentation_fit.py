"""Train and evaluate the lesion segmentation head on the ISIC 2017 expert masks (offline only).

The trunk is frozen, so its four feature maps are computed once per image and cached to disk
(fp16), with a few randomly scaled, rotated and colour-jittered copies of `train`; the head then
trains in about a minute an epoch. `train` fits, `validation` picks the epoch,
`test` is only ever scored (Jaccard and Dice per image, averaged, as the 2017 challenge did).
"""

from __future__ import annotations

import csv
import json
import math
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import save_file
from torch.nn import functional as F
from tqdm import tqdm

from models.photos import load_photo
from models.segmentation.network import Trunk, UNetHead
from models.segmentation.preprocess import load_mask, to_input

ISIC_DIR = Path(__file__).resolve().parents[3] / "shared" / "data" / "isic-2017"


@dataclass(frozen=True)
class MaskedImage:
    image: Path
    mask: Path
    split: str


def isic_items(root: Path = ISIC_DIR, split: str | None = None) -> list[MaskedImage]:
    """ISIC 2017 images with their expert masks, from labels.csv (`split` filters)."""
    items = []
    with (root / "labels.csv").open(newline="") as fh:
        for row in csv.DictReader(fh):
            if split and row["split"] != split:
                continue
            image = root / row["file"]
            items.append(MaskedImage(image, root / "masks" / f"{image.stem}_segmentation.png", row["split"]))
    return items


def jaccard_dice(pred: np.ndarray, truth: np.ndarray) -> tuple[float, float]:
    """Per-image Jaccard and Dice of two bool masks (both empty counts as a perfect match)."""
    inter = float(np.logical_and(pred, truth).sum())
    union = float(np.logical_or(pred, truth).sum())
    total = float(pred.sum() + truth.sum())
    return (inter / union if union else 1.0), (2 * inter / total if total else 1.0)


def augment_pair(
    x: torch.Tensor, mask: torch.Tensor, gen: torch.Generator, colour_seed: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """One random copy of a (3, S, S) input in [-1, 1] and its (S, S) bool mask: the same rotation
    (+-45 degrees; flips are added while training), zoom (0.8-1.25) and shift (+-10 %) on both,
    edges reflected (from `gen`), then torchvision's colour jitter (brightness, contrast, saturation
    +-20 %, hue +-0.03) seeded with `colour_seed` without touching the global generator."""
    from torchvision.transforms import v2

    def uniform(lo: float, hi: float) -> float:
        return lo + (hi - lo) * torch.rand((), generator=gen).item()

    angle, zoom = math.radians(uniform(-45, 45)), uniform(0.8, 1.25)
    c, s = math.cos(angle) / zoom, math.sin(angle) / zoom
    theta = torch.tensor([[c, -s, uniform(-0.1, 0.1)], [s, c, uniform(-0.1, 0.1)]], dtype=torch.float32)[None]
    grid = F.affine_grid(theta, [1, *x.shape], align_corners=False)
    x = F.grid_sample(x[None], grid, mode="bilinear", padding_mode="reflection", align_corners=False)[0]
    m = F.grid_sample(mask[None, None].float(), grid, mode="nearest", padding_mode="reflection", align_corners=False)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(colour_seed)
        x = v2.ColorJitter(0.2, 0.2, 0.2, 0.03)(((x + 1) / 2).clamp(0, 1)) * 2 - 1
    return x, m[0, 0] > 0.5


@torch.no_grad()
def cache_features(
    items: list[MaskedImage], cache: Path | None, augment_seed: int | None = None
) -> tuple[list[torch.Tensor], torch.Tensor]:
    """The frozen trunk's four maps for every item (fp16) and the masks (bool), cached on disk;
    with `augment_seed`, of one random copy of each (`augment_pair`) instead."""
    if cache and cache.exists():
        blob = torch.load(cache, weights_only=True)
        return blob["taps"], blob["masks"]
    trunk = Trunk()
    gen = torch.Generator().manual_seed(augment_seed or 0)
    colour_seed = (augment_seed or 0) * 100_000  # + the item's index
    taps: list[list[torch.Tensor]] = [[] for _ in range(4)]
    masks = []
    for start in tqdm(range(0, len(items), 16), desc="segmentation features", mininterval=30):
        pairs = [
            (to_input(load_photo(i.image)), torch.from_numpy(load_mask(i.mask))) for i in items[start : start + 16]
        ]
        if augment_seed is not None:
            pairs = [augment_pair(x, m, gen, colour_seed + start + k) for k, (x, m) in enumerate(pairs)]
        for j, t in enumerate(trunk(torch.stack([x for x, _ in pairs]))):
            taps[j].append(t.half())
        masks.extend(m for _, m in pairs)
    out = [torch.cat(t) for t in taps], torch.stack(masks)
    if cache:
        cache.parent.mkdir(parents=True, exist_ok=True)
        torch.save({"taps": out[0], "masks": out[1]}, cache)
    return out


def _loss(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """BCE + soft Dice (Dice counters the lesion/background imbalance of small lesions)."""
    bce = F.binary_cross_entropy_with_logits(logits, target)
    p = torch.sigmoid(logits)
    inter = (p * target).sum((1, 2, 3))
    dice = 1 - (2 * inter + 1) / (p.sum((1, 2, 3)) + target.sum((1, 2, 3)) + 1)
    return bce + dice.mean()


def _flip(
    taps: list[torch.Tensor], mask: torch.Tensor, dims: tuple[int, ...]
) -> tuple[list[torch.Tensor], torch.Tensor]:
    return [t.flip(dims) for t in taps], mask.flip(dims)


@torch.no_grad()
def predict_masks(head: UNetHead, taps: list[torch.Tensor], batch: int = 64) -> np.ndarray:
    head.eval()
    out = []
    for s in range(0, taps[0].shape[0], batch):
        logits = head([t[s : s + batch] for t in taps])
        out.append(F.interpolate(logits, size=(256, 256), mode="bilinear", align_corners=False)[:, 0] > 0)
    return torch.cat(out).numpy()


def mean_scores(pred: np.ndarray, truth: np.ndarray) -> dict[str, float]:
    scores = np.array([jaccard_dice(p, t) for p, t in zip(pred, truth, strict=True)])
    return {"jaccard": float(scores[:, 0].mean()), "dice": float(scores[:, 1].mean()), "n": len(scores)}


def train_head(
    train: list[tuple[list[torch.Tensor], torch.Tensor]],
    val: tuple[list[torch.Tensor], torch.Tensor],
    *,
    epochs: int = 12,
    batch: int = 32,
    lr: float = 3e-3,
    seed: int = 0,
    log=print,
    checkpoint: Path | None = None,
) -> tuple[UNetHead, dict]:
    """Fit the head on the cached copies of train (epoch e uses copy e mod their number, with random
    flips of its maps; one-cycle LR, 10 % warm-up then cosine), keep the epoch best on validation."""
    torch.manual_seed(seed)
    head = UNetHead()
    opt = torch.optim.AdamW(head.parameters(), lr=lr, weight_decay=1e-4)
    n = len(train[0][1])
    sched = torch.optim.lr_scheduler.OneCycleLR(
        opt, max_lr=lr, total_steps=epochs * -(-n // batch), pct_start=0.1, anneal_strategy="cos"
    )
    best: tuple[float, dict, int] = (-1.0, {}, -1)
    history = []
    t0 = time.time()
    for epoch in range(epochs):
        head.train()
        taps, masks = train[epoch % len(train)]
        order = torch.randperm(n)
        for s in range(0, n, batch):
            idx = order[s : s + batch]
            bt, bm = [t[idx] for t in taps], masks[idx][:, None].float()
            flips = tuple(d for d, on in ((-1, torch.rand(()) < 0.5), (-2, torch.rand(()) < 0.5)) if on)
            if flips:
                bt, bm = _flip(bt, bm, flips)
            logits = F.interpolate(head(bt), size=bm.shape[-2:], mode="bilinear", align_corners=False)
            loss = _loss(logits, bm)
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
        score = mean_scores(predict_masks(head, val[0]), val[1].numpy())
        history.append({"epoch": epoch, "val_jaccard": round(score["jaccard"], 4), "seconds": round(time.time() - t0)})
        log(json.dumps(history[-1]))
        if score["jaccard"] > best[0]:
            best = (score["jaccard"], {k: v.clone() for k, v in head.state_dict().items()}, epoch)
            if checkpoint:  # the best head so far survives an interrupted run
                save_head(head, checkpoint)
    head.load_state_dict(best[1])
    return head.eval(), {"best_epoch": best[2], "val_jaccard": best[0], "history": history}


def save_head(head: UNetHead, path: Path) -> None:
    """The head's weights in fp16 (half the file; `load_segmenter` turns them back to fp32)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {k: (v.half() if v.is_floating_point() else v).contiguous() for k, v in head.state_dict().items()}
    save_file(state, str(path))


def fit_segmentation(
    cache_dir: Path | None,
    out: Path,
    *,
    epochs: int = 12,
    augmented_copies: int = 2,
    root: Path = ISIC_DIR,
    log=print,
) -> dict:
    """Cache train (as is and `augmented_copies` random copies) and validation features, train the
    head, keep the best validation epoch, save it."""

    def cached(split: str, seed: int | None = None) -> tuple[list[torch.Tensor], torch.Tensor]:
        name = f"isic2017-{split}" + (f"-aug{seed}" if seed is not None else "") + ".pt"
        return cache_features(isic_items(root, split=split), cache_dir / name if cache_dir else None, seed)

    train = [cached("train")] + [cached("train", seed) for seed in range(1, augmented_copies + 1)]
    val = cached("validation")
    t0 = time.time()
    head, report = train_head(train, val, epochs=epochs, log=log, checkpoint=out.with_suffix(".partial.safetensors"))
    report["train_seconds"] = round(time.time() - t0, 1)
    save_head(head, out)
    return report


def evaluate_segmentation(
    split: str = "test", limit: int | None = None, batch: int = 16, root: Path = ISIC_DIR
) -> dict:
    """Jaccard and Dice of the served segmenter (`models.segmentation`, its test-time flips and
    threshold) and of the Otsu baseline on one ISIC split, per image, averaged; plus the share of
    images at Jaccard >= 0.65 and the 2017 challenge's thresholded Jaccard (below 0.65 counts 0)."""
    from models.segmentation import mask_from_probability, segment_probability
    from models.segmentation.classical import otsu_mask

    items = isic_items(root, split=split)
    if limit:
        items = items[:: max(1, len(items) // limit)][:limit]
    rows: dict[str, list[tuple[float, float]]] = {"head": [], "otsu": []}
    for s in tqdm(range(0, len(items), batch), desc=f"segmenting {split}", mininterval=30):
        chunk = items[s : s + batch]
        photos = [load_photo(i.image) for i in chunk]
        probs = segment_probability(photos)
        for item, photo, prob in zip(chunk, photos, probs, strict=True):
            truth = load_mask(item.mask)
            rows["head"].append(jaccard_dice(mask_from_probability(prob, (256, 256)), truth))
            rows["otsu"].append(jaccard_dice(otsu_mask(photo), truth))
    report: dict = {"split": split, "n": len(items)}
    for name, scores in rows.items():
        arr = np.array(scores)
        report[name] = {
            "jaccard": round(float(arr[:, 0].mean()), 4),
            "dice": round(float(arr[:, 1].mean()), 4),
            "jaccard_median": round(float(np.median(arr[:, 0])), 4),
            "share_jaccard_ge_0.65": round(float((arr[:, 0] >= 0.65).mean()), 4),
            "thresholded_jaccard": round(float(np.where(arr[:, 0] >= 0.65, arr[:, 0], 0.0).mean()), 4),
        }
    return report


def contact_sheet(paths: list[Path], out: Path, tile: int = 220, columns: int = 6) -> dict:
    """A PNG grid of the served segmenter's outlines over clinical photos (no expert masks exist for
    them: this is for the eye), and how many were outlined, touched the edge or found nothing."""
    from PIL import Image, ImageDraw

    from models.segmentation import segment

    rows = -(-len(paths) // columns)
    sheet = Image.new("RGB", (columns * tile, rows * tile), (255, 255, 255))
    counts = {"photos": len(paths), "outlined": 0, "touches_edge": 0, "nothing_found": 0}
    for i, path in enumerate(paths):
        photo = load_photo(path)
        seg = segment(photo)
        counts["outlined" if seg.found else "nothing_found"] += 1
        counts["touches_edge"] += int(seg.found and seg.reason is not None)
        s = tile / max(photo.size)
        im = photo.resize((max(1, round(photo.width * s)), max(1, round(photo.height * s))))
        if len(seg.polygon) > 2:
            ImageDraw.Draw(im).polygon([(x * s, y * s) for x, y in seg.polygon], outline=(0, 255, 255), width=2)
        sheet.paste(im, ((i % columns) * tile, (i // columns) * tile))
    out.parent.mkdir(parents=True, exist_ok=True)
    sheet.save(out)
    return counts
