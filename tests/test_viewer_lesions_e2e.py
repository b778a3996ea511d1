"""Issue 21 in the browser: the lesion outline over the photo (toggle), the annotation tool starting from
the proposed outline (and a vertex dragged to correct it), and the lesion timeline's slider, driven in
Debian's Chromium (the fixtures and helpers of tests/test_viewer_e2e.py: skipped locally without
Chromium, a failure under CI=true).

The service runs under uvicorn with authentication off, its own SQLite case database and kept photos
in a temp dir. What the page draws is checked against the API's own answer, so each test fails if
the viewer stops drawing, hiding, proposing or sliding what the service says.
"""

from __future__ import annotations

import io
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import test_viewer_e2e as ve
from live_server import browser_page, live_server
from PIL import Image
from test_lesion_compare import moved

from models.fitting.change_eval import grow
from models.photos import load_photo
from models.segmentation import segment
from service.app import create_app
from service.settings import Settings

browser = ve.browser  # Chromium through Playwright, one per module
photo_path = ve.photo_path  # a PAD-UFES-20 photo, or a generated one
LESION_REF = "mole-e2e"


@pytest.fixture(scope="module")
def service_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    tmp = tmp_path_factory.mktemp("lesions")
    settings = Settings(
        auth_disabled=True,
        cache_dir=ve.TEXT_CACHE,
        inference_workers=1,
        database_url=f"sqlite+aiosqlite:///{tmp / 'cases.db'}",
        store_photos=True,
        photo_dir=tmp / "photos",
    )
    with live_server(create_app(settings)) as base:
        yield base


@pytest.fixture
def page(browser: Any) -> Iterator[Any]:
    with browser_page(browser, tolerate=lambda e: "404" in e) as pg:  # a case still on the write queue
        yield pg


def _points(attr: str | None) -> list[tuple[float, float]]:
    assert attr, "no points drawn"
    return [(float(x), float(y)) for x, y in (p.split(",") for p in attr.split())]


def _outlined_answer(page: Any, url: str, photo: Path) -> dict[str, Any]:
    answer = ve.triage_in_page(page, url, photo)
    seg = answer.get("segmentation")
    assert seg and seg["found"] and len(seg["polygon"]) > 2, f"the viewer's triage found no outline: {seg}"
    return answer


def test_outline_is_drawn_over_the_photo_and_toggles(page: Any, service_url: str, photo_path: Path) -> None:
    seg = _outlined_answer(page, service_url, photo_path)["segmentation"]
    layer = "#heat-outline"
    page.wait_for_selector(f"{layer} polygon", state="attached")
    assert page.get_attribute(layer, "viewBox") == f"0 0 {seg['photo_width']} {seg['photo_height']}"
    assert _points(page.get_attribute(f"{layer} polygon", "points")) == [tuple(map(float, p)) for p in seg["polygon"]]
    hidden = f"document.querySelector('{layer}').hidden"
    assert page.evaluate(hidden) is False
    measures = page.inner_text("#outline-measures")
    assert f"longest diameter {round(seg['longest_diameter_px'])} px" in measures, measures
    page.uncheck("#outline-toggle")
    assert page.evaluate(hidden) is True
    page.check("#outline-toggle")
    assert page.evaluate(hidden) is False
    page.screenshot(path=str(ve.artifact("lesion-outline.png")), full_page=False)


def test_annotation_starts_from_the_proposed_outline(page: Any, service_url: str, photo_path: Path) -> None:
    answer = _outlined_answer(page, service_url, photo_path)
    seg = answer["segmentation"]
    cid = answer["id"]
    page.wait_for_selector(f"html[data-case-loaded='{cid}']", timeout=30_000)
    button = page.locator("#ann-from-outline")
    assert button.is_enabled()
    page.locator("#annotate-card").scroll_into_view_if_needed()
    button.click()
    stage = page.eval_on_selector(
        "#ann-svg",
        "s => { const r = s.getBoundingClientRect(); return {x: r.left, y: r.top, w: r.width, h: r.height,"
        " pw: +s.dataset.width, ph: +s.dataset.height}; }",
    )
    sx, sy = stage["pw"] / seg["photo_width"], stage["ph"] / seg["photo_height"]
    proposed = [(x * sx, y * sy) for x, y in seg["polygon"]]
    drawn = _points(page.get_attribute("#ann-draft-layer polygon.draft", "points"))
    assert len(drawn) == len(proposed)
    assert all(abs(a - c) <= 0.11 and abs(b - d) <= 0.11 for (a, b), (c, d) in zip(drawn, proposed, strict=True))
    assert f"{len(proposed)} points, closed" in page.inner_text("#ann-draft")

    # correct the proposal: drag its first vertex 8 % of the photo's width to the right
    per_px = stage["w"] / stage["pw"]  # displayed pixels per photo pixel
    x0, y0 = stage["x"] + drawn[0][0] * per_px, stage["y"] + drawn[0][1] * stage["h"] / stage["ph"]
    dx = 0.08 * stage["w"] * (1 if drawn[0][0] < stage["pw"] / 2 else -1)
    page.mouse.move(x0, y0)
    page.mouse.down()
    page.mouse.move(x0 + dx / 2, y0, steps=4)
    page.mouse.move(x0 + dx, y0, steps=4)
    page.mouse.up()
    moved_pts = _points(page.get_attribute("#ann-draft-layer polygon.draft", "points"))
    assert len(moved_pts) == len(drawn)
    assert abs(moved_pts[0][0] - (drawn[0][0] + dx / per_px)) < 2.5 and abs(moved_pts[0][1] - drawn[0][1]) < 2.5
    assert moved_pts[1:] == drawn[1:]


def _visit_photos(pad_dir: Path) -> list[bytes]:
    """A development photo, the same scene shot again, and its lesion grown by 80 % then shot again."""
    rgb = np.asarray(load_photo(pad_dir / "images" / "PAT_1418_1447_360.jpg"))
    mask = segment(Image.fromarray(rgb)).mask
    big, _ = grow(rgb, mask, 0.8)
    out = []
    for arr in (rgb, moved(rgb, mask)[0], moved(big, mask)[0]):
        buf = io.BytesIO()
        Image.fromarray(arr).save(buf, format="JPEG", quality=92)
        out.append(buf.getvalue())
    return out


def _js_number(x: float) -> str:
    """How JavaScript prints a number (3.0 -> '3')."""
    return str(int(x)) if float(x).is_integer() else repr(float(x))


def _change_text(step: dict[str, Any]) -> str:
    return f"Verdict: {step['verdict']}. "


def test_timeline_slider_shows_each_pair_of_visits(page: Any, service_url: str, pad_dir: Path) -> None:
    ids = []
    for photo in _visit_photos(pad_dir):
        options = {"lesion_ref": LESION_REF, "consent_to_store": True}
        r = httpx.post(
            f"{service_url}/v1/triage",
            files={"image": ("p.jpg", photo, "image/jpeg")},
            data={"options": json.dumps(options)},
            timeout=120,
        )
        assert r.status_code == 200, r.text
        ids.append(r.json()["id"])
    timeline: dict[str, Any] = {}
    for _ in range(200):  # the case writes are queued: wait until all three are kept
        timeline = httpx.get(f"{service_url}/v1/lesions/{LESION_REF}/timeline", timeout=120).json()
        if timeline.get("total") == 3 and len(timeline.get("changes", [])) == 2:
            break
        page.wait_for_timeout(250)
    assert [v["case_id"] for v in timeline["visits"]] == ids
    steps = timeline["changes"]

    page.goto(f"{service_url}/viewer")
    page.wait_for_selector("html[data-viewer-ready=true]")
    page.fill("#tl-ref", LESION_REF)
    page.click("#tl-show")
    page.wait_for_selector("#tl-body:not([hidden])", timeout=ve.ANSWER_TIMEOUT_MS)
    slider = page.locator("#tl-slider")
    assert slider.get_attribute("max") == "1" and slider.input_value() == "1"  # the latest pair first
    assert page.inner_text("#tl-slider-value") == "2–3 of 3"
    assert page.inner_text("#tl-change").startswith(_change_text(steps[1]))
    assert f"Area +{_js_number(steps[1]['area_change_pct'])} %" in page.inner_text("#tl-change")

    slider.focus()
    page.keyboard.press("ArrowLeft")  # back to the first two visits
    assert slider.input_value() == "0"
    assert page.inner_text("#tl-slider-value") == "1–2 of 3"
    assert page.inner_text("#tl-change").startswith(_change_text(steps[0]))
    first = timeline["visits"][0]["outline"]
    own = _points(page.get_attribute("#tl-stage-a polygon.own", "points"))
    assert own == [tuple(map(float, p)) for p in first["polygon"]]
    registered = page.locator("#tl-stage-a polygon.registered")
    if len(steps[0]["later_outline_on_earlier"]) > 2:
        assert _points(registered.get_attribute("points")) == [
            tuple(map(float, p)) for p in steps[0]["later_outline_on_earlier"]
        ]
    page.wait_for_function("() => document.querySelector('#tl-stage-b img').src.startsWith('blob:')")
    assert page.inner_text("#tl-cap-b").startswith(timeline["visits"][1]["created_at"][:10])
    page.screenshot(path=str(ve.artifact("lesion-timeline.png")), full_page=False)
