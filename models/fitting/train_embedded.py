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
from PIL import Image
from sklearn.model_selection import StratifiedGroupKFold
from torchvision.transforms import v2 as T
from tqdm import tqdm

from models.embedded.architecture import build_model, load_imagenet_trunk, load_preprocessing
from models.fitting.augment import train_augment
from models.fitting.captions import captions_for
from models.fitting.datasets import LabelledImage, load_labelled_folder
from models.fitting.embedded_steps import TTA_MODES, FrozenBottom, TrainableTop, fit, predict_tta, tta_views
from models.fitting.metrics import classification_report
from models.knowledge.taxonomy import Condition, Taxonomy, load_taxonomy
from models.photos import load_photo

log = logging.getLogger(__name__)

PRE_RESIZE = 300  # most PAD photos are 300 px copies: bring all to one scale so size is no feature


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
    # Share of augmented views given a synthetic dermatoscope vignette (dark outside a circle), so a
    # vignette stops being evidence for a class (ISIC 2017's vignetted test nevi scored +0.39 melanoma).
    vignette_augment: float = 0.0

    def fingerprint(self, extra: str = "") -> str:
        keys = ("seed", "unfrozen_blocks", "train_views") + (("vignette_augment",) if self.vignette_augment else ())
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


# ----------------------------------------------------------------------------- views and captions


def pre_resize(im: Image.Image) -> Image.Image:
    """A decoded photo at training's one scale: shortest side PRE_RESIZE px."""
    return T.functional.resize(im, PRE_RESIZE, interpolation=T.InterpolationMode.BICUBIC, antialias=True)


def _pre_resized(path: Path) -> Image.Image:
    return pre_resize(load_photo(path))


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
    items: Sequence[LabelledImage],
    bottom: FrozenBottom,
    cfg: TrainConfig,
    cache_dir: Path | None,
    *,
    views: int | None = None,
    ratio: tuple[float, float] | None = None,
    tta: bool = True,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(N, V, C, h, w) augmented-view and (N, 4, C, h, w) TTA-view activations of the frozen bottom, fp16.

    The test-time views use the served preprocessing, centre crop included: `crop_pct` 0.8 (the
    central 80 % of the shortest side) matches the scale of the random zoomed training crops
    and raised CV malignant AUROC from 0.842 to 0.856 (models/embedded/MODEL_CARD.md)."""
    served = load_preprocessing()  # test-time views exactly as the service makes them
    views = cfg.train_views if views is None else views
    default = views == cfg.train_views and ratio is None and tta
    extra = "" if default else f"|views={views}|ratio={ratio}|tta={tta}"  # PAD's key is unchanged
    key = cfg.fingerprint(repr(served) + "|".join(i.stem for i in items) + extra)
    path = cache_dir / f"features-{key}.pt" if cache_dir else None
    if path and path.exists():
        blob = torch.load(path, weights_only=True)
        return blob["train"], blob["tta"]
    torch.manual_seed(cfg.seed)
    aug = train_augment(served.image_size, ratio or (0.8, 1.25), cfg.vignette_augment)
    train_feats, tta_feats = [], []
    for item in tqdm(items, desc="caching frozen features", unit="img", mininterval=30):
        im = _pre_resized(item.path)
        batch = [aug(im) for _ in range(views)] + (list(tta_views(served(im)[None], "flip4")) if tta else [])
        out = bottom(torch.stack(batch)).half()
        train_feats.append(out[:views])
        tta_feats.append(out[views:])
    train_t, tta_t = torch.stack(train_feats), torch.stack(tta_feats)
    if path:
        path.parent.mkdir(parents=True, exist_ok=True)
        torch.save({"train": train_t, "tta": tta_t}, path)
    return train_t, tta_t


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


@dataclass
class TrainingRun:
    """What every fit of one run shares: the model, its trainable top, labels, cached features."""

    model: torch.nn.Module
    top: TrainableTop
    labels: np.ndarray
    groups: np.ndarray
    train_feats: torch.Tensor
    tta_feats: torch.Tensor
    caption_feats: torch.Tensor
    prompt_feats: torch.Tensor
    prompt_index: torch.Tensor
    malignant: torch.Tensor  # (n_classes,) bool
    initial: dict[str, torch.Tensor]  # the state every fit starts from
    tta_offset: int = 0  # tta_feats[i] belongs to item i + tta_offset (split runs cache no train TTA views)

    @property
    def n_classes(self) -> int:
        return len(self.malignant)

    def fit(
        self,
        train_idx: np.ndarray,
        cfg: TrainConfig,
        seed: int,
        desc: str,
        on_epoch: Callable[[int], None] | None = None,
    ) -> None:
        """Reset to the initial weights, then train on `train_idx` (`on_epoch` as in embedded_steps.fit)."""
        self.model.load_state_dict(self.initial, strict=False)
        fit(
            self.model,
            self.top,
            train_idx,
            self.labels,
            self.train_feats,
            self.caption_feats,
            self.prompt_feats,
            self.prompt_index,
            self.n_classes,
            cfg,
            seed,
            desc,
            self.malignant,
            on_epoch,
        )

    def predict(self, idx: np.ndarray) -> dict[str, np.ndarray]:
        return predict_tta(
            self.model,
            self.top,
            self.tta_feats[idx - self.tta_offset],
            self.prompt_feats,
            self.prompt_index,
            self.n_classes,
        )


def _towers(cfg: TrainConfig) -> tuple[torch.nn.Module, Callable, FrozenBottom, TrainableTop]:
    """The model with ImageNet weights in its trunk, all frozen but the top blocks and projections."""
    model, tokenizer = build_model()
    load_imagenet_trunk(model)
    for p in model.parameters():
        p.requires_grad_(False)
    bottom = FrozenBottom(model.visual.trunk, cfg.unfrozen_blocks).eval()
    top = TrainableTop(model.visual, cfg.unfrozen_blocks)
    for p in list(top.parameters()) + list(model.text.proj.parameters()) + [model.logit_scale]:
        p.requires_grad_(True)
    return model, tokenizer, bottom, top


def _text_features(
    model: torch.nn.Module,
    tokenizer: Callable,
    items: Sequence[LabelledImage],
    conditions: Sequence[Condition],
    taxonomy: Taxonomy,
    cfg: TrainConfig,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Frozen text features: (N, captions, D) captions, the class prompts and each prompt's class."""
    rng = random.Random(cfg.seed)
    captions = [captions_for(it, taxonomy, cfg.captions_per_image, rng, cfg.modality) for it in items]
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
    return caption_feats, pooled_text(model, tokenizer, prompts), torch.tensor(index)


def prepare_run(
    items: Sequence[LabelledImage],
    class_ids: list[str],
    taxonomy: Taxonomy,
    cfg: TrainConfig,
    cache_dir: Path | None,
    *,
    n_train: int | None = None,
    ratio: tuple[float, float] | None = None,
) -> TrainingRun:
    """Model, cached features and text features of one run. With `n_train`, only the first `n_train`
    items (the training split) get augmented views; the rest (validation, test) only test-time views."""
    conditions = [taxonomy.get(c) for c in class_ids]
    model, tokenizer, bottom, top = _towers(cfg)
    if n_train is None:
        train_feats, tta_feats = cache_image_features(items, bottom, cfg, cache_dir, ratio=ratio)
    else:
        train_feats, _ = cache_image_features(items[:n_train], bottom, cfg, cache_dir, ratio=ratio, tta=False)
        _, tta_feats = cache_image_features(items[n_train:], bottom, cfg, cache_dir, views=0)
    caption_feats, prompt_feats, prompt_index = _text_features(model, tokenizer, items, conditions, taxonomy, cfg)
    initial = deepcopy({k: v.clone() for k, v in model.state_dict().items() if not k.startswith("text.transformer.")})
    return TrainingRun(
        model=model,
        top=top,
        labels=np.array([class_ids.index(i.condition_id) for i in items]),
        groups=np.array([i.group for i in items]),
        train_feats=train_feats,
        tta_feats=tta_feats,
        caption_feats=caption_feats,
        prompt_feats=prompt_feats,
        prompt_index=prompt_index,
        malignant=torch.tensor([c.malignant for c in conditions]),
        initial=initial,
        tta_offset=n_train or 0,
    )


def _cross_validate(
    run: TrainingRun, items: Sequence[LabelledImage], result: TrainResult, cfg: TrainConfig, t0: float
) -> None:
    """Patient-grouped CV: out-of-fold probabilities, fold ids and reports into `result`."""
    labels, groups = run.labels, run.groups
    oof = {m: np.zeros((len(items), run.n_classes)) for m in TTA_MODES}
    splitter = StratifiedGroupKFold(n_splits=cfg.folds, shuffle=True, random_state=cfg.seed)
    for fold, (tr, te) in enumerate(splitter.split(np.zeros(len(labels)), labels, groups)):
        assert not set(groups[tr]) & set(groups[te]), "a patient in both train and test"
        run.fit(tr, cfg, cfg.seed + fold, f"fold {fold + 1}/{cfg.folds}")
        probs = run.predict(te)
        for m in TTA_MODES:
            oof[m][te] = probs[m]
        for i in te:
            result.folds[i] = fold
        fold_acc = float((probs["flip4"].argmax(1) == labels[te]).mean())
        log.info("fold %d: accuracy %.3f (%.0f s)", fold + 1, fold_acc, time.time() - t0)
    fitz = [i.fitzpatrick for i in items]
    result.oof_probs = oof
    malignant = run.malignant.tolist()
    result.reports = {m: classification_report(oof[m], labels, result.class_ids, malignant, fitz) for m in TTA_MODES}


def start_run(cfg: TrainConfig) -> float:
    """Threads and every random seed set from `cfg`; returns the start time (time.time())."""
    torch.set_num_threads(cfg.threads)
    random.seed(cfg.seed)
    np.random.seed(cfg.seed)
    torch.manual_seed(cfg.seed)
    return time.time()


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
    t0 = start_run(cfg)
    taxonomy = taxonomy or load_taxonomy()
    items = load_labelled_folder(data_dir, taxonomy)
    class_ids = sorted({i.condition_id for i in items})
    run = prepare_run(items, class_ids, taxonomy, cfg, cache_dir)
    result = TrainResult(
        class_ids=class_ids,
        image_ids=[i.stem for i in items],
        groups=run.groups.tolist(),
        labels=[i.condition_id for i in items],
        folds=[-1] * len(items),
    )
    if cross_validate:
        _cross_validate(run, items, result, cfg, t0)
    if not final_fit:
        result.seconds = time.time() - t0
        return result

    run.fit(np.arange(len(items)), cfg, cfg.seed + 100, "final fit")
    result.state_dict = {
        k: v.detach().clone() for k, v in run.model.state_dict().items() if not k.startswith("text.transformer.")
    }
    result.seconds = time.time() - t0
    result.reports["config"] = asdict(cfg)  # type: ignore[assignment]
    return result
