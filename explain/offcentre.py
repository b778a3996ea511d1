"""Heatmaps on off-centre composites: pointing game, energy in the box, deletion / insertion (offline).

Each development photo becomes one composite (`explain.composites`: its lesion region pasted at a
random place on its own skin), so the evidence is known to lie in the pasted box and "the centre"
is no longer a free answer. Per composite and per map (each method, `random`, `center`):

* pointing game (Zhang et al. 2016): a hit when the map's maximum, upsampled bilinearly to the
  model's input pixels, falls inside the pasted box (no tolerance margin; ties: the first pixel
  in raster order);
* energy in the box (Wang et al. 2020, Score-CAM's "energy-based pointing game"): the share of
  the upsampled map's total inside the box;
* deletion / insertion AUC as on the ordinary photos (`explain.faithfulness`), except what a removed
  pixel becomes: by default (`baseline="background"`) the composite's own lesion-free canvas, so
  removing the box removes the lesion and removing skin changes nothing. Blurring (`"blur"`)
  leaves a lesion-coloured blob where the box was (a smooth brown blob still reads as a nevus)
  and lowers the score wherever skin texture is blurred, so on composites it could not rank even
  the known-answer order (`box`) clearly above the centre (explain/README.md).

Target: the composite's top predicted class over the folder's labels. The references show what a
map gets for free: `center` hits whenever the box covers the centre, `random` by chance; `box`
(curves only) is the order that is right by construction: the ceiling, and the check that the
curves can tell a map on the lesion from one on the middle.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from PIL import Image
from pydantic import BaseModel, Field

from explain.composites import Composite, CompositeConfig, box_map, box_mask, composite_rng, make_composite
from explain.faithfulness import (
    REFERENCES,
    FaithfulnessConfig,
    FaithfulnessReport,
    Scorer,
    auc,
    baseline_image,
    better,
    curve_targets,
    dataset_labels,
    evenly_spaced,
    map_curves,
    saliency_fn,
    saliency_maps,
    target_lines,
)
from explain.gradcam import DEFAULT_METHOD, get_method
from models.backends.base import ImageTextModel
from models.fitting.datasets import LabelledImage, load_labelled_folder
from models.knowledge.taxonomy import Taxonomy
from models.photos import load_photo
from models.scoring.zeroshot import LabelSet

Half = Literal["all", "a", "b"]
CURVE_REFERENCES = (*REFERENCES, "box")
POINTING_TARGET = 0.92


def pointing_hit(saliency: torch.Tensor | np.ndarray, mask: np.ndarray) -> bool:
    """Is the map's maximum (first in raster order on ties) inside the mask?"""
    values = np.asarray(saliency, dtype=np.float64)
    y, x = np.unravel_index(int(values.argmax()), values.shape)
    return bool(mask[y, x])


def energy_in_box(saliency: torch.Tensor | np.ndarray, mask: np.ndarray) -> float:
    """Share of the (non-negative) map's total inside the mask; 0 for an all-zero map."""
    values = np.clip(np.asarray(saliency, dtype=np.float64), 0, None)
    total = values.sum()
    return float(values[mask].sum() / total) if total > 0 else 0.0


class OffcentreReport(BaseModel):
    """Pointing game, energy and curve AUCs per map over `n` composites."""

    method: str
    n: int
    pointing_game: dict[str, float]
    energy_in_box: dict[str, float]
    deletion_auc: dict[str, float] = Field(default_factory=dict)
    insertion_auc: dict[str, float] = Field(default_factory=dict)
    curves: FaithfulnessReport | None = Field(default=None, exclude=True)
    settings: dict[str, str | int | float] = Field(default_factory=dict, exclude=True)

    def summary(self) -> dict[str, object]:
        return {"layout": "offcentre", **self.model_dump(), "targets": self.targets()}

    def targets(self) -> dict[str, bool]:
        """Issue 17's targets on composites: pointing game >= 0.92, deletion and insertion both
        better than random and centre (curves only where measured)."""
        out = {f"pointing game >= {POINTING_TARGET}": self.pointing_game[self.method] >= POINTING_TARGET}
        if self.deletion_auc:
            out |= curve_targets(self.method, self.deletion_auc, self.insertion_auc)
        return out

    def curves_can_tell(self) -> bool | None:
        """Does the known-answer order (`box`) beat the centre on both curves? If not, the curves
        cannot tell a map on the lesion from one on the middle, whatever the map."""
        if "box" not in self.deletion_auc:
            return None
        d, i = self.deletion_auc, self.insertion_auc
        return better("deletion", d["box"], d["center"]) and better("insertion", i["box"], i["center"])

    def table(self) -> str:
        head = f"{'map':16s} {'pointing game':>14s} {'energy in box':>14s} {'deletion AUC':>13s} {'insertion AUC':>14s}"
        lines = [head]
        nan = float("nan")
        for name in dict.fromkeys([*self.pointing_game, *self.deletion_auc]):
            d, i = self.deletion_auc.get(name, nan), self.insertion_auc.get(name, nan)
            pg, e = self.pointing_game.get(name, nan), self.energy_in_box.get(name, nan)
            lines.append(f"{name:16s} {pg:14.3f} {e:14.3f} {d:13.4f} {i:14.4f}")
        if self.curves is not None:
            lines += self.curves.paired_lines()
        lines += target_lines(self.targets())
        if (check := self.curves_can_tell()) is not None:
            verdict = "yes" if check else "NO"
            lines.append(f"check: the pasted box's own order beats the centre on both curves: {verdict}")
        return "\n".join(lines)


def evaluate_offcentre(
    model: ImageTextModel,
    photos: Sequence[tuple[int, Callable[[], Image.Image]]],
    labels: LabelSet,
    *,
    method: str = DEFAULT_METHOD,
    compare: Sequence[str] = (),
    config: FaithfulnessConfig | None = None,
    composites: CompositeConfig | None = None,
    curves: bool = True,
    log: Callable[[str], None] | None = None,
) -> OffcentreReport:
    """`photos`: (composite index, loader) pairs; the index seeds the composite, so one photo's
    composite does not depend on which others are measured. `curves=False`: pointing game and
    energy only (one forward and backward per composite and method). Removed pixels:
    `config.baseline`, by default the composite's lesion-free canvas."""
    config = config or FaithfulnessConfig(baseline="background")
    composites = composites or CompositeConfig(seed=config.seed)
    names = [method, *(m for m in dict.fromkeys(compare) if m != method)]
    fns = {name: saliency_fn(get_method(name)(model), labels) for name in names}
    scorer = Scorer(model, labels)
    hits: dict[str, list[float]] = {}
    energy: dict[str, list[float]] = {}
    deletion: dict[str, list[float]] = {}
    insertion: dict[str, list[float]] = {}
    t0 = time.perf_counter()
    for done, (index, load) in enumerate(photos, start=1):
        comp = make_composite(load(), model.preprocessing, composite_rng(composites.seed, index), composites)
        maps, curve = _one_composite(model, comp, fns, scorer, index, config, curves)
        mask = box_mask(comp.input_box, model.preprocessing.image_size)
        for name, saliency in maps.items():
            if name == "box":
                continue
            hits.setdefault(name, []).append(float(pointing_hit(saliency, mask)))
            energy.setdefault(name, []).append(energy_in_box(saliency, mask))
        for name, (d, i) in curve.items():
            deletion.setdefault(name, []).append(auc(d))
            insertion.setdefault(name, []).append(auc(i))
        if log and (done % 10 == 0 or done == len(photos)):
            rate = (time.perf_counter() - t0) / done
            log(f"{done}/{len(photos)} composites, {rate:.2f} s each, ~{rate * (len(photos) - done):.0f} s left")
    keys = [*names, *REFERENCES]
    curve_keys = [*names, *CURVE_REFERENCES]
    return OffcentreReport(
        method=method,
        n=len(photos),
        pointing_game={k: _mean(hits[k]) for k in keys},
        energy_in_box={k: _mean(energy[k]) for k in keys},
        deletion_auc={k: _mean(deletion[k]) for k in curve_keys if k in deletion},
        insertion_auc={k: _mean(insertion[k]) for k in curve_keys if k in insertion},
        curves=_curves_report(method, len(photos), curve_keys, deletion, insertion) if curves else None,
        settings={
            "steps": config.steps,
            "baseline": config.baseline,
            "seed": config.seed,
            "lesion_fraction": composites.lesion_fraction,
            "scale": f"{composites.scale[0]}-{composites.scale[1]}",
            "seconds": round(time.perf_counter() - t0, 1),
        },
    )


def _one_composite(
    model: ImageTextModel,
    comp: Composite,
    fns: dict[str, Callable[[torch.Tensor, int], torch.Tensor]],
    scorer: Scorer,
    index: int,
    config: FaithfulnessConfig,
    curves: bool,
) -> tuple[dict[str, torch.Tensor], dict[str, tuple[np.ndarray, np.ndarray]]]:
    pixels = model.preprocessing.batch([comp.image])
    target = int(scorer(pixels)[0].argmax())
    gen = torch.Generator().manual_seed(config.seed * 1_000_003 + index)
    maps = saliency_maps(pixels, target, fns, gen, config)
    if not curves:
        return maps, {}
    maps["box"] = torch.from_numpy(box_map(comp.input_box, pixels.shape[-1])).float()
    if config.baseline == "background":
        base = model.preprocessing.batch([comp.background])
    else:
        base = baseline_image(pixels, config.baseline)
    return maps, map_curves(scorer, pixels, maps, target, gen, config, base)


def _curves_report(
    method: str, n: int, keys: list[str], deletion: dict[str, list[float]], insertion: dict[str, list[float]]
) -> FaithfulnessReport:
    return FaithfulnessReport(
        method=method,
        n=n,
        references=CURVE_REFERENCES,
        deletion_auc={k: _mean(deletion[k]) for k in keys},
        insertion_auc={k: _mean(insertion[k]) for k in keys},
        per_image={"deletion": deletion, "insertion": insertion},
    )


def _mean(values: list[float]) -> float:
    return round(float(np.mean(values)), 4) if values else float("nan")


def indexed_photos(
    data_dir: str | Path,
    taxonomy: Taxonomy,
    *,
    limit: int | None,
    half: Half,
    loader: Callable[[Path], Image.Image],
) -> tuple[list[LabelledImage], list[tuple[int, Callable[[], Image.Image]]]]:
    """The folder's photos, `limit` evenly spaced, then one interleaved half of them (`a`: positions
    0, 2, 4, ...; `b`: 1, 3, 5, ...; `all`), each with its position in the evenly spaced list (the
    composite's index, so a photo gets the same composite in a half as in the whole)."""
    items = load_labelled_folder(data_dir, taxonomy)
    chosen = list(enumerate(evenly_spaced(items, limit)))
    if half != "all":
        chosen = chosen[(0 if half == "a" else 1) :: 2]
    return items, [(i, (lambda p=item.path: loader(p))) for i, item in chosen]


def offcentre_on_folder(
    model: ImageTextModel,
    data_dir: str | Path,
    taxonomy: Taxonomy,
    *,
    method: str = DEFAULT_METHOD,
    compare: Sequence[str] = (),
    limit: int | None = None,
    half: Half = "all",
    config: FaithfulnessConfig | None = None,
    curves: bool = True,
    loader: Callable[[Path], Image.Image] = load_photo,
    log: Callable[[str], None] | None = None,
) -> OffcentreReport:
    """`evaluate_offcentre` on composites of a labelled folder's photos (labels: the folder's classes)."""
    items, photos = indexed_photos(data_dir, taxonomy, limit=limit, half=half, loader=loader)
    labels = dataset_labels(model, taxonomy, sorted({i.condition_id for i in items}))
    report = evaluate_offcentre(
        model, photos, labels, method=method, compare=compare, config=config, curves=curves, log=log
    )
    report.settings.update(
        {
            "photos": f"{len(photos)} of {len(items)} (evenly spaced" + (f", half {half})" if half != "all" else ")"),
            "labels": ",".join(labels.ids),
            "model": model.artifacts.fingerprint,
        }
    )
    return report
