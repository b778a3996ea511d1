"""Cost of the served segmenter's test-time views on this machine, per photo.

    python -m benchmarks.bench_segmentation [--threads 1] [--repeats 10] [--json]

Times `models.segmentation.segment` end to end (decode excluded: an ISIC validation photo, else a
synthetic one) with the served TTA_VIEWS, and the raw segmenter forward with 1, 2 (the mirror pair
served before) and 4 (the served flips) views; prints medians in ms and the served views' extra
cost over a single view.
"""

from __future__ import annotations

import argparse
import json

import numpy as np
import torch
from PIL import Image

from benchmarks.bench_heatmaps import median_ms


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    ap.add_argument("--repeats", type=int, default=10)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    import models.segmentation as seg
    from models.fitting.segmentation_fit import ISIC_DIR, isic_items
    from models.photos import load_photo
    from models.segmentation.preprocess import to_input
    from models.segmentation.tta import tta_logits

    items = isic_items(ISIC_DIR, "validation") if (ISIC_DIR / "labels.csv").exists() else []
    photo = load_photo(items[0].image) if items else Image.fromarray(np.full((256, 256, 3), 180, np.uint8))
    model = seg.load_segmenter()
    x = to_input(photo)[None]
    views = {1: seg.TTA_VIEWS[:1], 2: seg.TTA_VIEWS[:2], len(seg.TTA_VIEWS): seg.TTA_VIEWS}
    out: dict[str, float | int] = {"threads": args.threads, "served_views": len(seg.TTA_VIEWS)}
    with torch.inference_mode():
        for n, vs in views.items():
            out[f"forward_{n}_views_ms"] = round(median_ms(lambda vs=vs: tta_logits(model, x, vs), args.repeats), 1)
    out["segment_end_to_end_ms"] = round(median_ms(lambda: seg.segment(photo), args.repeats), 1)
    n = len(seg.TTA_VIEWS)
    out["served_views_extra_ms_over_one_view"] = round(out[f"forward_{n}_views_ms"] - out["forward_1_views_ms"], 1)
    out["served_views_extra_ms_over_mirror_pair"] = round(out[f"forward_{n}_views_ms"] - out["forward_2_views_ms"], 1)
    print(json.dumps(out, indent=None if args.json else 2))


if __name__ == "__main__":
    main()
