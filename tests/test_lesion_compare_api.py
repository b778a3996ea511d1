"""`POST /v1/lesions/compare` and `options.segment` over HTTP (tiny test model, real segmenter)."""

from __future__ import annotations

import base64
import io
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image
from service_photos import pdf_bytes
from test_cases_store import A, B, problem, serve, triage, written
from test_lesion_compare import moved
from test_service_api import wait_ready

from models.fitting.change_eval import grow
from models.knowledge.taxonomy import load_taxonomy
from models.photos import load_photo
from models.segmentation import segment
from service.engine import TriageEngine


def jpeg(rgb: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, format="JPEG", quality=92)
    return buf.getvalue()


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


PHOTO = "PAT_1418_1447_360.jpg"  # a pigmented lesion well clear of the edges, with skin around it


def outlined_pad_photo(pad_dir: Path) -> tuple[np.ndarray, np.ndarray]:
    """The development photo PHOTO and its lesion mask as the segmenter outlines it."""
    rgb = np.asarray(load_photo(pad_dir / "images" / PHOTO))
    seg = segment(Image.fromarray(rgb))
    assert seg.found and seg.reason is None
    return rgb, seg.mask


@pytest.fixture(scope="module")
def engine(embedded_model: Any) -> TriageEngine:
    """The embedded model: its non-skin gate must let real photos through (the tiny test model's does not)."""
    return TriageEngine(embedded_model, load_taxonomy())


@pytest.fixture(scope="module")
def photos(pad_dir: Path) -> dict[str, bytes]:
    """A real photo, the same scene shot again (rotated, zoomed, shifted, brighter), and the lesion grown
    by 80 % in area (models.fitting.change_eval.grow; beyond the shipped area threshold) then shot again."""
    rgb, m = outlined_pad_photo(pad_dir)
    big, _ = grow(rgb, m, 0.8)
    return {"before": jpeg(rgb), "again": jpeg(moved(rgb, m)[0]), "grown": jpeg(moved(big, m)[0])}


def compare(client, earlier: dict[str, Any], later: dict[str, Any], **extra: Any):
    return client.post("/v1/lesions/compare", json={"earlier": earlier, "later": later, **extra}, headers=A)


def test_segment_option_adds_the_outline(engine: TriageEngine, tmp_path, photos) -> None:
    with serve(engine, f"sqlite+aiosqlite:///{tmp_path / 'c.db'}") as client:
        wait_ready(client)
        plain = triage(client, photos["before"], A)
        assert plain["segmentation"] is None
        got = triage(client, photos["before"], A, segment=True, mm_per_pixel=0.1)["segmentation"]
    direct = segment(Image.open(io.BytesIO(photos["before"])).convert("RGB"))
    assert got["found"] and len(got["polygon"]) >= 8
    size = Image.open(io.BytesIO(photos["before"])).size
    assert (got["photo_width"], got["photo_height"]) == size  # small photo: the working copy is the photo
    assert got["area_px"] == pytest.approx(direct.mask.sum(), rel=0.02)
    assert got["area_mm2"] == pytest.approx(got["area_px"] * 0.01, rel=1e-3)
    assert got["longest_diameter_mm"] == pytest.approx(got["longest_diameter_px"] * 0.1, rel=1e-2)
    mask = np.asarray(Image.open(io.BytesIO(base64.b64decode(got["mask_png"]))).convert("L")) > 127
    assert mask.shape == direct.mask.shape and (mask & direct.mask).sum() / (mask | direct.mask).sum() > 0.97


def test_same_lesion_again_is_stable_and_growth_is_measured(engine: TriageEngine, tmp_path, photos) -> None:
    with serve(engine, f"sqlite+aiosqlite:///{tmp_path / 'c.db'}") as client:
        wait_ready(client)
        same = compare(client, {"image": b64(photos["before"])}, {"image": b64(photos["again"])})
        grown = compare(client, {"image": b64(photos["before"])}, {"image": b64(photos["grown"])})
    assert same.status_code == 200, same.text
    s = same.json()
    assert s["verdict"] == "stable", s["reasons"]
    assert abs(s["area_change_pct"]) < 12 and s["overlay_png"]
    assert not any(s["measured_ng12"].values())
    g = grown.json()
    assert g["comparable"], g["reasons"]
    assert 30 < g["area_change_pct"] < 110  # true +80 %; the outline of the grown lesion runs short
    assert g["change_score"] > s["change_score"]
    urgency = g["later_urgency"]
    measured = any("measured by comparing two photos" in r["text"] for r in urgency["reasons"])
    assert measured == (g["verdict"] == "changed")  # the reason appears exactly when a change was measured


def test_different_body_sites_cannot_tell(engine: TriageEngine, tmp_path, photos) -> None:
    with serve(engine, f"sqlite+aiosqlite:///{tmp_path / 'c.db'}") as client:
        wait_ready(client)
        r = compare(
            client,
            {"image": b64(photos["before"]), "body_site": "back"},
            {"image": b64(photos["again"]), "body_site": "face"},
        )
    body = r.json()
    assert body["verdict"] == "cannot tell" and not body["comparable"]
    assert any("different body sites" in x for x in body["reasons"])
    assert body["area_change_pct"] is None and body["delta_e"] is None and body["overlay_png"] is None


def test_bad_requests_are_problems(engine: TriageEngine, tmp_path, photos) -> None:
    with serve(engine, f"sqlite+aiosqlite:///{tmp_path / 'c.db'}") as client:
        wait_ready(client)
        both = compare(client, {"image": b64(photos["before"]), "case_id": "x"}, {"image": b64(photos["again"])})
        problem(both, 422, "validation-error")
        not_photo = compare(client, {"image": b64(pdf_bytes())}, {"image": b64(photos["again"])})
        assert 400 <= not_photo.status_code < 500
        assert not_photo.headers["content-type"].startswith("application/problem+json")
        problem(compare(client, {"case_id": "nope"}, {"image": b64(photos["again"])}), 404, "case-not-found")
        extra = client.post("/v1/lesions/compare", json={"earlier": {}, "later": {}, "x": 1}, headers=A)
        problem(extra, 422, "validation-error")


def test_someone_elses_case_is_not_found(engine: TriageEngine, tmp_path, photos) -> None:
    with serve(engine, f"sqlite+aiosqlite:///{tmp_path / 'c.db'}", store_photos=True, photo_dir=tmp_path) as client:
        wait_ready(client)
        kept = triage(client, photos["before"], A, consent_to_store=True)["id"]
        written(client, 1)
        mine = compare(client, {"case_id": kept}, {"image": b64(photos["again"])})
        theirs = client.post(
            "/v1/lesions/compare",
            json={"earlier": {"case_id": kept}, "later": {"image": b64(photos["again"])}},
            headers=B,
        )
    assert mine.status_code == 200 and mine.json()["verdict"] == "stable", mine.text
    problem(theirs, 404, "case-not-found")


def test_openapi_examples_are_valid_answers() -> None:
    """The documented examples parse as the routes' own response models (no drift between docs and schema)."""
    from service.lesion_examples import COMPARE_EXAMPLE, TIMELINE_EXAMPLE
    from service.lesion_schemas import LesionComparison, LesionTimeline

    assert LesionComparison.model_validate(COMPARE_EXAMPLE).verdict == "changed"
    assert len(LesionTimeline.model_validate(TIMELINE_EXAMPLE).visits) == 2
