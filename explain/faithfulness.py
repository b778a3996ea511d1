"""Do the heatmaps point at what the model uses? Deletion and insertion AUC (Petsiuk et al., RISE 2018).

For each photo: the model's preprocessed input (the centre crop the heatmap covers), the target
condition (default: the photo's top predicted class; or its true label), and a saliency map
upsampled to the input's pixels. Pixels are ranked by the map (ties broken by a fixed random
order, so flat regions are not removed in raster order) and, in `steps` equal steps,

* deletion: the top-ranked pixels are replaced by the baseline image; the target's probability
  should fall fast (lower AUC is better);
* insertion: starting from the baseline image, the top-ranked pixels are revealed; the
  probability should rise fast (higher AUC is better).

Baseline image: a strong Gaussian blur of the input (sigma = input size / 16, ~14 px at 224;
removes shape and texture, keeps the colour context so the perturbed photos stay photo-like) or,
with `baseline="mean"`, the input's mean colour; on off-centre composites also
`baseline="background"`, the composite without its lesion (`explain.offcentre`). Probability: the
softmax over the label set (the dataset's classes) at the model's logit scale, from a single view
(`encode_image(grad=True)` under inference mode): the view the heatmap was computed on, without the
served flip averaging.

Two reference maps at the same upsampling: `random` (a uniform random grid of the heatmap's own
resolution, seeded per photo, so the comparison is like for like in smoothness) and `center`
(a centred Gaussian, sigma = 1/4 of the side: lesion photos are usually centred). All steps of
one curve pair (2 x (steps + 1) images) run as one batch.
"""

from __future__ import annotations

import math
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from pydantic import BaseModel, Field
from torchvision.transforms.v2 import functional as TF

from explain.gradcam import DEFAULT_METHOD, BaseCAM, SimilarityTarget, get_method
from models.backends.base import ImageTextModel
from models.fitting.datasets import LabelledImage, load_labelled_folder
from models.knowledge.taxonomy import Modality, Taxonomy
from models.photos import load_photo
from models.scoring.zeroshot import LabelSet, ensemble_embedding

REFERENCES = ("random", "center")
Baseline = Literal["blur", "mean", "background"]
Curve = Literal["deletion", "insertion"]
TargetChoice = Literal["predicted", "label"]


@dataclass(frozen=True)
class FaithfulnessConfig:
    steps: int = 16
    baseline: Baseline = "blur"
    target: TargetChoice = "predicted"
    seed: int = 0
    center_sigma: float = 0.25  # of the input side


class FaithfulnessReport(BaseModel):
    """Mean AUCs per map over `n` photos; `per_image` keeps the paired values for statistics."""

    method: str
    n: int
    deletion_auc: dict[str, float]
    insertion_auc: dict[str, float]
    references: tuple[str, ...] = REFERENCES
    per_image: dict[str, dict[str, list[float]]] = Field(default_factory=dict, exclude=True)
    settings: dict[str, str | int | float] = Field(default_factory=dict, exclude=True)

    def summary(self) -> dict[str, object]:
        """The one JSON object the command prints."""
        return {
            "method": self.method,
            "n": self.n,
            "deletion_auc": {k: self.deletion_auc[k] for k in (self.method, *self.references)},
            "insertion_auc": {k: self.insertion_auc[k] for k in (self.method, *self.references)},
            "targets": self.targets(),
        }

    def targets(self) -> dict[str, bool]:
        """The ordinary photos' targets (issue 17): insertion better than both references, deletion
        better than random (on centred close-ups the centre is as good a deletion order)."""
        return curve_targets(self.method, self.deletion_auc, self.insertion_auc, deletion_refs=("random",))

    def paired(self, curve: Curve, reference: str, method: str | None = None) -> dict[str, float]:
        """Method minus reference, per photo: mean, 95 % normal-approximation half-width, share of wins."""
        a = np.asarray(self.per_image[curve][method or self.method])
        b = np.asarray(self.per_image[curve][reference])
        diff = a - b
        half = 1.96 * diff.std(ddof=1) / math.sqrt(len(diff)) if len(diff) > 1 else float("nan")
        wins = (diff < 0).mean() if curve == "deletion" else (diff > 0).mean()
        return {"mean_diff": float(diff.mean()), "ci95": float(half), "win_rate": float(wins)}

    def table(self) -> str:
        lines = [
            f"{'map':12s} {'deletion AUC (lower better)':>28s} {'insertion AUC (higher better)':>30s}",
        ]
        for name in self.deletion_auc:
            lines.append(f"{name:12s} {self.deletion_auc[name]:28.4f} {self.insertion_auc[name]:30.4f}")
        lines += self.paired_lines()
        lines += target_lines(self.targets())
        return "\n".join(lines)

    def paired_lines(self) -> list[str]:
        """Each method against each reference and against the main method, mean ± 95 % CI."""
        if not self.per_image or self.n < 2:
            return []
        lines = ["paired differences (method - other), mean ± 95% CI:"]
        methods = [k for k in self.deletion_auc if k not in self.references]
        pairs = [(m, ref) for m in methods for ref in self.references]
        pairs += [(self.method, m) for m in methods if m != self.method]
        for name, ref in pairs:
            d, i = self.paired("deletion", ref, name), self.paired("insertion", ref, name)
            lines.append(
                f"  {name} vs {ref}: deletion {d['mean_diff']:+.4f} ± {d['ci95']:.4f} "
                f"(better on {d['win_rate']:.0%} of photos), insertion {i['mean_diff']:+.4f} ± {i['ci95']:.4f} "
                f"(better on {i['win_rate']:.0%})"
            )
        return lines


def target_lines(targets: dict[str, bool]) -> list[str]:
    return [f"target: {name}: {'met' if ok else 'NOT met'}" for name, ok in targets.items()]


def better(curve: Curve, value: float, reference: float) -> bool:
    """Is `value` the better AUC? Deletion: lower (the score falls sooner); insertion: higher."""
    return value < reference if curve == "deletion" else value > reference


def curve_targets(
    method: str,
    deletion: dict[str, float],
    insertion: dict[str, float],
    *,
    deletion_refs: Sequence[str] = REFERENCES,
    insertion_refs: Sequence[str] = REFERENCES,
) -> dict[str, bool]:
    """`{"deletion better than random": True, ...}`: the method's mean AUC against each reference's."""
    out = {f"deletion better than {r}": better("deletion", deletion[method], deletion[r]) for r in deletion_refs}
    out |= {f"insertion better than {r}": better("insertion", insertion[method], insertion[r]) for r in insertion_refs}
    return out


# --- maps, ranks, curves ---------------------------------------------------------------------


def upsample(grid: torch.Tensor, size: int) -> torch.Tensor:
    """(h, w) grid -> (size, size), bilinear, cell centres on pixel centres (as the overlay does)."""
    return F.interpolate(grid[None, None].float(), size=(size, size), mode="bilinear", align_corners=False)[0, 0]


def random_map(grid_shape: tuple[int, int], size: int, generator: torch.Generator) -> torch.Tensor:
    return upsample(torch.rand(grid_shape, generator=generator), size)


def center_map(size: int, sigma: float = 0.25) -> torch.Tensor:
    c = (torch.arange(size, dtype=torch.float32) + 0.5) / size - 0.5
    r2 = c[None, :] ** 2 + c[:, None] ** 2
    return torch.exp(-r2 / (2 * sigma**2))


def ranks(saliency: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Each pixel's position in descending saliency (0 = most salient); ties in a fixed random order."""
    flat = saliency.flatten()
    perm = torch.randperm(flat.numel(), generator=generator)
    order = perm[torch.argsort(flat[perm], descending=True, stable=True)]
    out = torch.empty_like(order)
    out[order] = torch.arange(order.numel())
    return out.view_as(saliency)


def baseline_image(pixels: torch.Tensor, kind: Baseline) -> torch.Tensor:
    """The 'removed' version of the (1, 3, S, S) input: strong blur or the mean colour."""
    if kind == "background":
        raise ValueError("the background baseline exists only for composites (--layout offcentre)")
    if kind == "mean":
        return pixels.mean(dim=(2, 3), keepdim=True).expand_as(pixels).clone()
    sigma = pixels.shape[-1] / 16
    kernel = int(2 * math.ceil(3 * sigma) + 1)
    return TF.gaussian_blur(pixels, kernel_size=[kernel, kernel], sigma=[sigma, sigma])


def perturbed_batch(
    pixels: torch.Tensor, base: torch.Tensor, rank: torch.Tensor, steps: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Deletion and insertion inputs, (steps + 1, 3, S, S) each, for fractions 0, 1/steps, ..., 1."""
    n = rank.numel()
    counts = torch.tensor([round(k * n / steps) for k in range(steps + 1)])
    masks = (rank[None] < counts[:, None, None]).unsqueeze(1).to(pixels.dtype)  # (steps+1, 1, S, S)
    deletion = pixels * (1 - masks) + base * masks
    insertion = base * (1 - masks) + pixels * masks
    return deletion, insertion


def auc(curve: Sequence[float] | np.ndarray) -> float:
    """Trapezoidal area under a curve sampled at equal steps over [0, 1]."""
    y = np.asarray(curve, dtype=np.float64)
    return float(((y[:-1] + y[1:]) / 2).mean())


class Scorer:
    """Target probabilities of a batch from one view, without autograd."""

    def __init__(self, model: ImageTextModel, labels: LabelSet) -> None:
        self.model = model
        self.text = labels.embeddings.to(model.device)

    def __call__(self, pixels: torch.Tensor) -> torch.Tensor:
        with torch.inference_mode():
            emb = self.model.encode_image(pixels.to(self.model.device), grad=True)
            return torch.softmax(self.model.logit_scale * emb @ self.text.T, dim=-1).cpu()


@dataclass
class _Curves:
    deletion: dict[str, list[float]] = field(default_factory=dict)
    insertion: dict[str, list[float]] = field(default_factory=dict)

    def add(self, name: str, deletion: float, insertion: float) -> None:
        self.deletion.setdefault(name, []).append(deletion)
        self.insertion.setdefault(name, []).append(insertion)


def photo_curves(
    model: ImageTextModel,
    photo: Image.Image,
    labels: LabelSet,
    saliency_fns: dict[str, Callable[[torch.Tensor, int], torch.Tensor]],
    *,
    label_index: int | None,
    config: FaithfulnessConfig,
    index: int,
    scorer: Scorer | None = None,
) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Deletion and insertion curves of one photo for each method and the two references.

    Each curve (steps + 1 inputs) is one batch: on a busy CPU, batches of ~17 run faster per
    image than one batch of all curves.
    """
    scorer = scorer or Scorer(model, labels)
    pixels = model.preprocessing.batch([photo.convert("RGB")])
    target = label_index if config.target == "label" and label_index is not None else int(scorer(pixels)[0].argmax())
    gen = torch.Generator().manual_seed(config.seed * 1_000_003 + index)
    maps = saliency_maps(pixels, target, saliency_fns, gen, config)
    return map_curves(scorer, pixels, maps, target, gen, config)


def saliency_maps(
    pixels: torch.Tensor,
    target: int,
    saliency_fns: dict[str, Callable[[torch.Tensor, int], torch.Tensor]],
    gen: torch.Generator,
    config: FaithfulnessConfig,
) -> dict[str, torch.Tensor]:
    """The references first (their random draws do not depend on the methods), then each method's
    map, all upsampled to the input's pixels; the random grid has the first method's resolution."""
    size = pixels.shape[-1]
    grids = {name: fn(pixels, target) for name, fn in saliency_fns.items()}
    grid_shape = tuple(next(iter(grids.values())).shape)
    maps = {"random": random_map(grid_shape, size, gen), "center": center_map(size, config.center_sigma)}
    maps.update({name: upsample(grid, size) for name, grid in grids.items()})
    return maps


def map_curves(
    scorer: Scorer,
    pixels: torch.Tensor,
    maps: dict[str, torch.Tensor],
    target: int,
    gen: torch.Generator,
    config: FaithfulnessConfig,
    base: torch.Tensor | None = None,
) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Deletion and insertion curves (target probability per step) for each map, in `maps` order;
    removed pixels become `base` (default: `config.baseline` made from the input)."""
    base = baseline_image(pixels, config.baseline) if base is None else base
    out = {}
    for name, saliency in maps.items():
        deletion, insertion = perturbed_batch(pixels, base, ranks(saliency, gen), config.steps)
        out[name] = (scorer(deletion)[:, target].numpy(), scorer(insertion)[:, target].numpy())
    return out


def evaluate_faithfulness(
    model: ImageTextModel,
    photos: Sequence[tuple[Callable[[], Image.Image], int | None]],
    labels: LabelSet,
    *,
    method: str = DEFAULT_METHOD,
    compare: Sequence[str] = (),
    config: FaithfulnessConfig | None = None,
    log: Callable[[str], None] | None = None,
) -> FaithfulnessReport:
    """Mean deletion / insertion AUC of `method` (and of the `compare` methods, on the same photos
    and the same reference curves) and of the two references over `photos`.

    `photos`: (loader, index of the true label in `labels` or None) pairs; loading is lazy so a
    large folder never sits in memory.
    """
    config = config or FaithfulnessConfig()
    names = [method, *(m for m in dict.fromkeys(compare) if m != method)]
    fns = {name: saliency_fn(get_method(name)(model), labels) for name in names}
    scorer = Scorer(model, labels)
    curves = _Curves()
    t0 = time.perf_counter()
    for i, (load, label_index) in enumerate(photos):
        result = photo_curves(
            model, load(), labels, fns, label_index=label_index, config=config, index=i, scorer=scorer
        )
        for name, (deletion, insertion) in result.items():
            curves.add(name, auc(deletion), auc(insertion))
        if log and ((i + 1) % 10 == 0 or i + 1 == len(photos)):
            rate = (time.perf_counter() - t0) / (i + 1)
            log(f"{i + 1}/{len(photos)} photos, {rate:.2f} s/photo, ~{rate * (len(photos) - i - 1):.0f} s left")
    keys = [*names, *REFERENCES]
    return FaithfulnessReport(
        method=method,
        n=len(photos),
        deletion_auc={k: round(float(np.mean(curves.deletion[k])), 4) for k in keys},
        insertion_auc={k: round(float(np.mean(curves.insertion[k])), 4) for k in keys},
        per_image={"deletion": curves.deletion, "insertion": curves.insertion},
        settings={
            "steps": config.steps,
            "baseline": config.baseline,
            "target": config.target,
            "seed": config.seed,
            "seconds": round(time.perf_counter() - t0, 1),
        },
    )


def saliency_fn(cam: BaseCAM, labels: LabelSet) -> Callable[[torch.Tensor, int], torch.Tensor]:
    def saliency(pixels: torch.Tensor, target: int) -> torch.Tensor:
        return cam(pixels, [SimilarityTarget(labels.embeddings[target])])[0, 0].cpu()

    return saliency


def evenly_spaced(items: Sequence[LabelledImage], limit: int | None) -> list[LabelledImage]:
    """A deterministic subset: `limit` photos evenly spaced through the folder's order (all if None)."""
    if limit is None or limit >= len(items):
        return list(items)
    return [items[(i * len(items)) // limit] for i in range(limit)]


def faithfulness_on_folder(
    model: ImageTextModel,
    data_dir: str | Path,
    taxonomy: Taxonomy,
    *,
    method: str = DEFAULT_METHOD,
    compare: Sequence[str] = (),
    limit: int | None = None,
    config: FaithfulnessConfig | None = None,
    loader: Callable[[Path], Image.Image] = load_photo,
    log: Callable[[str], None] | None = None,
) -> FaithfulnessReport:
    """Faithfulness on a labelled folder; the label set is the folder's own classes (zero-shot)."""
    items = load_labelled_folder(data_dir, taxonomy)
    labels = dataset_labels(model, taxonomy, sorted({i.condition_id for i in items}))
    chosen = evenly_spaced(items, limit)
    photos = [((lambda p=item.path: loader(p)), labels.ids.index(item.condition_id)) for item in chosen]
    report = evaluate_faithfulness(model, photos, labels, method=method, compare=compare, config=config, log=log)
    report.settings.update(
        {
            "photos": f"{len(chosen)} of {len(items)}" + ("" if len(chosen) == len(items) else " (evenly spaced)"),
            "labels": ",".join(labels.ids),
            "model": model.artifacts.fingerprint,
        }
    )
    return report


def dataset_labels(
    model: ImageTextModel, taxonomy: Taxonomy, condition_ids: Sequence[str], modality: Modality = "clinical"
) -> LabelSet:
    """The prompt-ensemble embeddings of just these conditions (what `ZeroShotClassifier` serves
    for them), without embedding the whole taxonomy first."""
    templates = taxonomy.templates_for(modality)
    rows = [ensemble_embedding(model, taxonomy.get(c).prompt_names, templates) for c in condition_ids]
    return LabelSet(tuple(condition_ids), torch.stack(rows))


def stderr_log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)
