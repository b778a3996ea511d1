"""A photo kind routed to its own model: dermatoscope images go to the model that saw dermoscopy,
everything else to the default; both are listed by /v1/models and every answer names its model."""

from __future__ import annotations

from typing import Any

import pytest
from litestar.testing import TestClient
from service_photos import jpeg_bytes, lesion_photo
from test_service_api import wait_ready

from models.backends.base import ModelCard
from models.backends.open_clip_backend import OpenClipBackend
from models.knowledge.taxonomy import load_taxonomy
from service.app import create_app
from service.engine import TriageEngine
from service.settings import Settings


@pytest.fixture(scope="module")
def client(tiny_clip: Any) -> Any:
    card = ModelCard(
        name="tiny-dermoscopic",
        version="0",
        family="open_clip",
        source="test",
        license="none",
        modality=["dermoscopic"],
    )
    derm = OpenClipBackend.from_model(
        tiny_clip.model, tiny_clip.tokenizer, card=card, preprocessing=tiny_clip.preprocessing
    )
    taxonomy = load_taxonomy()
    app = create_app(Settings(auth_disabled=True), engine=TriageEngine(tiny_clip, taxonomy))
    with TestClient(app) as c:
        wait_ready(c)
        app.state.service.modality_engines = {"dermoscopic": TriageEngine(derm, taxonomy)}
        yield c


def _triage(client: TestClient, modality: str | None) -> dict[str, Any]:
    data = {"modality": modality} if modality else {}
    photo = jpeg_bytes(lesion_photo(2))
    r = client.post("/v1/triage", files={"image": ("p.jpg", photo, "image/jpeg")}, data=data)
    assert r.status_code == 200, r.text
    return r.json()


def test_dermoscopic_photos_go_to_the_dermoscopic_model(client: TestClient) -> None:
    assert _triage(client, "dermoscopic")["model"]["name"] == "tiny-dermoscopic"
    assert _triage(client, "clinical")["model"]["name"] == "tiny-test-clip"
    assert _triage(client, None)["model"]["name"] == "tiny-test-clip"


def test_models_lists_the_routed_model(client: TestClient) -> None:
    body = client.get("/v1/models").json()
    assert body["loaded"]["ref"]["name"] == "tiny-test-clip"
    assert body["routed"]["dermoscopic"]["ref"]["name"] == "tiny-dermoscopic"
    assert client.get("/v1/models/tiny-dermoscopic").json()["modality"] == ["dermoscopic"]


def test_dermoscopic_model_setting() -> None:
    assert Settings(dermoscopic_model="none").dermoscopic_model is None
    assert Settings(dermoscopic_model="my-derm-model").dermoscopic_model == "my-derm-model"
