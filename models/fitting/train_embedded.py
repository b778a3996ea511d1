"""Align EfficientNet-Lite0 and MiniLM CLIP-style on PAD-UFES-20, on a 2-core CPU.

Recipe (LiT with the top of the image tower unlocked):
- The text transformer is frozen (LiT); its pooled caption and prompt features are computed once.
- The image tower is frozen up to its last `unfrozen_blocks` blocks. Augmented views go through
  the frozen part once and are cached, so every fold (and the final fit) trains only the top
  blocks, the projections and the temperature on cached activations. This is what makes
  patient-grouped 5-fold CV plus a final fit take minutes, not hours, on this CPU.
- Loss: cross-entropy against the zero-shot class embeddings built exactly as at inference
  (prompt templates x names and synonyms, averaged; FLYP's "fine-tune like you pretrain"),
  logit-adjusted for the class prior (MEL and SCC are rare), plus an in-batch CLIP loss on
  captions made of the diagnosis and the lesion's clinical facts, so the text side learns more
  than six names; and a small auxiliary binary loss on the malignant-vs-benign log-odds (the
  summed MEL+BCC+SCC mass is what urgency and the malignant AUROC read).
- Test-time views: the served preprocessing (centre crop `crop_pct`, config.json) and 4 flips.
- Validation is patient-grouped (StratifiedGroupKFold on patient_id). `biopsed` is never read.
"""

from __future__ import annotations

import csv
import hashlib
import json
import logging
import random
import time
from collections.abc import Callable, Sequence
from copy import deepcopy
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from sklearn.model_selection import StratifiedGroupKFold
from torchvision.transforms import v2 as T
from tqdm import tqdm

from models.embedded.architecture import build_model, load_imagenet_trunk, load_preprocessing
from models.fitting.datasets import PAD_FLAG_COLUMNS, LabelledImage, load_labelled_folder
from models.fitting.metrics import classification_report
from models.knowledge.taxonomy import Taxonomy, load_taxonomy

log = logging.getLogger(__name__)

PRE_RESIZE = 300  # most PAD photos are 300 px copies: bring all to one scale so size is no feature
TTA_MODES = ("single", "flip4")


@dataclass
class TrainConfig:
    seed: int = 0
    folds: int = 5
    unfrozen_blocks: int = 3
    train_views: int = 8
    epochs: int = 25
    batch_size: int = 64
    lr_top: float = 3e-4
    lr_proj: float = 2e-3
    weight_decay: float = 0.05
    clip_weight: float = 0.5
    malignant_weight: float = 0.5  # auxiliary BCE on the malignant (MEL+BCC+SCC) vs benign log-odds
    # Natural sampling with logit-adjusted CE beat class-balanced resampling in CV (balanced
    # accuracy 0.549 vs 0.513): resampling 23 SCC photos mostly taught the model those photos.
    sampling_power: float = 0.0  # 1: class-balanced sampling, 0: natural frequencies
    logit_adjust: float = 1.0  # tau of logit-adjusted CE (Menon et al. 2021) against the sampled prior
    feature_dropout: float = 0.2
    captions_per_image: int = 4
    modality: str = "clinical"
    threads: int = 2

    def fingerprint(self, extra: str = "") -> str:
        keys = ("seed", "unfrozen_blocks", "train_views")
        blob = json.dumps({k: getattr(self, k) for k in keys}) + extra
        return hashlib.sha256(blob.encode()).hexdigest()[:16]


@dataclass
class TrainResult:
    class_ids: list[str]
    image_ids: list[str] = field(default_factory=list)
    groups: list[str] = field(default_factory=list)
    labels: list[str] = field(default_factory=list)
    folds: list[int] = field(default_factory=list)
    oof_probs: dict[str, np.ndarray] = field(default_factory=dict)
    reports: dict[str, dict[str, object]] = field(default_factory=dict)
    state_dict: dict[str, torch.Tensor] | None = None
    seconds: float = 0.0


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


# ----------------------------------------------------------------------------- views and captions


def train_augment(size: int = 224) -> Callable[[Image.Image], torch.Tensor]:
    return T.Compose(
        [
            T.ToImage(),
            T.RandomResizedCrop(size, scale=(0.35, 1.0), ratio=(0.8, 1.25), antialias=True),
            T.RandomHorizontalFlip(),
            T.RandomVerticalFlip(),
            T.RandomChoice([T.RandomRotation((a, a)) for a in (0, 90, 180, 270)]),
            T.ColorJitter(brightness=0.2, contrast=0.2, saturation=0.15, hue=0.02),
            T.ToDtype(torch.float32, scale=True),
            T.Normalize([0.5] * 3, [0.5] * 3),
        ]
    )


def tta_views(pixels: torch.Tensor, mode: str) -> torch.Tensor:
    """(B,3,H,W) -> (B*V,3,H,W), views of one image adjacent."""
    if mode == "single":
        return pixels
    views = [pixels, pixels.flip(-1), pixels.flip(-2), pixels.flip(-1).flip(-2)]
    return torch.stack(views, 1).flatten(0, 1)


def n_views(mode: str) -> int:
    return 1 if mode == "single" else 4


def _pre_resized(path: Path) -> Image.Image:
    with Image.open(path) as im:
        im = im.convert("RGB")
        return T.functional.resize(im, PRE_RESIZE, interpolation=T.InterpolationMode.BICUBIC, antialias=True)


def _truthy(value: str) -> bool | None:
    v = (value or "").strip().lower()
    return True if v == "true" else False if v == "false" else None


def captions_for(item: LabelledImage, taxonomy: Taxonomy, k: int, rng: random.Random) -> list[str]:
    """Captions from the diagnosis (name or a synonym) and the lesion's facts; missing facts are omitted."""
    cond = taxonomy.get(item.condition_id)
    names = cond.prompt_names
    kind = "malignant" if cond.malignant else ("precancerous" if cond.premalignant else "benign")
    m = item.metadata
    region = (m.get("region") or "").strip().lower().replace("_", " ")
    age = m.get("age", "").strip()
    sex = {"MALE": "man", "FEMALE": "woman"}.get((m.get("gender") or "").upper(), "person")
    facts = {
        "itch": "itches",
        "grew": "has grown",
        "hurt": "hurts",
        "changed": "has changed",
        "bleed": "bleeds",
        "elevation": "is raised",
    }
    said = [facts[c] for c in PAD_FLAG_COLUMNS if _truthy(m.get(c, "")) is True]
    out = []
    for i in range(k):
        name = names[0] if i == 0 else rng.choice(names)
        options = [f"a clinical photo of {name}, a {kind} skin lesion."]
        if region:
            who = f" of a {age}-year-old {sex}" if age else ""
            options.append(f"{name} on the {region}{who}.")
        if said:
            options.append(f"{name}; the lesion {', '.join(said)}.")
        out.append(options[i % len(options)] if i else f"{name}.")
    return out


# ----------------------------------------------------------------------------- feature caches


@torch.no_grad()  # not inference_mode: these tensors feed autograd later
def pooled_text(model: torch.nn.Module, tokenizer: Callable, texts: Sequence[str], batch: int = 128) -> torch.Tensor:
    """Frozen MiniLM mean-pooled features (before the trained projection)."""
    enc = model.text
    outs = []
    for i in range(0, len(texts), batch):
        ids = tokenizer(list(texts[i : i + batch]))
        mask = (ids != enc.config.pad_token_id).long()
        outs.append(enc.pooler(enc.transformer(input_ids=ids, attention_mask=mask), mask))
    return torch.cat(outs)


@torch.no_grad()
def cache_image_features(
    items: Sequence[LabelledImage], bottom: FrozenBottom, cfg: TrainConfig, cache_dir: Path | None
) -> tuple[torch.Tensor, torch.Tensor]:
    """(N, V, C, h, w) augmented-view and (N, 4, C, h, w) TTA-view activations of the frozen bottom, fp16.

    The test-time views use the served preprocessing, centre crop included: `crop_pct` 0.8 (the
    central 80 % of the shortest side) matches the scale of the random zoomed training crops
    and raised CV malignant AUROC from 0.842 to 0.856 (models/embedded/MODEL_CARD.md)."""
    served = load_preprocessing()  # test-time views exactly as the service makes them
    key = cfg.fingerprint(repr(served) + "|".join(i.stem for i in items))
    path = cache_dir / f"features-{key}.pt" if cache_dir else None
    if path and path.exists():
        blob = torch.load(path, weights_only=True)
        return blob["train"], blob["tta"]
    torch.manual_seed(cfg.seed)
    aug = train_augment(served.image_size)
    train_feats, tta_feats = [], []
    for item in tqdm(items, desc="caching frozen features", unit="img"):
        im = _pre_resized(item.path)
        views = torch.stack([aug(im) for _ in range(cfg.train_views)])
        tta = tta_views(served(im)[None], "flip4")
        out = bottom(torch.cat([views, tta])).half()
        train_feats.append(out[: cfg.train_views])
        tta_feats.append(out[cfg.train_views :])
    train_t, tta_t = torch.stack(train_feats), torch.stack(tta_feats)
    if path:
        path.parent.mkdir(parents=True, exist_ok=True)
        torch.save({"train": train_t, "tta": tta_t}, path)
    return train_t, tta_t


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
) -> None:
    """Train the top blocks, both projections and the temperature in place."""
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
    for _ in tqdm(range(cfg.epochs), desc=desc, unit="epoch", leave=False):
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


def write_oof_csv(result: TrainResult, mode: str, path: Path) -> None:
    """Out-of-fold image probabilities, so later stages (fusion, calibration) are fitted and judged
    without ever scoring a photo with weights that saw it. Ids and probabilities only: labels and
    patients stay in the dataset's own metadata.csv."""
    path.parent.mkdir(parents=True, exist_ok=True)
    probs = result.oof_probs[mode]
    with path.open("w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["image_id", "fold", *(f"p_{c}" for c in result.class_ids)])
        for i, image_id in enumerate(result.image_ids):
            writer.writerow([image_id, result.folds[i], *(f"{p:.6f}" for p in probs[i])])


def train_embedded(
    data_dir: Path,
    cfg: TrainConfig,
    *,
    cache_dir: Path | None = None,
    taxonomy: Taxonomy | None = None,
    cross_validate: bool = True,
    final_fit: bool = True,
) -> TrainResult:
    """Patient-grouped CV (out-of-fold predictions and figures), then a final fit on all photos."""
    t0 = time.time()
    torch.set_num_threads(cfg.threads)
    random.seed(cfg.seed)
    np.random.seed(cfg.seed)
    torch.manual_seed(cfg.seed)
    taxonomy = taxonomy or load_taxonomy()
    items = load_labelled_folder(data_dir, taxonomy)
    class_ids = sorted({i.condition_id for i in items})
    labels = np.array([class_ids.index(i.condition_id) for i in items])
    groups = np.array([i.group for i in items])
    conditions = [taxonomy.get(c) for c in class_ids]

    model, tokenizer = build_model()
    load_imagenet_trunk(model)
    for p in model.parameters():
        p.requires_grad_(False)
    bottom = FrozenBottom(model.visual.trunk, cfg.unfrozen_blocks).eval()
    top = TrainableTop(model.visual, cfg.unfrozen_blocks)
    for p in list(top.parameters()) + list(model.text.proj.parameters()) + [model.logit_scale]:
        p.requires_grad_(True)

    train_feats, tta_feats = cache_image_features(items, bottom, cfg, cache_dir)
    rng = random.Random(cfg.seed)
    captions = [captions_for(it, taxonomy, cfg.captions_per_image, rng) for it in items]
    caption_feats = pooled_text(model, tokenizer, [c for cs in captions for c in cs]).view(
        len(items), cfg.captions_per_image, -1
    )
    templates = taxonomy.templates_for(cfg.modality)  # type: ignore[arg-type]
    prompts, index = [], []
    for ci, cond in enumerate(conditions):
        for name in cond.prompt_names:
            for tpl in templates:
                prompts.append(tpl.format(name))
                index.append(ci)
    prompt_feats = pooled_text(model, tokenizer, prompts)
    prompt_index = torch.tensor(index)
    initial = deepcopy({k: v.clone() for k, v in model.state_dict().items() if not k.startswith("text.transformer.")})
    result = TrainResult(
        class_ids=class_ids,
        image_ids=[i.stem for i in items],
        groups=groups.tolist(),
        labels=[i.condition_id for i in items],
        folds=[-1] * len(items),
    )
    n_classes = len(class_ids)
    malignant = torch.tensor([c.malignant for c in conditions])

    if cross_validate:
        oof = {m: np.zeros((len(items), n_classes)) for m in TTA_MODES}
        splitter = StratifiedGroupKFold(n_splits=cfg.folds, shuffle=True, random_state=cfg.seed)
        for fold, (tr, te) in enumerate(splitter.split(np.zeros(len(labels)), labels, groups)):
            assert not set(groups[tr]) & set(groups[te]), "a patient in both train and test"
            model.load_state_dict(initial, strict=False)
            fit(
                model,
                top,
                tr,
                labels,
                train_feats,
                caption_feats,
                prompt_feats,
                prompt_index,
                n_classes,
                cfg,
                cfg.seed + fold,
                f"fold {fold + 1}/{cfg.folds}",
                malignant,
            )
            probs = predict_tta(model, top, tta_feats[te], prompt_feats, prompt_index, n_classes)
            for m in TTA_MODES:
                oof[m][te] = probs[m]
            for i in te:
                result.folds[i] = fold
            fold_acc = float((probs["flip4"].argmax(1) == labels[te]).mean())
            log.info("fold %d: accuracy %.3f (%.0f s)", fold + 1, fold_acc, time.time() - t0)
        fitz = [i.fitzpatrick for i in items]
        result.oof_probs = oof
        result.reports = {
            m: classification_report(oof[m], labels, class_ids, malignant.tolist(), fitz) for m in TTA_MODES
        }
    if not final_fit:
        result.seconds = time.time() - t0
        return result

    model.load_state_dict(initial, strict=False)
    fit(
        model,
        top,
        np.arange(len(items)),
        labels,
        train_feats,
        caption_feats,
        prompt_feats,
        prompt_index,
        n_classes,
        cfg,
        cfg.seed + 100,
        "final fit",
        malignant,
    )
    result.state_dict = {
        k: v.detach().clone() for k, v in model.state_dict().items() if not k.startswith("text.transformer.")
    }
    result.seconds = time.time() - t0
    result.reports["config"] = asdict(cfg)  # type: ignore[assignment]
    return result
