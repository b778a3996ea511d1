"""The steps of the embedded model's LiT training (models/fitting/train_embedded.py runs them):
the image tower split into a frozen bottom and a trainable top, the test-time views, one fit on
cached activations and the test-time-view predictions."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

if TYPE_CHECKING:
    from models.fitting.train_embedded import TrainConfig

__all__ = [
    "TTA_MODES",
    "FrozenBottom",
    "TrainableTop",
    "class_text_embeddings",
    "fit",
    "flat_blocks",
    "n_views",
    "predict_tta",
    "tta_views",
]

TTA_MODES = ("single", "flip2", "flip4")  # flip2: the photo and its mirror (the first two of flip4)


# ----------------------------------------------------------------------------- image tower split


def flat_blocks(trunk: torch.nn.Module) -> list[torch.nn.Module]:
    return [block for stage in trunk.blocks for block in stage]


class FrozenBottom(torch.nn.Module):
    def __init__(self, trunk: torch.nn.Module, unfrozen_blocks: int) -> None:
        super().__init__()
        self.stem = torch.nn.Sequential(trunk.conv_stem, trunk.bn1)
        self.blocks = torch.nn.Sequential(*flat_blocks(trunk)[:-unfrozen_blocks])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.blocks(self.stem(x))


class TrainableTop(torch.nn.Module):
    """The unfrozen blocks, the head conv, pooling and the projection: shares modules with the model."""

    def __init__(self, visual: torch.nn.Module, unfrozen_blocks: int) -> None:
        super().__init__()
        trunk = visual.trunk
        self.blocks = torch.nn.Sequential(*flat_blocks(trunk)[-unfrozen_blocks:])
        self.conv_head, self.bn2, self.trunk = trunk.conv_head, trunk.bn2, trunk
        self.head = visual.head

    def forward(self, feats: torch.Tensor, dropout: float = 0.0) -> torch.Tensor:
        x = self.bn2(self.conv_head(self.blocks(feats)))
        pooled = F.dropout(self.trunk.forward_head(x), p=dropout, training=dropout > 0)
        return self.head(pooled)


def tta_views(pixels: torch.Tensor, mode: str) -> torch.Tensor:
    """(B,3,H,W) -> (B*V,3,H,W), views of one image adjacent."""
    if mode == "single":
        return pixels
    views = [pixels, pixels.flip(-1), pixels.flip(-2), pixels.flip(-1).flip(-2)]
    return torch.stack(views, 1).flatten(0, 1)


def n_views(mode: str) -> int:
    return {"single": 1, "flip2": 2, "flip4": 4}[mode]


# ----------------------------------------------------------------------------- training


def class_text_embeddings(
    text_proj: torch.nn.Module, prompt_feats: torch.Tensor, index: torch.Tensor, n_classes: int
) -> torch.Tensor:
    """Project prompt features, normalise, average per class, normalise: as models/scoring/zeroshot.py does."""
    z = F.normalize(text_proj(prompt_feats), dim=-1)
    sums = torch.zeros(n_classes, z.shape[1]).index_add_(0, index, z)
    return F.normalize(sums, dim=-1)


def fit(
    model: torch.nn.Module,
    top: TrainableTop,
    train_idx: np.ndarray,
    labels: np.ndarray,
    train_feats: torch.Tensor,
    caption_feats: torch.Tensor,
    prompt_feats: torch.Tensor,
    prompt_index: torch.Tensor,
    n_classes: int,
    cfg: TrainConfig,
    seed: int,
    desc: str,
    malignant: torch.Tensor | None = None,
    on_epoch: Callable[[int], None] | None = None,
) -> None:
    """Train the top blocks, both projections and the temperature in place; `on_epoch(epoch)` (1-based)
    runs after each epoch (a split-based run scores its validation split there)."""
    rng = np.random.default_rng(seed)
    torch.manual_seed(seed)
    proj_params = list(model.visual.head.parameters()) + list(model.text.proj.parameters()) + [model.logit_scale]
    top_params = [p for n, p in top.named_parameters() if not n.startswith("head.") and p.requires_grad]
    opt = torch.optim.AdamW(
        [{"params": top_params, "lr": cfg.lr_top}, {"params": proj_params, "lr": cfg.lr_proj}],
        weight_decay=cfg.weight_decay,
    )
    y = labels[train_idx]
    counts = np.bincount(y, minlength=n_classes).astype(float)
    weights = counts[y] ** -cfg.sampling_power
    weights /= weights.sum()
    sampled_prior = np.bincount(y, weights=weights, minlength=n_classes)
    adjust = torch.as_tensor(cfg.logit_adjust * np.log(np.maximum(sampled_prior, 1e-8)), dtype=torch.float32)
    steps_per_epoch = max(1, len(train_idx) // cfg.batch_size)
    total = steps_per_epoch * cfg.epochs
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=[cfg.lr_top, cfg.lr_proj], total_steps=total, pct_start=0.1)
    n_caps = caption_feats.shape[1]
    top.eval()  # BN statistics stay ImageNet's: too few photos to re-estimate them
    for epoch in tqdm(range(cfg.epochs), desc=desc, unit="epoch", leave=False):
        if epoch and on_epoch is not None:
            on_epoch(epoch)
            top.eval()
        for _ in range(steps_per_epoch):
            pick = rng.choice(len(train_idx), size=cfg.batch_size, p=weights)
            idx = train_idx[pick]
            view = rng.integers(0, train_feats.shape[1], size=len(idx))
            cap = rng.integers(0, n_caps, size=len(idx))
            feats = train_feats[idx, view].float()
            img = F.normalize(top(feats, dropout=cfg.feature_dropout), dim=-1)
            scale = model.logit_scale.exp().clamp(max=100)
            cls_emb = class_text_embeddings(model.text.proj, prompt_feats, prompt_index, n_classes)
            logits = scale * img @ cls_emb.T + adjust
            target_cls = torch.as_tensor(labels[idx])
            loss = F.cross_entropy(logits, target_cls)
            if cfg.malignant_weight > 0 and malignant is not None:
                log_odds = logits[:, malignant].logsumexp(1) - logits[:, ~malignant].logsumexp(1)
                loss = loss + cfg.malignant_weight * F.binary_cross_entropy_with_logits(
                    log_odds, malignant[target_cls].float()
                )
            if cfg.clip_weight > 0:
                txt = F.normalize(model.text.proj(caption_feats[idx, cap]), dim=-1)
                logits = scale * img @ txt.T
                same = torch.as_tensor(idx[:, None] == idx[None, :]) & ~torch.eye(len(idx), dtype=torch.bool)
                logits = logits.masked_fill(same, -1e4)  # a photo drawn twice is no negative of itself
                target = torch.arange(len(idx))
                loss = (
                    loss + cfg.clip_weight * (F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target)) / 2
                )
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
    if on_epoch is not None:
        on_epoch(cfg.epochs)


@torch.inference_mode()
def predict_tta(
    model: torch.nn.Module,
    top: TrainableTop,
    tta_feats: torch.Tensor,
    prompt_feats: torch.Tensor,
    prompt_index: torch.Tensor,
    n_classes: int,
) -> dict[str, np.ndarray]:
    cls_emb = class_text_embeddings(model.text.proj, prompt_feats, prompt_index, n_classes)
    scale = model.logit_scale.exp().clamp(max=100)
    n, v = tta_feats.shape[:2]
    emb = F.normalize(top(tta_feats.flatten(0, 1).float()), dim=-1).view(n, v, -1)
    out = {}
    for mode in TTA_MODES:
        e = F.normalize(emb[:, : n_views(mode)].mean(1), dim=-1)
        out[mode] = torch.softmax(scale * e @ cls_emb.T, dim=-1).numpy()
    return out
