"""SHAP values of the urgency score: exact additivity, the explained score is the answer's, speed."""

from __future__ import annotations

import time

import numpy as np
import pytest

from explain.risk_shap import explain_urgency
from models.knowledge.risk_factors import RiskFactors
from models.knowledge.symptoms import extract_findings
from models.knowledge.taxonomy import load_taxonomy
from models.scoring.fusion import fuse, load_fusion
from models.scoring.urgency import assess_urgency

TAX = load_taxonomy()
MODEL = load_fusion()


def _case(seed: int) -> tuple[dict[str, float], dict[str, float]]:
    rng = np.random.default_rng(seed)
    image = dict(zip(TAX.ids, rng.dirichlet(np.ones(len(TAX.ids))).tolist(), strict=True))
    sims = dict(zip(TAX.ids, rng.normal(0.2, 0.05, len(TAX.ids)).tolist(), strict=True))
    return image, sims


@pytest.mark.parametrize(
    ("risk", "text"),
    [
        (RiskFactors(age=63, body_site="back", bleeding=True, fitzpatrick=2), "mole getting bigger for 2 months"),
        (
            RiskFactors(
                age=30,
                sex="female",
                body_site="face",
                itch=True,
                pain=False,
                many_moles=True,
                immunosuppression="transplant",
                diameter_mm=8,
                changed_colour=True,
            ),
            "no bleeding",
        ),
        (None, None),
        (RiskFactors(fever=True, spreading_redness=True), None),
    ],
)
def test_additivity_and_same_score_as_the_answer(risk: RiskFactors | None, text: str | None) -> None:
    image, sims = _case(len(text or ""))
    findings = extract_findings(text) if text else None
    shap_values = explain_urgency(image, sims if text else None, risk, findings, model=MODEL, taxonomy=TAX)
    answer = assess_urgency(fuse(image, sims if text else None, risk, findings, model=MODEL), taxonomy=TAX)
    assert shap_values.score == pytest.approx(answer.score, abs=1e-12)
    total = shap_values.base_value + sum(shap_values.values.values())
    assert total == pytest.approx(answer.score, abs=1e-6)
    assert shap_values.additivity_error < 1e-6
    assert "image" in shap_values.values
    assert len(shap_values.values) <= 8


def test_background_is_nothing_known_and_features_are_grouped_when_many() -> None:
    image, _sims = _case(1)
    nothing = assess_urgency(fuse(dict.fromkeys(TAX.ids, 1 / len(TAX.ids)), model=MODEL), taxonomy=TAX)
    many = RiskFactors(age=50, sex="male", fitzpatrick=1, body_site="arm", bleeding=True, itch=True, pain=True,
                       elevation=True, smoker=True)  # fmt: skip
    result = explain_urgency(image, None, many, None, model=MODEL, taxonomy=TAX)
    assert result.base_value == pytest.approx(nothing.score)
    assert set(result.values) <= {"image", "patient", "history", "lesion_site_size", "lesion_symptoms"}
    assert result.features["lesion_symptoms"] == ["bleeding", "itch", "pain", "elevation"]


def test_fast_enough_per_answer() -> None:
    image, sims = _case(2)
    risk = RiskFactors(age=70, body_site="nose", bleeding=True, changed_size=True, itch=True, ulceration=True)
    findings = extract_findings("growing for 3 weeks, no pain")
    explain_urgency(image, sims, risk, findings, model=MODEL, taxonomy=TAX)  # warm (shap's numba JIT)
    start = time.perf_counter()
    explain_urgency(image, sims, risk, findings, model=MODEL, taxonomy=TAX)
    assert time.perf_counter() - start < 1.0  # ~0.1-0.2 s on the 2-core dev machine; headroom for shared CI


@pytest.mark.parametrize(
    "text", ["it might be bleeding", "it bled last year but has healed", "call if it starts to bleed"]
)
def test_additivity_when_the_text_holds_only_non_present_findings(text: str) -> None:
    """Findings that are neither present nor absent (possible, historical, hypothetical) may move urgency
    or fusion, so the symptoms feature must be in the game even without text similarities."""
    image, _ = _case(7)
    findings = extract_findings(text)
    assert findings.status and not findings.present
    shap_values = explain_urgency(image, None, None, findings, model=MODEL, taxonomy=TAX)
    answer = assess_urgency(fuse(image, None, None, findings, model=MODEL), taxonomy=TAX)
    assert shap_values.base_value + sum(shap_values.values.values()) == pytest.approx(answer.score, abs=1e-6)


def test_a_warm_start_loads_shap_kernels_from_the_cache(tmp_path) -> None:
    """The first process compiles shap's kernels into the cache; the next loads them instead of compiling."""
    import json
    import subprocess
    import sys

    probe = (
        "import json, sys; from pathlib import Path; from explain.risk_shap import warm_up; "
        "from numba.core.registry import CPUDispatcher; warm_up(Path(sys.argv[1])); "
        "ks = [o for n, m in list(sys.modules.items()) if n.startswith('shap') for o in vars(m).values() "
        "if isinstance(o, CPUDispatcher)]; "
        "print(json.dumps({'hits': sum(sum(k.stats.cache_hits.values()) for k in ks), "
        "'misses': sum(sum(k.stats.cache_misses.values()) for k in ks)}))"
    )

    def start() -> dict[str, int]:
        out = subprocess.run([sys.executable, "-c", probe, str(tmp_path)], capture_output=True, text=True, check=True)
        return json.loads(out.stdout.strip().splitlines()[-1])

    first, warm = start(), start()
    assert first["hits"] == 0 and first["misses"] > 0  # compiled, and written to the cache
    assert any(tmp_path.rglob("*.nbi")), "no numba index written"
    # loaded, not compiled again (the kernels that take shap's link function cannot be cached by numba)
    assert warm["hits"] > 0 and warm["misses"] < first["misses"]
