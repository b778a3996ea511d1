"""The optimised image-tower runtimes against PyTorch float32 on the development photos: equal answers?

Runs the served forward (4 flipped views and the frozen ImageNet view) of the embedded model on every
photo with PyTorch float32 (the reference), PyTorch bfloat16 autocast, ONNX Runtime and OpenVINO
(float32, and bfloat16 where the CPU has the kernels), and reports per runtime: top-1 agreement and
the largest change of a probability over the photos' conditions (zero-shot, the model's logit
scale), the largest change of the OOD rule's ImageNet probabilities, and photos per second at
batch 1, measured in interleaved rounds on the same photos (medians; a ratio to PyTorch bfloat16
from the same run). A runtime passes at 100 % top-1 agreement and a probability change <= 0.01.

    python -m benchmarks.runtime_agreement [--data DIR] [--limit N] [--threads 1] [--rounds 5] [--json]
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from models.backends.registry import DEFAULT_MODEL, load_model
from models.embedded.runtime import compile_tower, installed
from models.fitting.datasets import DEFAULT_DATA, load_labelled_folder
from models.knowledge.taxonomy import load_taxonomy
from models.photos import load_photo
from models.scoring.zeroshot import ZeroShotClassifier

MAX_PROB_CHANGE = 0.01
Forward = Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor]]


def runtimes(model, cache_dir: Path, threads: int) -> dict[str, Forward]:
    def torch_f32(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return model.encode_image_with_domain(x)

    def torch_bf16(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        with torch.autocast("cpu", dtype=torch.bfloat16):
            return model.encode_image_with_domain(x)

    out: dict[str, Forward] = {"torch-float32": torch_f32, "torch-bfloat16": torch_bf16}
    for name in ("onnxruntime", "openvino"):
        if installed(name):
            out[f"{name}-float32"] = compile_tower(model, name, cache_dir, threads)  # type: ignore[arg-type]
    if installed("openvino"):
        out["openvino-bfloat16"] = compile_tower(model, "openvino", cache_dir, threads, "bfloat16")
    return out


def speed(forwards: dict[str, Forward], pixels: torch.Tensor, rounds: int) -> dict[str, float]:
    """Photos per second at batch 1, runtimes interleaved round by round; the median round per runtime."""
    per: dict[str, list[float]] = {k: [] for k in forwards}
    for _ in range(rounds):
        for name, fwd in forwards.items():
            t0 = time.perf_counter()
            for row in pixels:
                fwd(row[None])
            per[name].append(len(pixels) / (time.perf_counter() - t0))
    return {k: round(statistics.median(v), 2) for k, v in per.items()}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", type=Path, default=DEFAULT_DATA)
    ap.add_argument("--model", default=DEFAULT_MODEL)
    ap.add_argument("--limit", type=int, default=0, help="first N photos only (0: all)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--rounds", type=int, default=5, help="interleaved speed rounds")
    ap.add_argument("--speed-photos", type=int, default=16, help="photos per speed round")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    model = load_model(args.model)
    taxonomy = load_taxonomy()
    items = load_labelled_folder(args.data, taxonomy)[: args.limit or None]
    pixels = model.preprocessing.batch([load_photo(i.path) for i in items])
    clf = ZeroShotClassifier(model, taxonomy)
    labels = clf.subset(sorted({i.condition_id for i in items}), "clinical")
    with tempfile.TemporaryDirectory() as tmp:
        forwards = runtimes(model, Path(tmp), args.threads)
        probs, domains = {}, {}
        for name, fwd in forwards.items():
            chunks = [fwd(pixels[i : i + 8]) for i in range(0, len(pixels), 8)]
            emb = torch.cat([c[0] for c in chunks]).float()
            probs[name] = clf.probabilities(emb, labels).numpy()
            domains[name] = torch.cat([c[1] for c in chunks]).float().numpy()
        rates = speed(forwards, pixels[: args.speed_photos], args.rounds)
    ref, ref_dom = probs["torch-float32"], domains["torch-float32"]
    out: dict[str, object] = {"n": len(items), "threads": args.threads, "model": model.artifacts.fingerprint}
    for name in forwards:
        agree = float((probs[name].argmax(1) == ref.argmax(1)).mean())
        change = float(np.abs(probs[name] - ref).max())
        out[name] = {
            "top1_agreement": round(agree, 4),
            "max_probability_change": round(change, 4),
            "max_imagenet_probability_change": round(float(np.abs(domains[name] - ref_dom).max()), 4),
            "img_per_s": rates[name],
            "vs_torch_bfloat16": round(rates[name] / rates["torch-bfloat16"], 2),
            "equal_answers": agree == 1.0 and change <= MAX_PROB_CHANGE,
        }
    if args.json:
        print(json.dumps(out))
        return
    for key, value in out.items():
        print(f"{key}: {value}")


if __name__ == "__main__":
    main()
