"""The clinician viewer (`/viewer`) in a real browser: Debian's Chromium, headless, via Playwright.

The real service runs in a background thread on 127.0.0.1 (uvicorn, `auth_disabled=True`). The
browser uploads a PAD-UFES-20 development photo (a generated one where the photos are absent),
waits for the answer and checks what a clinician sees. Screenshots go to `test-artifacts/viewer/`
(gitignored; `DERMTRIAGE_TEST_ARTIFACTS` moves them). Without Chromium or Playwright the browser
tests skip locally and FAIL under CI (`CI=true`): `.ci/run` installs both.
"""

from __future__ import annotations

import csv
import json
import os
import re
import shutil
import time
from collections.abc import Iterator
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import httpx
import pytest
from live_server import browser_page, live_server
from service_photos import jpeg_bytes, lesion_photo

from models.knowledge.risk_factors import BodySite, RiskFactors
from service.app import create_app
from service.schemas import TriageResult
from service.settings import Settings

REPO = Path(__file__).resolve().parents[1]
STATIC = REPO / "service" / "static" / "viewer"
TEXT_CACHE = REPO / ".cache" / "text-embeddings"  # shared with test_service_api
PAD_DEFAULT = REPO.parent / "shared" / "data" / "pad-ufes-20"
ARTIFACTS = Path(os.environ.get("DERMTRIAGE_TEST_ARTIFACTS", REPO / "test-artifacts")) / "viewer"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--no-first-run",
]
ANSWER_TIMEOUT_MS = 120_000  # a cold CPU shared with other jobs; the answer itself takes about a second


def in_ci() -> bool:
    return os.environ.get("CI", "").lower() in ("1", "true", "yes")


def chromium_path() -> str | None:
    found = os.environ.get("DERMTRIAGE_CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")
    return found if found and Path(found).exists() else None


def need(reason: str) -> None:
    """Skip locally, fail in CI: a missing browser must never turn CI green."""
    if in_ci():
        pytest.fail(f"{reason} (CI=true: .ci/run installs it)")
    pytest.skip(reason)


def artifact(name: str) -> Path:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    return ARTIFACTS / name


# ----------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def base_url() -> Iterator[str]:
    """The real app under uvicorn in a thread; yields its base URL once the model is ready."""
    with live_server(create_app(Settings(auth_disabled=True, cache_dir=TEXT_CACHE, inference_workers=1))) as base:
        yield base


@pytest.fixture(scope="module")
def photo_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A PAD-UFES-20 melanoma photo (the first listed) when the development data is here, else a generated one."""
    pad = Path(os.environ.get("DERMTRIAGE_DATA", PAD_DEFAULT))
    if (pad / "metadata.csv").exists():
        with (pad / "metadata.csv").open(newline="") as fh:
            rows = list(csv.DictReader(fh))
        rows.sort(key=lambda r: r["diagnostic"] != "MEL")
        for row in rows:
            path = pad / "images" / (Path(row["img_id"]).stem + ".jpg")
            if path.exists():
                return path
    if os.environ.get("DERMTRIAGE_REQUIRE_DATA") == "1":
        pytest.fail(f"PAD-UFES-20 development photos not found at {pad}")
    path = tmp_path_factory.mktemp("viewer") / "lesion.jpg"
    path.write_bytes(jpeg_bytes(lesion_photo(5)))
    return path


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    exe = chromium_path()
    if exe is None:
        need("Chromium not found (apt-get install chromium chromium-driver)")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        need("Playwright for Python is not installed (pip install -e '.[dev]')")
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=exe, headless=True, args=CHROMIUM_ARGS)
        try:
            yield b
        finally:
            b.close()


@pytest.fixture
def page(browser: Any) -> Iterator[Any]:
    # a 404 from "open by id" logs a console error ("Failed to load resource"); anything else is a bug
    with browser_page(browser, tolerate=lambda e: "404" in e) as pg:
        yield pg


# ----------------------------------------------------------------------------- helpers


def triage_in_page(page: Any, base_url: str, photo_path: Path) -> dict[str, Any]:
    """Fill the form like a clinician, submit, wait for the answer; returns the answer's JSON."""
    page.goto(f"{base_url}/viewer")
    page.wait_for_selector("html[data-viewer-ready=true]")
    page.set_input_files("#photo-input", str(photo_path))
    page.wait_for_selector("#photo-preview:not([hidden])")
    page.fill("#symptoms", "mole on my back bleeding and getting bigger for 3 months, no pain")
    page.fill("#rf-age", "67")
    page.select_option("#rf-sex", "male")
    page.select_option("#rf-fitzpatrick", "2")
    page.select_option("#rf-body-site", "back")
    page.fill("#rf-diameter", "8")
    page.click("label[for=rf-bleeding-yes]")
    page.click("label[for=rf-changed_size-yes]")
    page.click("label[for=rf-pain-no]")
    with page.expect_response(lambda r: r.url.endswith("/v1/triage") and r.request.method == "POST") as answer:
        page.click("#submit")
    response = answer.value
    assert response.status == 200, response.text()
    body = response.json()
    page.wait_for_selector("#result:not([hidden]) #differentials li", timeout=ANSWER_TIMEOUT_MS)
    return body


def check_urgency(page: Any, answer: dict[str, Any]) -> None:
    """The banner shows the answer's urgency; while the engine returns none, the page says so."""
    urgency = answer.get("urgency")
    if urgency is None:
        assert page.is_visible("#urgency-na") and page.is_hidden("#urgency")
        return
    banner = page.locator("[data-testid=urgency-banner]")
    assert banner.is_visible()
    assert banner.get_attribute("data-category") == urgency["category"]
    text = banner.inner_text()
    assert urgency["next_step"] in text
    for reason in urgency["reasons"]:
        assert reason["text"] in text


def overlay_state(page: Any) -> dict[str, Any]:
    return page.eval_on_selector(
        "#heat-overlay",
        """img => ({src: img.getAttribute('src') || '', index: img.dataset.index,
                     loaded: img.complete && img.naturalWidth > 0, opacity: getComputedStyle(img).opacity,
                     width: img.getBoundingClientRect().width})""",
    )


# ----------------------------------------------------------------------------- the page without a browser


class _FormNames(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.rf: list[str] = []
        self.tristate: list[str] = []
        self.body_sites: list[str] = []
        self.ids: list[str] = []
        self.label_for: list[str] = []
        self._in_site = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = dict(attrs)
        if a.get("id"):
            self.ids.append(str(a["id"]))
        if tag == "label" and a.get("for"):
            self.label_for.append(str(a["for"]))
        if a.get("data-rf"):
            self.rf.append(str(a["data-rf"]))
        if a.get("data-tristate"):
            self.tristate.append(str(a["data-tristate"]))
        if tag == "select":
            self._in_site = a.get("data-rf") == "body_site"
        if tag == "option" and self._in_site and a.get("value"):
            self.body_sites.append(str(a["value"]))

    def handle_endtag(self, tag: str) -> None:
        if tag == "select":
            self._in_site = False


def test_viewer_form_matches_risk_factors() -> None:
    """Every control names a RiskFactors field, the body sites are the enumerated ones, inputs are labelled."""
    names = _FormNames()
    names.feed((STATIC / "index.html").read_text())
    fields = RiskFactors.model_fields
    assert set(names.rf) <= set(fields), set(names.rf) - set(fields)
    assert set(names.tristate) <= set(fields), set(names.tristate) - set(fields)
    bools = {n for n, f in fields.items() if "bool" in str(f.annotation)}
    assert set(names.tristate) == bools, bools ^ set(names.tristate)
    assert sorted(names.body_sites) == sorted(s.value for s in BodySite)
    assert len(names.ids) == len(set(names.ids)), "duplicate ids"
    for control in ("photo-input", "camera-input", "symptoms", "rf-age", "rf-fitzpatrick", "heat-opacity", "open-id"):
        assert control in names.label_for, f"#{control} has no <label for>"


def test_viewer_static_files_are_offline_and_safe() -> None:
    """No external URL (CDN, fonts) and no innerHTML: server text goes through textContent."""
    for path in STATIC.iterdir():
        text = path.read_text()
        assert not re.search(r"(?:src|href)\s*=\s*[\"']?(?:https?:)?//", text), f"external resource in {path.name}"
        assert "@import" not in text and "url(http" not in text, path.name
    js = (STATIC / "viewer.js").read_text()
    assert "innerHTML" not in js and "insertAdjacentHTML" not in js and "document.write" not in js
    assert "eval(" not in js and "new Function" not in js


def test_viewer_is_public_when_v1_needs_a_key(tiny_clip: Any) -> None:
    """With API keys on, the page and its files stay open while /v1 answers 401 without the key."""
    from litestar.testing import TestClient

    from models.knowledge.taxonomy import load_taxonomy
    from service.auth.api_keys import generate_api_key
    from service.engine import TriageEngine

    key, record = generate_api_key("viewer-tests")
    app = create_app(Settings(api_keys=record.line()), engine=TriageEngine(tiny_clip, load_taxonomy()))
    with TestClient(app) as client:
        for path in (
            "/viewer",
            "/viewer/",
            "/viewer?result=x",
            "/viewer/static/viewer.js",
            "/viewer/static/viewer.css",
        ):
            assert client.get(path).status_code == 200, path
        assert client.get("/v1/triage/x").status_code == 401
        assert client.get("/v1/triage/x", headers={"X-API-Key": key}).status_code == 404


def test_viewer_served_public_and_outside_the_schema(base_url: str) -> None:
    with httpx.Client(base_url=base_url, timeout=30) as http:
        page = http.get("/viewer")
        assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
        assert "default-src 'self'" in page.headers["content-security-policy"]
        assert 'id="triage-form"' in page.text
        assert http.get("/viewer/?result=abc").status_code == 200
        for name, kind in (("viewer.js", "javascript"), ("viewer.css", "text/css")):
            r = http.get(f"/viewer/static/{name}")
            assert r.status_code == 200 and kind in r.headers["content-type"], (name, r.headers)
        assert http.get("/viewer/static/../routes/viewer.py").status_code == 404
        paths = http.get("/schema/openapi.json").json()["paths"]
        # the pages are not API; the one JSON route under /viewer (a SMART launch's answer) is documented
        assert [p for p in paths if p.startswith("/viewer")] == ["/viewer/launch/context"]


# ----------------------------------------------------------------------------- in the browser


def test_triage_in_the_browser(page: Any, base_url: str, photo_path: Path) -> None:
    answer = triage_in_page(page, base_url, photo_path)

    # what was sent: explain on, the form's risk factors and symptoms
    assert answer["heatmaps"], "the viewer asks for explain=true"
    rf = answer["risk_factors"]
    assert rf["age"] == 67 and rf["fitzpatrick"] == 2 and rf["body_site"] == "back" and rf["diameter_mm"] == 8
    assert rf["bleeding"] is True and rf["changed_size"] is True and rf["pain"] is False
    assert "itch" not in {k for k, v in rf.items() if v is not None}, "unanswered = unknown, never no"
    assert answer["findings"] is not None

    check_urgency(page, answer)
    status = page.inner_text("#status")  # the live region: one sentence a screen reader announces
    assert "Answer ready" in status and f"Most likely: {answer['differentials'][0]['name']}" in status

    items = page.locator("#differentials li")
    assert items.count() == len(answer["differentials"]) == 5
    first = answer["differentials"][0]
    assert first["name"] in items.nth(0).inner_text()
    assert f"{first['probability'] * 100:.0f} %" in items.nth(0).inner_text() or first["probability"] < 0.1
    if first["look_alikes"]:
        assert "Look-alikes" in items.nth(0).inner_text()

    # the heatmap over the photo: the photo below, the overlay of differential 1 above
    assert page.is_visible("#heat-base")
    state = overlay_state(page)
    assert state["src"].startswith("data:image/png;base64,") and state["loaded"] and state["width"] > 100
    assert state["index"] == "0" and float(state["opacity"]) == pytest.approx(1.0)
    assert page.is_visible("#heat-legend")
    assert page.eval_on_selector("#heat-legend", "img => img.naturalWidth") > 0

    # the opacity slider, by keyboard
    page.focus("#heat-opacity")
    for _ in range(8):
        page.keyboard.press("ArrowLeft")
    page.wait_for_function("() => getComputedStyle(document.querySelector('#heat-overlay')).opacity === '0.6'")
    assert page.inner_text("#heat-opacity-value") == "60 %"

    # another differential: its own overlay, by mouse then by keyboard
    page.click("label[for=heat-tab-1]")
    second = overlay_state(page)
    assert second["index"] == "1" and second["src"] != state["src"]
    assert second["src"] == "data:image/png;base64," + answer["heatmaps"][1]["png_base64"]
    assert float(second["opacity"]) == pytest.approx(0.6), "the chosen opacity survives a switch"
    page.focus("#heat-tab-1")
    page.keyboard.press("ArrowRight")
    assert overlay_state(page)["index"] == "2"
    page.click("#differentials li:nth-child(4) button[data-heat]")
    assert overlay_state(page)["index"] == "3"

    # model, card link, the decision-support statement
    meta = page.inner_text("#meta")
    assert answer["model"]["name"] in meta and answer["model"]["version"] in meta
    assert page.get_attribute("#model-card-link", "href") == answer["model"]["card_url"]
    page.click("#model-card summary")
    page.wait_for_selector("#model-card[data-loaded]:not([data-loaded=''])")
    assert "not a diagnosis" in page.inner_text("#disclaimer")
    assert "not a diagnosis" in page.inner_text("#cds-statement")
    for section in ("uncertainty", "urgency_shap"):
        if answer.get(section) is None:
            print(f"note: the answer has no {section} yet; the viewer shows 'not available'")
    if answer.get("urgency_shap") is None:
        assert page.is_visible("#shap-na")
    else:
        assert page.locator(".shap-row").count() == len(answer["urgency_shap"]["values"])

    # the URL now opens this answer
    assert page.url.endswith(f"/viewer?result={answer['id']}")
    shot = artifact("viewer-desktop.png")
    page.screenshot(path=str(shot), full_page=True)
    print(f"screenshot: {shot}")


def test_keyboard_focus_is_visible(page: Any, base_url: str) -> None:
    """The hidden file input, the tri-state answers and the buttons show where the keyboard is."""
    page.goto(f"{base_url}/viewer")
    page.wait_for_selector("html[data-viewer-ready=true]")
    page.keyboard.press("Tab")  # the skip link comes first
    assert page.evaluate("document.activeElement.className") == "skip"
    outline = "e => getComputedStyle(e).outlineStyle"
    page.focus("#photo-input")
    page.keyboard.press("Shift+Tab")
    page.keyboard.press("Tab")  # focus by keyboard, so :focus-visible applies
    assert page.eval_on_selector("label[for=photo-input]", outline) == "solid"
    page.focus("#rf-itch-unknown")
    page.keyboard.press("ArrowRight")  # radios move by arrow keys: unknown -> yes
    assert page.is_checked("#rf-itch-yes")
    assert page.eval_on_selector("label[for=rf-itch-yes]", outline) == "solid"
    shot = artifact("viewer-keyboard-focus.png")
    page.screenshot(path=str(shot))
    print(f"screenshot: {shot}")


def test_open_result_by_id(page: Any, base_url: str, photo_path: Path) -> None:
    r = httpx.post(
        f"{base_url}/v1/triage",
        files={"image": (photo_path.name, photo_path.read_bytes(), "image/jpeg")},
        data={"options": json.dumps({"top_k": 3, "explain": True}), "symptoms": "itchy red patch"},
        headers={"X-Request-ID": f"viewer-open-{int(time.time() * 1000)}"},
        timeout=120,
    )
    assert r.status_code == 200, r.text
    answer = r.json()
    rid = answer["id"]  # the server-minted result id, not the X-Request-ID

    # the API key typed once is kept for the tab (sessionStorage) and sent as X-API-Key
    page.goto(f"{base_url}/viewer")
    page.click("#settings summary")
    page.fill("#api-key", "dt_example-key")
    page.press("#api-key", "Tab")
    with page.expect_request(lambda q: f"/v1/triage/{rid}" in q.url) as sent:
        page.goto(f"{base_url}/viewer?result={rid}")
    assert sent.value.headers.get("x-api-key") == "dt_example-key"
    assert page.input_value("#api-key") == "dt_example-key"
    page.wait_for_selector("#result:not([hidden]) #differentials li", timeout=ANSWER_TIMEOUT_MS)
    assert page.locator("#differentials li").count() == 3
    check_urgency(page, answer)
    # no photo in this tab: the overlay (which blends photo and heat) stands alone
    assert page.is_hidden("#heat-base") and overlay_state(page)["loaded"]
    assert rid in page.inner_text("#meta")
    assert page.input_value("#open-id") == rid
    shot = artifact("viewer-open-by-id.png")
    page.screenshot(path=str(shot), full_page=True)
    print(f"screenshot: {shot}")

    # an id the service does not hold: a plain-words error, not a blank page
    page.fill("#open-id", "no-such-result")
    page.click("#open-form button[type=submit]")
    page.wait_for_selector("#error:not([hidden])")
    assert "Result not found" in page.inner_text("#error")


def test_every_section_renders_and_server_text_stays_text(page: Any, base_url: str, photo_path: Path) -> None:
    """A complete answer (urgency, SHAP, uncertainty: all filled, schema-checked) served to the page by
    request interception, with markup in a caller-supplied label: every section shows and no HTML runs."""
    r = httpx.post(
        f"{base_url}/v1/triage",
        files={"image": (photo_path.name, photo_path.read_bytes(), "image/jpeg")},
        data={"options": json.dumps({"top_k": 3, "explain": True})},
        timeout=120,
    )
    assert r.status_code == 200, r.text
    real = r.json()
    evil = '<img src=x onerror="window.__xss=1">'
    diffs = real["differentials"]
    diffs[1] = {**diffs[1], "name": evil, "label": evil, "condition_id": None}
    moved = "moved up from #4 on the photo alone, past actinic keratosis, by: growth, bleeding"
    diffs[0] = {
        **diffs[0],
        "rank_change": {
            "image_rank": 4,
            "direction": "up",
            "versus": "actinic keratosis",
            "by": ["growth"],
            "text": moved,
        },
    }
    ids = [d["condition_id"] for d in diffs if d["condition_id"]]
    full = {
        **real,
        "request_id": "full-answer",
        "differentials": diffs,
        "urgency": {
            "category": "urgent",
            "score": 0.71,
            "reasons": [
                {
                    "kind": "condition",
                    "category": "urgent",
                    "text": "melanoma is plausible (18 %)",
                    "condition": "melanoma",
                },
                {"kind": "checklist", "category": "urgent", "text": "NG12 checklist 5 points <b>bold</b>"},
            ],
            "ng12": {
                "points": 5,
                "items": ["change in size (2)", "irregular colour (2)", "oozing or bleeding (1)"],
                "suspected_cancer": True,
            },
            "red_flags": ["bleeding"],
            "driving_condition": "melanoma",
            "next_step": "Refer on the suspected-cancer pathway (seen within 2 weeks).",
        },
        "urgency_shap": {
            "score": 0.71,
            "base_value": 0.3,
            "values": {"image": 0.25, "symptoms": 0.08, "bleeding": 0.12, "age": -0.04},
            "features": {"image": ["image"], "symptoms": ["symptoms"], "bleeding": ["bleeding"], "age": ["age"]},
            "additivity_error": 0.0,
        },
        "uncertainty": {
            "calibrated": True,
            "calibration_id": "embedded-pad-lite0/test",
            "temperature": 1.3,
            "prediction_set": [*ids, "melanocytic_nevus"],
            "coverage": 0.9,
            "entropy": 1.2,
            "top2_margin": 0.05,
            "flags": [
                {
                    "name": "ambiguous",
                    "measure": "top2_margin",
                    "value": 0.05,
                    "threshold": 0.1,
                    "requires_review": True,
                    "message": "The top two conditions are nearly tied.",
                }
            ],
            "needs_review": True,
            "review_reasons": ["The top two conditions are nearly tied."],
        },
    }
    TriageResult.model_validate(full)  # the mock is a valid answer, not a guess at the shape

    page.route(
        "**/v1/triage/full-answer",
        lambda route: route.fulfill(status=200, content_type="application/json", body=json.dumps(full)),
    )
    page.goto(f"{base_url}/viewer?result=full-answer")
    page.wait_for_selector("#result:not([hidden]) #differentials li", timeout=ANSWER_TIMEOUT_MS)
    check_urgency(page, full)
    banner = page.inner_text("#urgency")
    assert "Urgent" in banner and "<b>bold</b>" in banner and "suspected-cancer pathway" in banner
    assert "Needs review" in page.inner_text("#review") and "nearly tied" in page.inner_text("#review")
    assert page.locator("#prediction-set .chip").count() == len(ids) + 1
    assert "90 % coverage" in page.inner_text("#prediction-set")
    assert page.locator("#differentials .tag.set").count() == len(ids)
    # one rank-change line per differential that has one (the real answer's and the one set above)
    assert page.locator("#differentials .rank-change").count() == sum(1 for d in diffs if d.get("rank_change"))
    assert moved in page.locator("#differentials li").nth(0).inner_text()
    rows = page.locator(".shap-row")
    assert rows.count() == 4 and rows.nth(0).get_attribute("data-feature") == "image"
    assert page.locator(".shap-row[data-feature=age] .shap-bar.neg").count() == 1
    assert page.locator(".shap-row[data-feature=bleeding] .shap-bar.pos").count() == 1
    # the caller's label is shown as text; no element was made from it and nothing ran
    assert evil in page.inner_text("#differentials")
    assert page.locator("#differentials img").count() == 0
    assert page.evaluate("window.__xss === undefined")
    shot = artifact("viewer-full-answer.png")
    page.screenshot(path=str(shot), full_page=True)
    print(f"screenshot: {shot}")


def test_phone_width(browser: Any, base_url: str, photo_path: Path) -> None:
    context = browser.new_context(
        viewport={"width": 390, "height": 844}, device_scale_factor=2, is_mobile=True, has_touch=True
    )
    try:
        pg = context.new_page()
        answer = triage_in_page(pg, base_url, photo_path)
        check_urgency(pg, answer)
        overflow = pg.evaluate("document.documentElement.scrollWidth - document.documentElement.clientWidth")
        assert overflow <= 0, f"horizontal scroll of {overflow} px at phone width"
        stage = pg.eval_on_selector("#heat-stage", "e => e.getBoundingClientRect().width")
        assert 300 <= stage <= 390
        assert pg.get_attribute("#camera-input", "capture") == "environment"
        shot = artifact("viewer-phone.png")
        pg.screenshot(path=str(shot), full_page=True)
        print(f"screenshot: {shot}")
    finally:
        context.close()
