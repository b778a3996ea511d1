"""bfloat16 vs float32 image tower on the development photos: does balanced accuracy move?

``dermtriage evaluate`` reports the embedded model's committed out-of-fold scores on PAD-UFES-20 (it
was trained there), so it never runs the tower on those photos. This script runs the tower itself,
once in float32 and once under bfloat16 autocast, and compares the two on the same photos (in-sample
for the embedded model: the figure that matters is the change, not the level).

    python -m benchmarks.bf16_accuracy [--data DIR] [--limit N] [--threads 1] [--json]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch
from sklearn.metrics import balanced_accuracy_score

from models.backends.registry import DEFAULT_MODEL, load_model
from models.fitting.datasets import DEFAULT_DATA, load_labelled_folder
from models.fitting.evaluation import embed_images
from models.knowledge.taxonomy import load_taxonomy
from models.scoring.zeroshot import ZeroShotClassifier
from service.batching import bf16_supported


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", type=Path, default=DEFAULT_DATA)
    ap.add_argument("--model", default=DEFAULT_MODEL)
    ap.add_argument("--limit", type=int, default=0, help="first N photos only (0: all)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--batch-size", type=int, default=4)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    model = load_model(args.model)
    taxonomy = load_taxonomy()
    items = load_labelled_folder(args.data, taxonomy)
    if args.limit:
        items = items[: args.limit]
    clf = ZeroShotClassifier(model, taxonomy)
    labels = clf.subset(sorted({i.condition_id for i in items}), "clinical")
    y = np.array([labels.ids.index(i.condition_id) for i in items])
    out: dict[str, object] = {"n": len(items), "bf16_supported": bf16_supported(model.device)}
    probs = {}
    for name, dtype in (("float32", None), ("bfloat16", torch.bfloat16)):
        t0 = time.perf_counter()
        with torch.autocast("cpu", dtype=dtype or torch.float32, enabled=dtype is not None):
            emb = embed_images(model, items, batch_size=args.batch_size, progress=False).float()
        p = clf.probabilities(emb, labels).numpy()
        probs[name] = p
        out[name] = {
            "balanced_accuracy": round(float(balanced_accuracy_score(y, p.argmax(1))), 4),
            "seconds": round(time.perf_counter() - t0, 1),
        }
    f, b = probs["float32"], probs["bfloat16"]
    out["balanced_accuracy_change"] = round(
        out["bfloat16"]["balanced_accuracy"] - out["float32"]["balanced_accuracy"], 4
    )  # type: ignore[index]
    out["top1_agreement"] = round(float((f.argmax(1) == b.argmax(1)).mean()), 4)
    out["max_abs_probability_change"] = round(float(np.abs(f - b).max()), 4)
    if args.json:
        print(json.dumps(out))
        return
    for key, value in out.items():
        print(f"{key}: {value}")


if __name__ == "__main__":
    main()
