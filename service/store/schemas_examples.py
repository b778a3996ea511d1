"""OpenAPI examples of the case routes (data only)."""

from __future__ import annotations

from typing import Any

CASE_ID = "9c1f0e7a2b4d4e6f8a0b1c2d3e4f5a6b"
AT = "2026-03-01T10:00:00Z"
SUMMARY: dict[str, Any] = {
    "id": CASE_ID,
    "created_at": AT,
    "owner": "api-key:clinic-a",
    "model": {"name": "embedded-pad-lite0", "version": "1.1.0", "weights_sha256": "fcd22feb7c4d" + "0" * 52},
    "calibration_id": "embedded-pad-lite0@1.1.0/2025.1/3b9f",
    "taxonomy_version": "2025.1",
    "photo_sha256": "5d41402abc4b2a76b9719d911017c592" * 2,
    "photo_width": 1024,
    "photo_height": 768,
    "patient_ref": "pt-0042",
    "lesion_ref": "left-forearm-1",
    "reviewed": True,
    "photo_stored": False,
}
CASE_PAGE = {"items": [SUMMARY], "total": 1, "limit": 50, "offset": 0}
CASE_OUT = {**SUMMARY, "answer": {"id": CASE_ID, "differentials": ["..."], "case_storage": "queued"}}
REVIEW_IN = {
    "agrees": False,
    "diagnosis": "melanoma",
    "confidence": "medium",
    "urgency_override": "urgent",
    "urgency_reason": "irregular border, grew in 3 months",
    "note": "refer to dermatology this week",
}
REVIEW_OUT = {**REVIEW_IN, "id": 7, "case_id": CASE_ID, "reviewer": "api-key:dr-lee", "created_at": AT}
OUTCOME_IN = {"diagnosis": "melanoma", "date": "2026-03-20", "source": "histopathology"}
OUTCOME_OUT = {**OUTCOME_IN, "id": 3, "case_id": CASE_ID, "recorded_by": "api-key:dr-lee", "created_at": AT}
ANNOTATION_IN = {
    "kind": "polygon",
    "label": "melanoma",
    "points": [[410.0, 300.5], [520.0, 310.0], [505.5, 402.0], [420.0, 395.0]],
    "tags": {"subtype": "superficial spreading", "severity": "moderate", "body_site": "forearm", "fitzpatrick": "III"},
}
ANNOTATION_OUT = {
    **ANNOTATION_IN,
    "box": None,
    "id": 11,
    "case_id": CASE_ID,
    "annotator": "api-key:dr-lee",
    "created_at": AT,
}
AUDIT_OUT = [
    {"at": AT, "actor": "api-key:clinic-a", "action": "create", "resource_type": "case", "resource_id": CASE_ID,
     "client": "10.0.0.7", "outcome": "success"},
    {"at": AT, "actor": "api-key:dr-lee", "action": "create", "resource_type": "review", "resource_id": "7",
     "client": "10.0.0.9", "outcome": "success"},
]  # fmt: skip
