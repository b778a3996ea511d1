"""Issue 18 in the browser: the viewer's review panel, annotation tool, past cases and monitoring chart,
driven in Debian's Chromium (the fixtures and helpers of tests/test_viewer_e2e.py: skipped locally
without Chromium, a failure under CI=true).

The service runs under uvicorn with authentication off and its own SQLite case database in a temp
dir. The clinician triages a photo, draws a polygon with the mouse, labels and tags it, saves it,
reviews the case, reloads the page, reopens the case from the past-case list and sees the polygon
and the review again; the stored rows are checked through the API.
"""

from __future__ import annotations

from collections.abc import Iterator
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import httpx
import pytest
import test_viewer_e2e as ve
from live_server import browser_page, live_server

from service.app import create_app
from service.settings import Settings

browser = ve.browser  # Chromium through Playwright, one per module
photo_path = ve.photo_path  # a PAD-UFES-20 photo, or a generated one
EXPECTED_CONSOLE = ("404", "422")  # a case still on the write queue; the deliberate 422 below
# every labelled control of the review panel, the annotation tool, past cases and monitoring
CONTROLS = {
    "rv-agrees-yes": "Agree",
    "rv-agrees-no": "Disagree",
    "rv-diagnosis": "Your diagnosis",
    "rv-confidence": "Confidence",
    "rv-urgency": "Urgency override",
    "rv-reason": "Reason for the override",
    "rv-note": "Note",
    "ann-mode-polygon": "Polygon",
    "ann-mode-box": "Box",
    "ann-label": "Label",
    "ann-subtype": "Subtype",
    "ann-severity": "Severity",
    "ann-body-site": "Body site",
    "ann-fitzpatrick": "Fitzpatrick type",
    "mon-weeks": "Weeks",
}


class _Labels(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.ids: list[str] = []
        self.label_for: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = dict(attrs)
        if a.get("id"):
            self.ids.append(str(a["id"]))
        if tag == "label" and a.get("for"):
            self.label_for.append(str(a["for"]))
        assert not any(k.startswith("on") for k in a), f"inline handler on <{tag}> (the CSP forbids them)"


def test_new_controls_are_labelled_and_outside_the_triage_form() -> None:
    """Without a browser: every new control has a <label for>, ids stay unique, no inline handler, and
    no new control is one the triage form collects (data-rf, fieldset.tri) into the risk factors."""
    html = (ve.STATIC / "index.html").read_text()
    page = _Labels()
    page.feed(html)
    assert len(page.ids) == len(set(page.ids))
    for control in CONTROLS:
        assert control in page.ids and control in page.label_for, control
    panels = html[html.index('id="conditions-list"') : html.index('id="shap-card"')]
    assert "data-rf" not in panels and 'class="tri"' not in panels and "data-tristate" not in panels
    assert '<script src="/viewer/static/clinician.js" defer></script>' in html


@pytest.fixture(scope="module")
def service_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    db = tmp_path_factory.mktemp("clinician") / "cases.db"
    settings = Settings(
        auth_disabled=True, cache_dir=ve.TEXT_CACHE, inference_workers=1, database_url=f"sqlite+aiosqlite:///{db}"
    )
    with live_server(create_app(settings)) as base:
        yield base


@pytest.fixture
def page(browser: Any) -> Iterator[Any]:
    with browser_page(browser, tolerate=lambda e: any(code in e for code in EXPECTED_CONSOLE)) as pg:
        yield pg


def _stage(page: Any) -> dict[str, float]:
    return page.eval_on_selector(
        "#ann-svg",
        "s => { const r = s.getBoundingClientRect(); return {x: r.left, y: r.top, w: r.width, h: r.height,"
        " pw: +s.dataset.width, ph: +s.dataset.height}; }",
    )


def _points(attr: str) -> list[tuple[float, float]]:
    return [(float(x), float(y)) for x, y in (p.split(",") for p in attr.split())]


def test_polygon_review_reload_and_reopen(page: Any, service_url: str, photo_path: Path) -> None:
    answer = ve.triage_in_page(page, service_url, photo_path)
    cid = answer["id"]
    width, height = answer["image"]["width"], answer["image"]["height"]
    page.wait_for_selector(f"html[data-case-loaded='{cid}']", timeout=30_000)
    assert page.is_visible("#ann-photo") and page.get_attribute("#ann-photo", "src").startswith("blob:")
    assert page.get_attribute("#ann-svg", "viewBox") == f"0 0 {width} {height}"

    # draw a polygon with the mouse: three clicks and a double-click on the fourth point
    page.locator("#annotate-card").scroll_into_view_if_needed()
    s = _stage(page)
    fractions = [(0.2, 0.25), (0.7, 0.2), (0.75, 0.7), (0.3, 0.8)]
    for fx, fy in fractions[:-1]:
        page.mouse.click(s["x"] + fx * s["w"], s["y"] + fy * s["h"])
    page.mouse.dblclick(s["x"] + fractions[-1][0] * s["w"], s["y"] + fractions[-1][1] * s["h"])
    assert page.locator("#ann-draft-layer polygon.draft").count() == 1, page.inner_text("#ann-draft")
    assert "4 points, closed" in page.inner_text("#ann-draft")
    expected = [(fx * width, fy * height) for fx, fy in fractions]
    tol = 1.5 * width / s["w"] + 0.2  # one displayed pixel and a little, in photo pixels

    # label by type-ahead over the taxonomy (the top differential's name), and lesion tags
    top = answer["differentials"][0]
    page.fill("#ann-label", top["name"][:-1])  # type-ahead: a partial name lists it among the matches
    assert top["name"] in page.inner_text("#ann-label-pick") and "match" in page.inner_text("#ann-label-pick")
    page.fill("#ann-label", top["name"])
    assert f"({top['condition_id']})" in page.inner_text("#ann-label-pick")
    page.fill("#ann-subtype", "nodular")
    page.select_option("#ann-severity", "moderate")
    page.select_option("#ann-body-site", "back")
    page.select_option("#ann-fitzpatrick", "II")
    with page.expect_response(
        lambda r: r.url.endswith(f"/v1/cases/{cid}/annotations") and r.request.method == "POST"
    ) as saved:
        page.click("#ann-save")
    assert saved.value.status == 201, saved.value.text()
    ann_id = saved.value.json()["id"]
    drawn = page.locator(f"#ann-saved polygon[data-annotation-id='{ann_id}']")
    assert drawn.count() == 1
    assert all(
        abs(a - e) <= tol
        for p, q in zip(_points(drawn.get_attribute("points")), expected, strict=True)
        for a, e in zip(p, q, strict=True)
    )
    assert page.locator("#ann-draft-layer > *").count() == 0

    # the stored row, through the API
    rows = httpx.get(f"{service_url}/v1/cases/{cid}/annotations", timeout=30).json()
    assert len(rows) == 1
    row = rows[0]
    assert row["kind"] == "polygon" and row["label"] == top["condition_id"] and len(row["points"]) == 4
    assert all(
        abs(a - e) <= tol for p, q in zip(row["points"], expected, strict=True) for a, e in zip(p, q, strict=True)
    )
    assert row["tags"] == {"subtype": "nodular", "severity": "moderate", "body_site": "back", "fitzpatrick": "II"}

    # a review: an override without its reason is refused (422), the error sits next to the reason field
    page.click("label[for=rv-agrees-no]")
    page.fill("#rv-diagnosis", answer["differentials"][1]["condition_id"])
    page.select_option("#rv-confidence", "high")
    page.select_option("#rv-urgency", "urgent")
    page.fill("#rv-note", "<b>dermoscopy</b> shows regression")
    with page.expect_response(
        lambda r: r.url.endswith(f"/v1/cases/{cid}/reviews") and r.request.method == "POST"
    ) as refused:
        page.click("#rv-save")
    assert refused.value.status == 422
    page.wait_for_selector("#rv-err-urgency_reason:not([hidden])")
    assert "required" in page.inner_text("#rv-err-urgency_reason")
    assert page.get_attribute("#rv-reason", "aria-invalid") == "true"
    assert page.evaluate("document.activeElement.id") == "rv-reason"
    page.fill("#rv-reason", "rapid change reported by the patient")
    with page.expect_response(
        lambda r: r.url.endswith(f"/v1/cases/{cid}/reviews") and r.request.method == "POST"
    ) as ok:
        page.click("#rv-save")
    assert ok.value.status == 201, ok.value.text()
    page.wait_for_selector("#rv-list li[data-review-id]")
    assert page.is_hidden("#rv-err-urgency_reason")
    listed = page.inner_text("#rv-list")
    assert "Disagrees" in listed and "confidence high" in listed and "<b>dermoscopy</b> shows regression" in listed
    assert page.locator("#rv-list b").count() == 0
    review = httpx.get(f"{service_url}/v1/cases/{cid}/reviews", timeout=30).json()
    assert len(review) == 1 and review[0]["agrees"] is False and review[0]["urgency_override"] == "urgent"
    assert review[0]["diagnosis"] == answer["differentials"][1]["condition_id"]
    page.screenshot(path=str(ve.artifact("viewer-annotate-review.png")), full_page=True)

    # reload: the photo is gone from the tab (the service keeps none here); reopen from the past cases
    page.reload()
    page.goto(f"{service_url}/viewer")
    page.wait_for_selector("html[data-clinician-ready=true]")
    page.click("#past-load")
    item = page.locator(f"#past-list button[data-case-id='{cid}']")
    item.wait_for()
    assert page.locator("#past-list li").first.get_attribute("data-case-id") == cid  # newest first
    assert "reviewed" in page.inner_text(f"#past-list li[data-case-id='{cid}']")
    item.click()
    page.wait_for_selector(f"html[data-case-loaded='{cid}']")
    page.wait_for_selector(f"#ann-saved polygon[data-annotation-id='{ann_id}']")
    again = page.get_attribute(f"#ann-saved polygon[data-annotation-id='{ann_id}']", "points")
    assert _points(again) == [tuple(p) for p in row["points"]]
    assert page.locator("#ann-photo").count() == 0 and page.is_visible(".ann-placeholder")
    assert page.is_disabled("#ann-close"), "no drawing without the photo"
    assert "nodular" in page.inner_text("#ann-list") and "4 points" in page.inner_text("#ann-list")
    assert "rapid change reported by the patient" in page.inner_text("#rv-list")
    assert page.url.endswith(f"/viewer?result={cid}")
    assert top["name"] in page.inner_text("#differentials")
    page.screenshot(path=str(ve.artifact("viewer-reopened-case.png")), full_page=True)

    # the monitoring chart: one bar per week asked for; this week's bar counts this week's cases
    page.fill("#mon-weeks", "6")
    page.click("#mon-show")
    page.wait_for_selector("#mon-chart svg[data-weeks='6']")
    weeks = httpx.get(f"{service_url}/v1/monitoring", params={"weeks": 6}, timeout=30).json()["weeks"]
    bars = page.locator("#mon-chart .mon-bar")
    assert bars.count() == 6 == len(weeks)
    assert bars.nth(5).get_attribute("data-week") == weeks[-1]["week"]
    assert int(bars.nth(5).get_attribute("data-cases")) == weeks[-1]["cases"] >= 1
    assert weeks[-1]["reviews"] >= 1 and page.locator("#mon-chart polyline.review_agreement").count() == 1
    assert page.locator("#mon-table tbody tr").count() == 6
    page.fill("#mon-weeks", "500")
    page.click("#mon-show")
    page.wait_for_selector("#mon-err:not([hidden])")
    assert page.get_attribute("#mon-weeks", "aria-invalid") == "true"
    page.screenshot(path=str(ve.artifact("viewer-monitoring.png")), full_page=True)


def test_box_by_drag_is_kept_in_photo_pixels(page: Any, service_url: str, photo_path: Path) -> None:
    answer = ve.triage_in_page(page, service_url, photo_path)
    cid = answer["id"]
    width, height = answer["image"]["width"], answer["image"]["height"]
    page.wait_for_selector(f"html[data-case-loaded='{cid}']", timeout=30_000)
    page.locator("#annotate-card").scroll_into_view_if_needed()
    page.click("label[for=ann-mode-box]")
    s = _stage(page)
    page.mouse.move(s["x"] + 0.6 * s["w"], s["y"] + 0.5 * s["h"])
    page.mouse.down()
    page.mouse.move(s["x"] + 0.4 * s["w"], s["y"] + 0.3 * s["h"], steps=5)  # dragged up-left
    page.mouse.up()
    # saving without a label: the service's 422 is shown at the label field
    page.click("#ann-save")
    page.wait_for_selector("#ann-err-label:not([hidden])")
    page.fill("#ann-label", answer["differentials"][0]["condition_id"])
    with page.expect_response(lambda r: r.url.endswith("/annotations") and r.request.method == "POST") as saved:
        page.click("#ann-save")
    assert saved.value.status == 201
    x, y, w, h = saved.value.json()["box"]
    tol = 1.5 * width / s["w"] + 0.2
    for got, want in ((x, 0.4 * width), (y, 0.3 * height), (w, 0.2 * width), (h, 0.2 * height)):
        assert abs(got - want) <= tol
    assert page.locator("#ann-saved rect[data-kind=box]").count() == 1


def test_clinician_controls_are_labelled_and_reachable_by_keyboard(page: Any, service_url: str) -> None:
    page.goto(f"{service_url}/viewer")
    page.wait_for_selector("html[data-clinician-ready=true]")
    page.evaluate("document.getElementById('result').hidden = false")  # the panels sit in the result
    for control, text in CONTROLS.items():
        assert page.get_by_label(text, exact=False).first.get_attribute("id") is not None
        labelled = page.eval_on_selector(f"#{control}", "e => Array.from(e.labels || []).map(l => l.textContent)")
        assert any(text in t for t in labelled), (control, labelled)
    # the review form in tab order, focus visible on each
    page.focus("#rv-diagnosis")
    order = []
    for _ in range(4):
        page.keyboard.press("Tab")
        order.append(page.evaluate("document.activeElement.id"))
    assert order == ["rv-confidence", "rv-urgency", "rv-reason", "rv-note"]
    assert page.eval_on_selector("#rv-note", "e => getComputedStyle(e).outlineStyle") == "solid"
    page.focus("#rv-agrees-yes")
    page.keyboard.press("Shift+Tab")
    page.keyboard.press("Tab")
    assert page.eval_on_selector("label[for=rv-agrees-yes]", "e => getComputedStyle(e).outlineStyle") == "solid"
    page.keyboard.press("ArrowRight")
    assert page.is_checked("#rv-agrees-no")
    # the monitoring form works from the keyboard alone
    page.focus("#mon-weeks")
    page.fill("#mon-weeks", "3")
    page.keyboard.press("Enter")
    page.wait_for_selector("#mon-chart svg[data-weeks='3']")
    assert page.locator("#mon-chart .mon-bar").count() == 3
