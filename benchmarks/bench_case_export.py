"""What keeping a consented photo and exporting the kept cases cost, on this machine.

    python -m benchmarks.bench_case_export [--cases 1000] [--url URL] [--json]

One real answer of the embedded model on a development photo is kept ``--cases`` times under fresh
ids, each with its photo kept (the service's re-encode and write, timed per photo: what a consented
answer waits for), a review, an outcome, a box, a polygon, keypoints and lesion tags. Then
``dermtriage export`` runs once per format (COCO, CSV, FHIR) and each is timed, end to end (reading
the cases, copying the photos, writing the files, auditing the export). Default database: a fresh
SQLite file.
"""

from __future__ import annotations

import tempfile
import time
from datetime import date
from functools import partial
from pathlib import Path
from typing import Any

from benchmarks.common import case_bench_main, percentile, sample_photos
from models.fitting.datasets import DEFAULT_DATA
from service.images import ImageLimits, decode_image, storable_copy
from service.runtime import build_engine
from service.schemas import TriageOptions, new_result_id
from service.settings import Settings
from service.store.cases import now
from service.store.db import alchemy_config, upgrade
from service.store.models import Annotation, Case, Outcome, Review
from service.store.photos import PhotoStore


def _rows(answer: dict[str, Any], sha: str, kept: str, w: int, h: int, label: str) -> list[Any]:
    cid, at = new_result_id(), now()
    case = Case(
        id=cid, owner="api-key:bench", created_at=at, model_name="m", model_version="1", weights_sha256=None,
        calibration_id=None, taxonomy_version="t", photo_sha256=sha, photo_width=w, photo_height=h,
        patient_ref=None, lesion_ref=None, share_token_sha256=None, answer=answer, stored_photo_sha256=kept,
    )  # fmt: skip
    shapes = [
        ("box", {"box": [1, 1, w / 2, h / 2]}),
        ("polygon", {"points": [[0, 0], [w / 2, 0], [w / 2, h / 2]]}),
        ("keypoints", {"points": [[5, 5], [9, 9]]}),
    ]
    children: list[Any] = [
        Annotation(case_id=cid, annotator="a", created_at=at, kind=kind, label=label, geometry=geometry)
        for kind, geometry in shapes
    ]
    children.append(Annotation(
        case_id=cid, annotator="a", created_at=at, kind="tags", label=None,
        geometry={"tags": {"fitzpatrick": "III", "body_site": "forearm"}},
    ))  # fmt: skip
    children.append(Review(case_id=cid, reviewer="r", created_at=at, agrees=True, confidence="high"))
    children.append(
        Outcome(
            case_id=cid, recorded_by="r", created_at=at, diagnosis=label, outcome_date=date.today(), source="follow-up"
        )
    )
    return [case, *children]


async def measure(url: str, n: int) -> dict[str, Any]:
    from service.cli.export import export  # the CLI and the benchmarks never import each other at module level

    settings = Settings(database_url=url)
    photo = sample_photos(DEFAULT_DATA, 1)[0]
    decoded = decode_image(photo, ImageLimits())
    result = build_engine(settings).triage(decoded, TriageOptions(), request_id="bench")
    answer = result.model_dump(mode="json", exclude={"heatmaps"})
    label = result.differentials[0].condition_id or "melanoma"
    work = Path(tempfile.mkdtemp())
    photos = PhotoStore(work / "photos")
    costs = []
    for _ in range(20):
        t0 = time.perf_counter()
        kept = await photos.put(partial(storable_copy, photo, ImageLimits()))
        costs.append((time.perf_counter() - t0) * 1000)
    photos.close()
    config = alchemy_config(url)
    await upgrade(config.get_engine())
    async with config.create_session_maker()() as session, session.begin():
        w, h = decoded.info.width, decoded.info.height
        made = [_rows(answer, "0" * 64, kept or "", w, h, label) for _ in range(n)]
        session.add_all([rows[0] for rows in made])  # the cases first: no ORM relationship orders the inserts
        await session.flush()
        session.add_all([row for rows in made for row in rows[1:]])
    await config.get_engine().dispose()
    out: dict[str, Any] = {
        "cases": n,
        "photo_bytes": len(photo),
        "photo_keep_ms_p50": round(percentile(costs, 50), 1),
        "photo_keep_ms_p99": round(percentile(costs, 99), 1),
    }
    for fmt in ("coco", "csv", "fhir"):
        t0 = time.perf_counter()
        exported = await export(url, fmt, work / fmt, work / "photos", None, False)
        out[f"export_{fmt}_s"] = round(time.perf_counter() - t0, 2)
        assert exported == n
    return out


def main() -> None:
    case_bench_main(__doc__, measure)


if __name__ == "__main__":
    main()
