"""Image-tower speed of the embedded model on this machine: load time, images/s at batch 1 and 16,
GFLOPs per image, and the same for an open_clip ViT-B/16 tower (random weights: same compute) for scale.

    python -m benchmarks.bench_image_tower [--threads 2] [--json]
"""

from __future__ import annotations

import argparse
import json
import time

import torch
from torch.utils.flop_counter import FlopCounterMode


def images_per_second(fn, batch: int, size: int, seconds: float = 5.0) -> float:
    x = torch.randn(batch, 3, size, size)
    with torch.inference_mode():
        fn(x)  # warm-up
        n, t0 = 0, time.perf_counter()
        while time.perf_counter() - t0 < seconds:
            fn(x)
            n += batch
    return n / (time.perf_counter() - t0)


def gflops(fn, size: int) -> float:
    counter = FlopCounterMode(display=False)
    with counter, torch.inference_mode():
        fn(torch.randn(1, 3, size, size))
    return counter.get_total_flops() / 1e9


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--seconds", type=float, default=5.0)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    from models.backends.registry import DEFAULT_MODEL, load_model

    t0 = time.perf_counter()
    model = load_model(DEFAULT_MODEL)
    load_s = time.perf_counter() - t0
    visual = model.model.visual
    size = model.preprocessing.image_size
    out: dict[str, object] = {"threads": args.threads, "load_seconds": round(load_s, 2)}
    out["embedded"] = {
        "gflops_per_view": round(gflops(visual, size), 3),
        "tta_views": 4 if getattr(model, "tta_flips", False) else 1,
        "img_per_s_batch1": round(images_per_second(visual, 1, size, args.seconds), 1),
        "img_per_s_batch16": round(images_per_second(visual, 16, size, args.seconds), 1),
    }

    import open_clip

    vit = open_clip.create_model("ViT-B-16", pretrained=None).visual.eval()
    out["vit_b16_random_weights"] = {
        "gflops_per_view": round(gflops(vit, 224), 3),
        "img_per_s_batch1": round(images_per_second(vit, 1, 224, args.seconds), 1),
        "img_per_s_batch16": round(images_per_second(vit, 16, 224, args.seconds), 1),
    }
    e, v = out["embedded"], out["vit_b16_random_weights"]
    out["flops_ratio_vit_over_embedded"] = round(v["gflops_per_view"] / e["gflops_per_view"], 1)
    out["speed_ratio_batch16"] = round(e["img_per_s_batch16"] / v["img_per_s_batch16"], 1)
    if args.json:
        print(json.dumps(out))
        return
    print(f"model load: {load_s:.2f} s  (threads={args.threads})")
    for name in ("embedded", "vit_b16_random_weights"):
        r = out[name]
        print(
            f"{name:24s} {r['gflops_per_view']:7.2f} GFLOPs/view  batch 1: {r['img_per_s_batch1']:7.1f} img/s  "
            f"batch 16: {r['img_per_s_batch16']:7.1f} img/s"
        )
    print(
        f"ViT-B/16 costs {out['flops_ratio_vit_over_embedded']}x the FLOPs; the embedded tower runs "
        f"{out['speed_ratio_batch16']}x faster at batch 16. The service runs {e['tta_views']} view(s) per photo."
    )


if __name__ == "__main__":
    main()
