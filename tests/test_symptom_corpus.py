"""The labelled phrase corpus (issue 17): the held-out half is frozen, both halves meet the targets."""

from __future__ import annotations

import pytest

from benchmarks.symptom_corpus import HELDOUT_SHA256, heldout_digest, load, score

TARGETS = {"present": 0.95, "absent": 0.95, "possible": 0.85, "hypothetical": 0.85, "historical": 0.85, "family": 0.85}
ISSUE_ROWS = [
    ("not only bleeding but also growing", "bleeding", "present"),
    ("no doubt it is bleeding", "bleeding", "present"),
    ("not sure if it bleeds", "bleeding", "possible"),
    ("call if it starts to bleed", "bleeding", "hypothetical"),
    ("sister had skin cancer", "personal_history_skin_cancer", "family"),
    ("it bled last year but has healed", "bleeding", "historical"),
]


def test_heldout_half_is_frozen_and_large_enough() -> None:
    assert heldout_digest() == HELDOUT_SHA256, "the held-out half changed: it was frozen before the reader was written"
    assert score(load("heldout"))["phrases"] >= 125
    assert score(load("all"))["phrases"] >= 250


@pytest.mark.parametrize("half", ["heldout", "dev"])
def test_issue_rows_are_in_each_half(half: str) -> None:
    rows = {(r["text"], r["concept"], r["status"]) for r in load(half)}
    assert set(ISSUE_ROWS) <= rows


@pytest.mark.parametrize("half", ["heldout", "dev", "all"])
def test_precision_and_recall_per_status(half: str) -> None:
    per_status = score(load(half))["per_status"]
    for status, target in TARGETS.items():
        m = per_status[status]
        assert m["support"] >= 10, status
        assert m["precision"] >= target and m["recall"] >= target, (half, status, m)
