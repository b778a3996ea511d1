"""Heatmap cost on the embedded model, next to plain inference, on this machine.

    python -m benchmarks.bench_heatmaps [--photo PATH] [--top-k 5] [--method gradcam] [--threads 1] [--json]

Plain inference: what a triage answer costs without heatmaps (the served flip-averaged views,
and a single view). Heatmaps for the top-k differentials: the CAM alone batched (one forward +
one batched backward for all k), the CAM one differential at a time (k forwards + k backwards),
and `explain_differentials` end to end (CAM + upsampling + PNG overlays). Medians of --repeats.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import torch
from PIL import Image


def median_ms(fn: Callable[[], object], repeats: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t0) * 1000)
    return statistics.median(times)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--photo", help="a photo (default: the first development photo, else a synthetic one)")
    ap.add_argument("--top-k", type=int, default=5)
    ap.add_argument("--method", default=None, help="heatmap method (default: explain's default)")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--threads", type=int, help="torch CPU threads (default: torch's)")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    from benchmarks.common import DEFAULT_DATA
    from explain import DEFAULT_METHOD, SimilarityTarget, explain_differentials, get_method
    from models.backends.registry import DEFAULT_MODEL, load_model
    from models.knowledge.taxonomy import load_taxonomy
    from models.photos import load_photo
    from models.scoring.zeroshot import ZeroShotClassifier

    method = args.method or DEFAULT_METHOD
    model = load_model(DEFAULT_MODEL)
    clf = ZeroShotClassifier(model, load_taxonomy(), Path(".cache/zeroshot"))
    labels = clf.condition_set("clinical")
    photos = sorted((DEFAULT_DATA / "images").glob("*.jpg"))
    path = Path(args.photo) if args.photo else (photos[0] if photos else None)
    photo = load_photo(path) if path else Image.new("RGB", (640, 480), (200, 150, 120))
    pixels = model.preprocessing.batch([photo])
    probs = clf.probabilities(model.encode_image(pixels), labels)[0]
    top = probs.argsort(descending=True)[: args.top_k]
    text = labels.embeddings[top]
    cam = get_method(method)(model)
    targets = [SimilarityTarget(t) for t in text]
    k = len(targets)

    def plain() -> object:
        return clf.probabilities(model.encode_image(model.preprocessing.batch([photo])), labels)

    def single_view() -> object:
        with torch.inference_mode():
            return model.encode_image(model.preprocessing.batch([photo]), grad=True)

    out: dict[str, object] = {
        "threads": torch.get_num_threads(),
        "method": method,
        "top_k": k,
        "photo": str(path) if path else "synthetic 640x480",
        "photo_size": list(photo.size),
        "tta_views": 4 if getattr(model, "tta_flips", False) else 1,
    }
    out["plain_inference_ms"] = round(median_ms(plain, args.repeats), 1)
    from models.embedded.runtime import attach_runtime

    out["runtime"] = attach_runtime(model, "auto", threads=torch.get_num_threads())  # the served default
    out["plain_inference_runtime_ms"] = round(median_ms(plain, args.repeats), 1)
    model.compiled = None  # type: ignore[attr-defined]
    out["single_view_ms"] = round(median_ms(single_view, args.repeats), 1)
    out["grid_shape"] = list(cam(pixels, targets).shape[-2:])
    batched = median_ms(lambda: cam(pixels, targets), args.repeats)
    one_by_one = median_ms(lambda: [cam(pixels, [t]) for t in targets], args.repeats)
    end_to_end = median_ms(lambda: explain_differentials(model, photo, text, method=method), args.repeats)
    out["cam_batched_ms"] = round(batched, 1)
    out["cam_batched_per_differential_ms"] = round(batched / k, 1)
    out["cam_one_by_one_per_differential_ms"] = round(one_by_one / k, 1)
    out["explain_end_to_end_ms"] = round(end_to_end, 1)
    out["explain_per_differential_ms"] = round(end_to_end / k, 1)
    out["explain_vs_served_forward"] = round(end_to_end / out["plain_inference_runtime_ms"], 2)  # type: ignore[operator]
    if args.json:
        print(json.dumps(out))
        return
    grid = "x".join(str(g) for g in out["grid_shape"])  # type: ignore[attr-defined]
    print(f"{model.card.name}, {method} ({grid} grid), top-{k}, photo {out['photo_size']}, threads={out['threads']}")
    print(f"  plain inference ({out['tta_views']} views, torch)   {out['plain_inference_ms']:8.1f} ms")
    served = f"plain inference ({out['tta_views']} views, {out['runtime']})"
    print(f"  {served:<37}{out['plain_inference_runtime_ms']:8.1f} ms")
    print(f"  plain inference (1 view)               {out['single_view_ms']:8.1f} ms")
    print(f"  heatmaps, CAM batched (all {k})          {batched:8.1f} ms = {batched / k:6.1f} ms per differential")
    print(f"  heatmaps, CAM one at a time            {one_by_one:8.1f} ms = {one_by_one / k:6.1f} ms per differential")
    print(f"  explain_differentials (CAM + PNGs)     {end_to_end:8.1f} ms = {end_to_end / k:6.1f} ms per differential")
    print(f"  explain_differentials / served plain inference: {out['explain_vs_served_forward']}")


if __name__ == "__main__":
    main()
