"""`dermtriage predict`: photos through the same engine the HTTP service uses: the full answer, flags included."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from service.cli._common import add_modality, add_model, subparser


def add_parser(sub: Any) -> argparse.ArgumentParser:
    p = subparser(sub, "predict", "print the triage answer (differentials, set, flags) for each photo", run)
    p.add_argument("photo", nargs="+")
    p.add_argument("--symptoms", help="the patient's own words, as in the HTTP request")
    add_model(p)
    p.add_argument("--top-k", type=int, default=5)
    add_modality(p)
    p.add_argument("--labels", help="comma-separated candidate labels instead of the taxonomy")
    p.add_argument("--json", action="store_true", help="one JSON object (the full answer) per line")
    return p


def run(args: argparse.Namespace) -> int:
    from uuid import uuid4

    from models.backends.registry import load_model
    from models.knowledge.taxonomy import load_taxonomy
    from service.engine import TriageEngine
    from service.images import ImageError, ImageLimits, decode_image
    from service.schemas import ClinicalInput, TriageOptions

    labels = [x.strip() for x in args.labels.split(",") if x.strip()] if args.labels else None
    options = TriageOptions(top_k=args.top_k, modality=args.modality, candidate_labels=labels)
    clinical = ClinicalInput(symptoms=args.symptoms) if args.symptoms else None
    engine = TriageEngine(load_model(args.model), load_taxonomy())
    status = 0
    for photo in args.photo:
        try:
            decoded = decode_image(Path(photo).read_bytes(), ImageLimits())
        except (OSError, ImageError) as exc:
            print(f"error: {photo}: {exc}", file=sys.stderr)
            status = 2
            continue
        result = engine.triage(decoded, options, clinical, request_id=str(uuid4()))
        if args.json:
            print(json.dumps({"photo": photo, **result.model_dump(mode="json", exclude={"heatmaps"})}))
            continue
        print_result(photo, result, bool(labels))
    return status


def print_result(photo: str, result: Any, custom_labels: bool) -> None:
    print(f"{photo}: {result.model.name} {result.model.version} — decision support, not a diagnosis")
    for d in result.differentials:
        flag = "" if d.validated_for_model or custom_labels else "  (not validated for this model)"
        print(f"  {d.probability:6.1%}  {d.name}{flag}")
    u = result.uncertainty
    if u is None:
        return
    cal = f"calibrated (T={u.temperature:.3g})" if u.calibrated else "uncalibrated"
    cov = f"{u.coverage:.0%} set" if u.coverage else "set"
    print(
        f"  {cal}; {cov}: {', '.join(u.prediction_set) or 'n/a'}; entropy {u.entropy:.2f}, margin {u.top2_margin:.2f}"
    )
    for f in u.flags:
        print(f"  flag {f.name}: {f.measure} = {f.value} (threshold {f.threshold}) — {f.message}")
    print(f"  needs review: {'yes — ' + '; '.join(u.review_reasons) if u.needs_review else 'no'}")
