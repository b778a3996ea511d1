"""The SMART EHR launch as a clinician meets it, in Chromium: the EHR opens `/viewer/launch`, the browser
goes through the EHR's (real Authlib) authorization and comes back, the launch page shows the patient's
triage, and "open the full answer" renders it in the viewer from the launch cookie alone: no API-key
prompt, and the access token never reaches the page."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
import test_viewer_e2e as ve
from ehr_client import media, patient, searchset
from live_server import browser_page, free_port, live_server
from service_photos import jpeg_bytes, lesion_photo
from smart_ehr import Client, SmartEhr, smart_ehr

from models.knowledge.taxonomy import load_taxonomy
from service.app import create_app
from service.engine import TriageEngine
from service.settings import Settings

browser = ve.browser  # Chromium through Playwright, one per module


@pytest.fixture(scope="module")
def port() -> int:
    return free_port()


@pytest.fixture(scope="module")
def ehr(port: int) -> Iterator[SmartEhr]:
    with smart_ehr() as server:
        server.clients["dt-viewer"] = Client("dt-viewer", (f"http://127.0.0.1:{port}/viewer/launch/callback",))
        photo = jpeg_bytes(lesion_photo(12))
        by_ref = media(photo, "m1") | {"content": {"contentType": "image/jpeg", "url": "Binary/b1"}}
        server.serve_json("/fhir/Patient/p1", patient())
        server.serve_json("/fhir/Media?", searchset(by_ref))
        server.serve_json("/fhir/Observation?", searchset())
        server.serve_json("/fhir/DocumentReference?", searchset())
        server.serve_bytes("/fhir/Binary/b1", photo, "image/jpeg")
        yield server


@pytest.fixture(scope="module")
def base_url(tiny_clip: Any, ehr: SmartEhr, port: int) -> Iterator[str]:
    """The app (SMART configured for the test EHR, authentication on: no API key anywhere) under uvicorn."""
    settings = Settings(smart_clients={ehr.fhir: {"client_id": "dt-viewer"}}, cds_fetch_allow_hosts="127.0.0.1")
    with live_server(create_app(settings, engine=TriageEngine(tiny_clip, load_taxonomy())), port) as base:
        yield base


def test_ehr_launch_opens_the_triage_in_the_viewer(base_url: str, ehr: SmartEhr, browser: Any) -> None:
    # uncaught errors fail; the browser's own lines for 401/404 responses (the viewer's probes) do not
    with browser_page(browser, tolerate=lambda e: e.startswith("Failed to load resource")) as page:
        page.goto(f"{base_url}/viewer/launch?iss={ehr.fhir}&launch=launch-123")
        page.wait_for_selector("#answer:not([hidden])", timeout=60_000)
        assert "Patient p1" in page.inner_text("#status")
        launch_names = page.locator("#differentials li").all_inner_texts()
        assert launch_names, "the launch page shows no differentials"
        page.click("#open")
        page.wait_for_url(f"{base_url}/viewer?launch=smart")
        page.wait_for_function("document.getElementById('differentials').children.length > 0", timeout=60_000)
        status = page.inner_text("#status")
        shown = page.inner_text("body")
        page_state = page.evaluate("document.cookie + JSON.stringify(localStorage) + location.href")
        key_prompt = page.input_value("#api-key")
    top = launch_names[0].rsplit(" ", 1)[0]  # "Name 42%" on the launch page
    assert top in shown, f"the viewer does not show the launch's top differential {top!r}"
    assert "EHR launch" in status and not key_prompt  # opened without an API key
    assert ehr.tokens and all(t not in shown and t not in page_state for t in ehr.tokens)
