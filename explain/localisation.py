"""Do the heatmaps point at the lesion? Measured on real dermoscopic photos with expert lesion masks
(ISIC 2017 `test`, never trained on), beside the two reference maps (offline).

Per photo, target = the top predicted class over the three ISIC classes, maps upsampled to the
model's input pixels, the expert mask taken through the same resize and centre crop:
* energy in the mask: the share of the (non-negative) map's total inside the lesion;
* pointing game (Zhang et al. 2016): a hit when the map's maximum lies inside the lesion.
`random` gets about the lesion's share of the input for free, `center` hits whenever the lesion covers
the centre (most dermoscopic lesions do): a method earns credit only above both.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from explain.faithfulness import REFERENCES, FaithfulnessConfig, Scorer, saliency_fn, saliency_maps
from explain.gradcam import DEFAULT_METHOD, get_method
from explain.offcentre import energy_in_box, pointing_hit
from models.backends.base import ImageTextModel, Preprocessing
from models.photos import load_photo
from models.scoring.zeroshot import LabelSet


def mask_on_input(mask: Image.Image, pre: Preprocessing) -> np.ndarray:
    """The expert mask through the model's own resize and crop, as a bool (size, size) array."""
    tensor = pre.transform()(mask.convert("RGB"))  # white -> +1, black -> -1 after mean = std = 0.5 ...
    mean = torch.tensor(pre.mean)[:, None, None]
    std = torch.tensor(pre.std)[:, None, None]
    return ((tensor * std + mean)[0] > 0.5).numpy()  # ... so undo the normalisation, whatever it is


def evaluate_localisation(
    model: ImageTextModel,
    items: Sequence[tuple[Path, Path]],
    labels: LabelSet,
    *,
    method: str = DEFAULT_METHOD,
    seed: int = 0,
    log: Callable[[str], None] | None = None,
) -> dict[str, object]:
    """Mean energy in the mask and pointing-game hit rate of `method`, `random` and `center`."""
    config = FaithfulnessConfig(seed=seed)
    fns = {method: saliency_fn(get_method(method)(model), labels)}
    scorer = Scorer(model, labels)
    energy: dict[str, list[float]] = {}
    hits: dict[str, list[float]] = {}
    share: list[float] = []
    t0 = time.perf_counter()
    for i, (image_path, mask_path) in enumerate(items):
        pixels = model.preprocessing.batch([load_photo(image_path)])
        mask = mask_on_input(Image.open(mask_path), model.preprocessing)
        if not mask.any():
            continue
        target = int(scorer(pixels)[0].argmax())
        gen = torch.Generator().manual_seed(seed * 1_000_003 + i)
        for name, saliency in saliency_maps(pixels, target, fns, gen, config).items():
            energy.setdefault(name, []).append(energy_in_box(saliency, mask))
            hits.setdefault(name, []).append(float(pointing_hit(saliency, mask)))
        share.append(float(mask.mean()))
        if log and ((i + 1) % 25 == 0 or i + 1 == len(items)):
            rate = (time.perf_counter() - t0) / (i + 1)
            log(f"{i + 1}/{len(items)} photos, {rate:.2f} s each")
    keys = [method, *REFERENCES]
    return {
        "method": method,
        "n": len(share),
        "mean_lesion_share_of_input": round(float(np.mean(share)), 4),
        "energy_in_mask": {k: round(float(np.mean(energy[k])), 4) for k in keys},
        "pointing_game": {k: round(float(np.mean(hits[k])), 4) for k in keys},
        "seconds": round(time.perf_counter() - t0, 1),
    }
