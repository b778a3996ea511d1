"""Train and evaluate the lesion segmentation head on the ISIC 2017 expert masks (offline only).

The trunk is frozen, so its four feature maps are computed once per image and cached to disk
(fp16); the head then trains in seconds an epoch. `train` fits, `validation` picks the epoch,
`test` is only ever scored (Jaccard and Dice per image, averaged, as the 2017 challenge did).
"""

from __future__ import annotations

import csv
import json
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import save_file
from torch.nn import functional as F
from tqdm import tqdm

from models.photos import load_photo
from models.segmentation.network import FPNHead, Trunk
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


@torch.no_grad()
def cache_features(items: list[MaskedImage], cache: Path | None) -> tuple[list[torch.Tensor], torch.Tensor]:
    """The frozen trunk's four maps for every item (fp16) and the masks (bool), cached on disk."""
    if cache and cache.exists():
        blob = torch.load(cache, weights_only=True)
        return blob["taps"], blob["masks"]
    trunk = Trunk()
    taps: list[list[torch.Tensor]] = [[] for _ in range(4)]
    masks = []
    for start in tqdm(range(0, len(items), 16), desc="segmentation features", mininterval=30):
        chunk = items[start : start + 16]
        x = torch.stack([to_input(load_photo(i.image)) for i in chunk])
        for j, t in enumerate(trunk(x)):
            taps[j].append(t.half())
        masks.extend(torch.from_numpy(load_mask(i.mask)) for i in chunk)
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
def predict_masks(head: FPNHead, taps: list[torch.Tensor], batch: int = 64) -> np.ndarray:
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
    train: tuple[list[torch.Tensor], torch.Tensor],
    val: tuple[list[torch.Tensor], torch.Tensor],
    *,
    epochs: int = 30,
    batch: int = 32,
    lr: float = 3e-3,
    seed: int = 0,
    log=print,
    checkpoint: Path | None = None,
) -> tuple[FPNHead, dict]:
    """Fit the head on train (random flips of the cached maps), keep the epoch best on validation."""
    torch.manual_seed(seed)
    head = FPNHead()
    opt = torch.optim.AdamW(head.parameters(), lr=lr, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=epochs * -(-len(train[1]) // batch))
    taps, masks = train
    best: tuple[float, dict, int] = (-1.0, {}, -1)
    history = []
    t0 = time.time()
    for epoch in range(epochs):
        head.train()
        order = torch.randperm(len(masks))
        for s in range(0, len(order), batch):
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


def save_head(head: FPNHead, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in head.state_dict().items()}, str(path))


def fit_segmentation(cache_dir: Path | None, out: Path, *, epochs: int = 10, root: Path = ISIC_DIR, log=print) -> dict:
    """Cache train/validation features, train the head, keep the best validation epoch, save it."""

    def cached(split: str) -> tuple[list[torch.Tensor], torch.Tensor]:
        return cache_features(isic_items(root, split=split), cache_dir / f"isic2017-{split}.pt" if cache_dir else None)

    train, val = cached("train"), cached("validation")
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
