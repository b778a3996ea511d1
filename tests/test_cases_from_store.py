"""Issue 18, closing the loop: `evaluate --from-store` and `calibrate --from-store` on kept cases with an
outcome or a review, on SQLite and on a real PostgreSQL server (tests/case_db.py). The cases are
written straight into the database with answers drawn at random (seeded), so the expected figures
are computed here from the same draws."""

from __future__ import annotations

import asyncio
import json
from datetime import date, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from models.knowledge.taxonomy import load_taxonomy
from models.uncertainty.calibration import load_calibration
from service.cli import main
from service.store.cases import now
from service.store.db import alchemy_config, upgrade
from service.store.models import Annotation, Case, Outcome, Review

MODEL = "embedded-pad-lite0"
CLASSES = [c.id for c in load_taxonomy().conditions[:4]]


def _answer(raw: np.ndarray) -> dict[str, Any]:
    order = np.argsort(-raw)[:3]  # top-3 kept, as an answer with top_k=3 would be
    return {"differentials": [
        {"condition_id": CLASSES[k], "label": CLASSES[k], "probability": float(raw[k]),
         "image_probability_raw": float(raw[k])} for k in order
    ]}  # fmt: skip


def _seed(url: str, n: int, seed: int = 0, first: int = 0) -> list[dict[str, Any]]:
    """``n`` overconfident answers (the top class right about 60 % of the time, at about 0.95); every
    third case's truth is a review, the rest an outcome; some carry a Fitzpatrick tag."""
    rng = np.random.default_rng(seed)
    made = []
    for i in range(n):
        truth = int(rng.integers(len(CLASSES)))
        top = truth if rng.random() < 0.6 else int((truth + 1 + rng.integers(len(CLASSES) - 1)) % len(CLASSES))
        raw = np.full(len(CLASSES), 0.05 / (len(CLASSES) - 1))
        raw[top] = 0.95
        made.append(
            {"id": f"case{first + i:04d}", "truth": CLASSES[truth], "raw": raw, "fitz": "II" if i % 2 else None}
        )

    async def write() -> None:
        config = alchemy_config(url)
        await upgrade(config.get_engine())
        async with config.create_session_maker()() as session, session.begin():
            for i, m in enumerate(made):
                at = now() - timedelta(minutes=n - i)
                session.add(Case(
                    id=m["id"], owner="api-key:a", created_at=at, model_name=MODEL, model_version="1",
                    taxonomy_version="t", photo_sha256="0" * 64, photo_width=64, photo_height=64,
                    patient_ref=f"pt-{first + i}", answer=_answer(m["raw"]),
                ))  # fmt: skip
                await session.flush()
                if i % 3 == 0:
                    session.add(Review(case_id=m["id"], reviewer="r", created_at=at, agrees=False,
                                       diagnosis=m["truth"], confidence="high"))  # fmt: skip
                else:
                    session.add(Outcome(case_id=m["id"], recorded_by="r", created_at=at, diagnosis=m["truth"],
                                        outcome_date=date.today(), source="histopathology"))  # fmt: skip
                if m["fitz"]:
                    session.add(Annotation(case_id=m["id"], annotator="r", created_at=at, kind="tags", label=None,
                                           geometry={"tags": {"fitzpatrick": m["fitz"]}}))  # fmt: skip
        await config.get_engine().dispose()

    asyncio.run(write())
    return made


def test_evaluate_from_store_reports_agreement_per_condition_and_skin_type(
    db_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    made = _seed(db_url, 40)
    assert main(["evaluate", "--from-store", "--url", db_url, "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    right = [CLASSES[int(np.argmax(m["raw"]))] == m["truth"] for m in made]
    assert report["n"] == 40 and report["accuracy"] == pytest.approx(np.mean(right))
    for condition in CLASSES:
        mine = [r for r, m in zip(right, made, strict=True) if m["truth"] == condition]
        if mine:
            assert report["per_class"][condition] == pytest.approx(np.mean(mine))
    assert report["per_fitzpatrick"]["2"]["n"] == 20
    assert report["ground_truth"] == {"review": 14, "outcome": 26}
    assert {"balanced_accuracy", "top3_accuracy", "malignant_auroc", "melanoma_sensitivity"} <= set(report)


def test_calibrate_from_store_refits_the_image_stage_or_refuses(
    db_url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "calibration.json"
    args = ["calibrate", "--from-store", "--url", db_url, "--model", MODEL, "--out", str(out)]
    _seed(db_url, 10)
    assert main(args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: 10 kept cases") and not out.exists()
    _seed(db_url, 80, seed=1, first=10)
    assert main([*args, "--json"]) == 0
    written = json.loads(out.read_text())
    image = written["stages"]["image"]
    assert image["n"] == 90 and sorted(image["classes"]) == sorted(CLASSES)
    assert image["temperature"] > 1.0  # answers at 0.95 that are right about 60 % of the time: softened
    assert written["fit"]["data"] == "case store"
    assert load_calibration(out).stages["image"].temperature == image["temperature"]  # loads as the service does
    assert json.loads(capsys.readouterr().out)["stages"]["image"]["n"] == 90
