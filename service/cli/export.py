"""`dermtriage export --format coco|csv|fhir --out DIR`: the kept cases as a data set.

- ``coco``: ``annotations.json`` (COCO: images, categories = the taxonomy's conditions, annotations with
  ``bbox``, ``segmentation`` and ``keypoints``; each image carries the case's ground truth) and
  ``images/<case id>.jpg`` for the photos kept with consent;
- ``csv``: ``cases.csv``, one row of labels and metadata per case;
- ``fhir``: ``Bundle.ndjson`` (one triage Bundle per case, as ``/v1/triage?format=fhir`` builds it) and
  ``AuditEvent.ndjson`` (the cases' audit trails), FHIR bulk-data style.

The export is itself audited: one ``export`` event per case exported (actor ``cli:export``).
"""

from __future__ import annotations

import argparse
import asyncio
import csv
import json
import shutil
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from service.cli._common import subparser
from service.cli._store_cases import StoredCase, load_cases

FORMATS = ("coco", "csv", "fhir")
EXPORT_ACTOR = "cli:export"
CSV_COLUMNS = (
    "case_id", "created_at", "model", "model_version", "top_differential", "top_probability", "reviewer_diagnosis",
    "review_agrees", "outcome", "outcome_source", "ground_truth", "ground_truth_source", "tags", "fitzpatrick",
    "body_site", "photo_file",
)  # fmt: skip


def add_parser(sub: Any) -> argparse.ArgumentParser:
    p = subparser(sub, "export", "export the kept cases as COCO, CSV or FHIR (photos: only those kept)", run)
    p.add_argument("--format", choices=FORMATS, required=True)
    p.add_argument("--out", type=Path, required=True, help="folder to write (created)")
    p.add_argument("--since", type=_date, help="cases made on or after this date (YYYY-MM-DD or ISO 8601)")
    p.add_argument("--reviewed-only", action="store_true", help="only cases with at least one review")
    p.add_argument("--url", help="database URL (default DERMTRIAGE_DATABASE_URL, else ./dermtriage.db)")
    p.add_argument("--photo-dir", type=Path, help="kept photos (default DERMTRIAGE_PHOTO_DIR, else ./photos)")
    return p


def _date(value: str) -> datetime:
    try:
        when = datetime.fromisoformat(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a date: {value!r} (YYYY-MM-DD)") from None
    return when if when.tzinfo else when.replace(tzinfo=UTC)


# -- COCO --------------------------------------------------------------------------------------------
def _bounds(points: list[list[float]]) -> list[float]:
    xs, ys = [p[0] for p in points], [p[1] for p in points]
    return [min(xs), min(ys), max(xs) - min(xs), max(ys) - min(ys)]


def _polygon_area(points: list[list[float]]) -> float:
    """Shoelace formula (COCO's ``area`` of a polygon)."""
    n = len(points)
    return abs(sum(points[i][0] * points[(i + 1) % n][1] - points[(i + 1) % n][0] * points[i][1] for i in range(n))) / 2


def _coco_annotation(row: Any, image_id: int, category: int, ann_id: int) -> dict[str, Any]:
    out: dict[str, Any] = {"id": ann_id, "image_id": image_id, "category_id": category, "iscrowd": 0}
    points = row.geometry.get("points") or []
    if row.kind == "box":
        x, y, w, h = row.geometry["box"]
        out |= {"bbox": [x, y, w, h], "area": w * h, "segmentation": [[x, y, x + w, y, x + w, y + h, x, y + h]]}
    elif row.kind == "polygon":
        flat = [c for p in points for c in p]
        out |= {"bbox": _bounds(points), "area": _polygon_area(points), "segmentation": [flat]}
    else:  # keypoints: COCO's x, y, visibility (2: labelled and visible)
        out |= {"bbox": _bounds(points), "area": 0.0, "segmentation": [], "num_keypoints": len(points)}
        out["keypoints"] = [v for p in points for v in (p[0], p[1], 2)]
    if row.geometry.get("tags"):
        out["attributes"] = {k: v for k, v in row.geometry["tags"].items() if v is not None}
    return out


def coco(cases: list[StoredCase], photos: dict[str, str]) -> dict[str, Any]:
    from models.knowledge.taxonomy import load_taxonomy

    taxonomy = load_taxonomy()
    categories = [
        {"id": i, "name": c.id, "supercategory": str(c.category), "display": c.name}
        for i, c in enumerate(taxonomy.conditions, 1)
    ]
    category_of = {c["name"]: c["id"] for c in categories}
    images, annotations = [], []
    for image_id, sc in enumerate(cases, 1):
        truth, source = sc.ground_truth()
        images.append({
            "id": image_id, "case_id": sc.case.id, "file_name": photos.get(sc.case.id),
            "width": sc.case.photo_width, "height": sc.case.photo_height,
            "date_captured": sc.case.created_at.isoformat(), "ground_truth": truth, "ground_truth_source": source,
            "ground_truth_category_id": category_of.get(truth or ""), "fitzpatrick": sc.fitzpatrick(),
            "body_site": sc.body_site(), "model": sc.case.model_name, "model_version": sc.case.model_version,
        })  # fmt: skip
        for row in sc.annotations:
            if row.kind != "tags" and row.label in category_of:
                annotations.append(_coco_annotation(row, image_id, category_of[row.label], len(annotations) + 1))
    info = {"description": "dermtriage kept cases", "date_created": datetime.now(UTC).isoformat()}
    return {"info": info, "licenses": [], "images": images, "annotations": annotations, "categories": categories}


# -- CSV ---------------------------------------------------------------------------------------------
def csv_row(sc: StoredCase, photo: str | None) -> dict[str, Any]:
    truth, source = sc.ground_truth()
    top = sc.top or {}
    outcome, review = sc.outcomes[-1] if sc.outcomes else None, sc.reviews[-1] if sc.reviews else None
    return {
        "case_id": sc.case.id, "created_at": sc.case.created_at.isoformat(), "model": sc.case.model_name,
        "model_version": sc.case.model_version, "top_differential": top.get("condition_id") or top.get("label"),
        "top_probability": top.get("probability"), "reviewer_diagnosis": sc.review_diagnosis(),
        "review_agrees": None if review is None else review.agrees, "outcome": outcome.diagnosis if outcome else None,
        "outcome_source": outcome.source if outcome else None, "ground_truth": truth, "ground_truth_source": source,
        "tags": json.dumps(sc.tags(), sort_keys=True) if sc.tags() else None, "fitzpatrick": sc.fitzpatrick(),
        "body_site": sc.body_site(), "photo_file": photo,
    }  # fmt: skip


# -- FHIR --------------------------------------------------------------------------------------------
def fhir_lines(cases: list[StoredCase]) -> list[bytes]:
    from service.fhir.bundle import bundle_json
    from service.schemas import TriageResult

    return [
        bundle_json(TriageResult.model_validate(sc.case.answer), timestamp=sc.case.created_at.isoformat())
        for sc in cases
    ]


async def _audit_lines(session: Any, case_ids: list[str]) -> list[bytes]:
    from sqlalchemy import select

    from service.fhir.audit import audit_event
    from service.store.models import AuditEvent

    lines: list[bytes] = []
    for start in range(0, len(case_ids), 500):  # bounded IN lists
        chunk = case_ids[start : start + 500]
        rows = await session.execute(select(AuditEvent).where(AuditEvent.case_id.in_(chunk)).order_by(AuditEvent.id))
        lines += [audit_event(r).model_dump_json().encode() for r in rows.scalars()]
    return lines


# -- the command -------------------------------------------------------------------------------------
def _copy_photos(cases: list[StoredCase], photo_dir: Path, out: Path) -> dict[str, str]:
    """Copy the photos kept with consent to ``out/images``; case id -> relative file name."""
    from service.store.photos import PhotoStore

    store, copied = PhotoStore(photo_dir), {}
    try:
        for sc in cases:
            sha = sc.case.stored_photo_sha256
            if sha and store.path(sha).is_file():
                name = f"images/{sc.case.id}.jpg"
                (out / "images").mkdir(parents=True, exist_ok=True)
                shutil.copyfile(store.path(sha), out / name)
                copied[sc.case.id] = name
    finally:
        store.close()
    return copied


async def export(url: str, fmt: str, out: Path, photo_dir: Path, since: datetime | None, reviewed_only: bool) -> int:
    """Write the export and its audit events; the number of cases exported."""
    from service.store.cases import audit_row
    from service.store.db import alchemy_config
    from service.store.models import AuditEvent
    from service.store.repository import AuditRepository

    config = alchemy_config(url)
    out.mkdir(parents=True, exist_ok=True)
    try:
        async with config.create_session_maker()() as session, session.begin():
            cases = await load_cases(session, since, reviewed_only)
            photos = _copy_photos(cases, photo_dir, out) if fmt in ("coco", "csv") else {}
            if fmt == "coco":
                (out / "annotations.json").write_text(json.dumps(coco(cases, photos)))
            elif fmt == "csv":
                with (out / "cases.csv").open("w", newline="") as f:
                    writer = csv.DictWriter(f, CSV_COLUMNS)
                    writer.writeheader()
                    writer.writerows(csv_row(sc, photos.get(sc.case.id)) for sc in cases)
            else:
                (out / "Bundle.ndjson").write_bytes(b"".join(line + b"\n" for line in fhir_lines(cases)))
                audit = await _audit_lines(session, [sc.case.id for sc in cases])
                (out / "AuditEvent.ndjson").write_bytes(b"".join(line + b"\n" for line in audit))
            rows = [audit_row(EXPORT_ACTOR, "export", "case", sc.case.id, sc.case.id, None) for sc in cases]
            await AuditRepository(session=session).add_many([AuditEvent(**r.values) for r in rows], auto_commit=False)
    finally:
        await config.get_engine().dispose()
    return len(cases)


def run(args: argparse.Namespace) -> int:
    from service.settings import Settings
    from service.store.db import redacted

    settings = Settings()
    url = args.url or settings.database_url
    started = time.perf_counter()
    try:
        n = asyncio.run(
            export(url, args.format, args.out, args.photo_dir or settings.photo_dir, args.since, args.reviewed_only)
        )
    except Exception as exc:  # a CLI reports and exits non-zero
        print(f"error: could not export from {redacted(url)}: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    print(f"exported {n} cases as {args.format} to {args.out} in {time.perf_counter() - started:.2f} s")
    return 0
