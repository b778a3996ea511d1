"""Heatmap cost on the embedded model, next to plain inference, on this machine.

    python -m benchmarks.bench_heatmaps [--photo PATH] [--top-k 5] [--method gradcam] [--threads 1] [--json]

Plain inference: what a triage answer costs without heatmaps (the served flip-averaged views,
and a single view). Heatmaps for the top-k differentials: the CAM alone batched (one forward +
one batched backward for all k), the CAM one differential at a time (k forwards + k backwards),
and `explain_differentials` end to end (CAM + upsampling + PNG overlays). The cost split: the
CAM's forward and its backward apart, the backward for every candidate of the default scope run
ahead (what the service runs beside the served forward), one overlay's blend and PNG encoding,
and what is left after the answer when the pass ran ahead. Medians of --repeats.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

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
    labels = clf.subset(list(model.card.validated_conditions), "clinical")  # the default scope
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
    out |= cost_split(model, photo, pixels, cam, targets, text, labels.embeddings, method, args.repeats)
    out["cam_backward_ms"] = round(batched - out["cam_forward_ms"], 1)  # type: ignore[operator]
    out["cam_batched_ms"] = round(batched, 1)
    out["cam_batched_per_differential_ms"] = round(batched / k, 1)
    out["cam_one_by_one_per_differential_ms"] = round(one_by_one / k, 1)
    out["explain_end_to_end_ms"] = round(end_to_end, 1)
    out["explain_per_differential_ms"] = round(end_to_end / k, 1)
    out["explain_vs_served_forward"] = round(end_to_end / out["plain_inference_runtime_ms"], 2)  # type: ignore[operator]
    if args.json:
        print(json.dumps(out))
    else:
        print_report(out, model.card.name, k, batched, one_by_one, end_to_end)


def print_report(out: dict[str, Any], name: str, k: int, batched: float, one_by_one: float, end_to_end: float) -> None:
    grid = "x".join(str(g) for g in out["grid_shape"])
    print(f"{name}, {out['method']} ({grid} grid), top-{k}, photo {out['photo_size']}, threads={out['threads']}")
    print(f"  plain inference ({out['tta_views']} views, torch)   {out['plain_inference_ms']:8.1f} ms")
    served = f"plain inference ({out['tta_views']} views, {out['runtime']})"
    print(f"  {served:<37}{out['plain_inference_runtime_ms']:8.1f} ms")
    print(f"  plain inference (1 view)               {out['single_view_ms']:8.1f} ms")
    print(f"  heatmaps, CAM batched (all {k})          {batched:8.1f} ms = {batched / k:6.1f} ms per differential")
    print(f"  heatmaps, CAM one at a time            {one_by_one:8.1f} ms = {one_by_one / k:6.1f} ms per differential")
    print(f"  explain_differentials (CAM + PNGs)     {end_to_end:8.1f} ms = {end_to_end / k:6.1f} ms per differential")
    print(f"  explain_differentials / served plain inference: {out['explain_vs_served_forward']}")
    print_split(out, k)


def cost_split(
    model: Any, photo: Any, pixels: Any, cam: Any, targets: Any, text: Any, candidates: Any, method: str, repeats: int
) -> dict[str, object]:
    """The CAM's forward, the forward and backward of every candidate run ahead (what the service runs
    beside the served forward), one overlay's blend and PNG, and what is left after the answer."""
    from explain import explain_differentials, prepare_heatmaps, render

    forward = median_ms(lambda: cam.forward(pixels), repeats)
    ahead = median_ms(lambda: prepare_heatmaps(model, photo, method=method, candidates=candidates), repeats)
    passes = [prepare_heatmaps(model, photo, method=method, candidates=candidates) for _ in range(repeats + 1)]
    left = median_ms(lambda: explain_differentials(model, photo, text, method=method, cam_pass=passes.pop()), repeats)
    grid = cam(pixels, targets)[0, 0].numpy()
    base = render.fit(photo)
    box = model.preprocessing.geometry(*photo.size)
    overlay, _ = render.overlay(base, grid, box, photo.size)
    return {
        "cam_forward_ms": round(forward, 1),
        "candidates": int(candidates.shape[0]),
        "ahead_forward_backward_all_candidates_ms": round(ahead, 1),
        "overlay_blend_ms": round(median_ms(lambda: render.overlay(base, grid, box, photo.size), repeats), 2),
        "overlay_png_ms": round(median_ms(lambda: render.png_bytes(overlay), repeats), 2),
        "overlay_png_kb": round(len(render.png_bytes(overlay)) / 1024, 1),
        "left_after_the_answer_ms": round(left, 1),
    }


def print_split(out: dict[str, Any], k: int) -> None:
    print("  the split:")
    print(f"    CAM forward (1 view, autograd on)    {out['cam_forward_ms']:8.1f} ms")
    print(f"    CAM backward, {k} targets batched      {out['cam_backward_ms']:8.1f} ms")
    n = out["candidates"]
    print(f"    forward + backward of all {n} candidates {out['ahead_forward_backward_all_candidates_ms']:6.1f} ms"
          "  (run ahead, beside the served forward)")  # fmt: skip
    png = f"PNG {out['overlay_png_ms']} ms ({out['overlay_png_kb']} KB)"
    print(f"    one overlay: blend {out['overlay_blend_ms']} ms, {png}")
    print(f"    left after the answer (pass run ahead: {k} overlays) {out['left_after_the_answer_ms']:6.1f} ms")


if __name__ == "__main__":
    main()
