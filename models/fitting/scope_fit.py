"""Choose and measure the `outside_scope` gate's thresholds (models/uncertainty/gates.py `scope_flags`).

`python -m models.fitting.scope_fit [--data PAD_DIR] [--isic DIR] [--json]` scores, through the
service's own engine (`TriageEngine.embed`, `scope_evidence`, the OOD detector):

- in scope: the PAD-UFES-20 development photos (false flags);
- out of scope, development: half "a" of the synthetic inflammatory set and a seeded sample of ISIC 2017
  `train` images sent as clinical (models/fitting/scope_data.py);
- out of scope, report only: half "b" of the synthetic set and the ISIC `validation` images.

The photo-only rules: any out-of-distribution rule (their thresholds are the OOD gate's, fitted
elsewhere), the generic fusion's mass outside the validated conditions, and the frozen ImageNet
view's skin-class log mass against the OOD gate's threshold plus a margin. Each candidate is
a quantile of the PAD photos' own values; the set kept flags the most development out-of-scope
photos with at most `max_false` of the PAD photos flagged. Nothing is chosen on the report sets. The PAD embeddings are
in-sample (the embedded model was trained on them), so their false-flag rate is optimistic.
"""

from __future__ import annotations

import argparse
import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from models.fitting.scope_data import ScopePhoto, isic_as_clinical, synthetic_scope_set

PAD_DEFAULT = Path(__file__).resolve().parents[3] / "shared" / "data" / "pad-ufes-20"
ISIC_DEFAULT = Path(__file__).resolve().parents[3] / "shared" / "data" / "isic-2017"
FEATURES = ("outside_mass", "distance_share", "ood", "imagenet_margin")
QUANTILES = (0.9, 0.925, 0.95, 0.97, 0.98, 0.99, 0.995, 1.0)


class ScopeScorer:
    """The service's own stages for the photo-only scope rules (as `TriageEngine.triage` runs them)."""

    def __init__(self, model: Any, taxonomy: Any) -> None:
        from models.knowledge.risk_priors import load_priors
        from models.scoring.fusion import fusion_for_model
        from models.scoring.scope import ScopeReader
        from models.scoring.zeroshot import ZeroShotClassifier
        from models.uncertainty.gates import UncertaintyGate

        self.model = model
        self.classifier = ZeroShotClassifier(model, taxonomy)
        self.gate = UncertaintyGate(model, taxonomy)
        generic = fusion_for_model(model).generic()
        self.reader = ScopeReader(taxonomy, model.card.validated_conditions, generic, load_priors())


def scope_features(scorer: ScopeScorer, photos: Sequence[ScopePhoto], batch: int = 8) -> dict[str, np.ndarray]:
    """Per photo (no symptoms given): outside mass, distance share, OOD gate fired, ImageNet margin."""
    import torch

    from models.scoring.features import LabelScores, image_features

    labels = scorer.classifier.condition_set("clinical")
    rows: list[tuple[float, float, bool, float]] = []
    for i in range(0, len(photos), batch):
        images = [p.load() for p in photos[i : i + batch]]
        pixels = scorer.model.preprocessing.batch(images).to(scorer.model.device)
        feats = image_features(scorer.model, pixels, with_domain=scorer.gate.uses_imagenet_view)
        probs = scorer.classifier.probabilities(torch.from_numpy(feats.embedding), labels).numpy()
        for j, img in enumerate(images):
            scores = LabelScores(tuple(labels.ids), probs[j].astype(np.float64))
            reading = scorer.reader.evidence(scores, None, None, None)
            dom = None if feats.domain is None else feats.domain[j : j + 1]
            score = scorer.gate.ood.score(feats.embedding[j : j + 1], [img], dom)[0]
            share = float(score.distance or 0.0) / float(score.distance_threshold or 1.0)
            margin = float(score.imagenet_log_mass or 0.0) - float(score.imagenet_threshold or 0.0)
            rows.append((reading.outside_mass, share, bool(score.flagged), margin))
    a = np.array(rows, dtype=np.float64).reshape(-1, 4)
    return {"outside_mass": a[:, 0], "distance_share": a[:, 1], "ood": a[:, 2] > 0.5, "imagenet_margin": a[:, 3]}


def pad_photos(pad_dir: Path) -> list[ScopePhoto]:
    return [ScopePhoto(name=p.stem, kind="pad", path=p) for p in sorted((pad_dir / "images").glob("*.jpg"))]


def flag_rate(f: dict[str, np.ndarray], t: dict[str, Any], rules: str = "all") -> float:
    """The photo-only rules of `scope_flags` on precomputed features: "all" (what the service flags),
    "new" (without the out-of-distribution gate's own rules) or "ood" (those alone)."""
    new = f["outside_mass"] > t["scope_outside_mass"]
    if t["scope_imagenet_margin"] is not None:
        new = new | (f["imagenet_margin"] < t["scope_imagenet_margin"])
    ood = f["ood"].astype(bool)
    hit = {"all": new | ood, "new": new, "ood": ood}[rules]
    return float(hit.mean()) if len(hit) else float("nan")


def choose(pad: dict[str, np.ndarray], dev: dict[str, np.ndarray], max_false: float) -> dict[str, Any]:
    """Thresholds from PAD quantiles that flag most dev photos with at most `max_false` of PAD flagged.

    The distance to the development photos is left to the OOD gate's own threshold (the 99th percentile
    of held-out patients' distances): the PAD photos' distances here are in-sample (the Gaussian was
    fitted on them) and would put it far too low. The ImageNet view is frozen (never trained on PAD), so its PAD values
    are honest; the outside mass is in-sample, hence optimistic on PAD."""
    best: tuple[float, dict[str, Any]] | None = None
    for qm in QUANTILES:
        for qi in (None, *QUANTILES):
            t = {
                "scope_outside_mass": round(float(np.quantile(pad["outside_mass"], qm)), 3),
                "scope_imagenet_margin": None
                if qi is None
                else round(float(np.quantile(pad["imagenet_margin"], 1 - qi)), 3),
            }
            if flag_rate(pad, t) > max_false:
                continue
            hit = flag_rate(dev, t)
            if best is None or hit > best[0]:
                best = (hit, t)
    assert best is not None
    return best[1]


def merge(*parts: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default=os.environ.get("DERMTRIAGE_DATA", str(PAD_DEFAULT)))
    ap.add_argument("--isic", default=str(ISIC_DEFAULT))
    ap.add_argument("--per-kind", type=int, default=24, help="synthetic photos per kind (half a + half b)")
    ap.add_argument("--isic-train", type=int, default=120, help="ISIC train images sampled to choose thresholds")
    ap.add_argument("--max-false", type=float, default=0.05, help="largest PAD flag rate the rules may add")
    ap.add_argument("--cache", help="an .npz to keep the features in (rerun the choice without scoring)")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)

    sets = {
        "pad": lambda: pad_photos(Path(args.data)),
        "synthetic_a": lambda: list(synthetic_scope_set(args.per_kind, "a")),
        "isic_train": lambda: isic_as_clinical(args.isic, "train", args.isic_train),
        "synthetic_b": lambda: list(synthetic_scope_set(args.per_kind, "b")),
        "isic_validation": lambda: isic_as_clinical(args.isic, "validation"),
    }
    feats = _features(sets, args.cache)
    dev = merge(feats["synthetic_a"], feats["isic_train"])
    t = choose(feats["pad"], dev, args.max_false)
    out: dict[str, Any] = {"thresholds": t, "rates": {}}
    for name, f in feats.items():
        out["rates"][name] = {
            "n": len(f["ood"]),
            "outside_scope": round(flag_rate(f, t), 4),
            "new_rules_only": round(flag_rate(f, t, "new"), 4),
            "ood_rules_only": round(flag_rate(f, t, "ood"), 4),
            "outside_mass_median": round(float(np.median(f["outside_mass"])), 4),
        }
    print(json.dumps(out) if args.json else json.dumps(out, indent=1))
    return 0


def _features(sets: dict[str, Any], cache: str | None) -> dict[str, dict[str, np.ndarray]]:
    if cache and Path(cache).exists():
        z = np.load(cache)
        return {n: {k: z[f"{n}/{k}"] for k in FEATURES} for n in sets}
    from models.backends.registry import load_model
    from models.knowledge.taxonomy import load_taxonomy

    scorer = ScopeScorer(load_model("embedded-pad-lite0"), load_taxonomy())
    feats = {}
    for name, make in sets.items():
        feats[name] = scope_features(scorer, make())
    if cache:
        np.savez(cache, **{f"{n}/{k}": v for n, f in feats.items() for k, v in f.items()})
    return feats


if __name__ == "__main__":
    raise SystemExit(main())
