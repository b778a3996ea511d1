"""OpenAPI examples of the lesion routes' answers (kept apart so the routes module stays small)."""

from __future__ import annotations

_OUTLINE = {
    "found": True,
    "method": "lesion-seg-head (frozen EfficientNet-Lite0 + U-Net style decoder)",
    "photo_width": 512,
    "photo_height": 384,
    "confidence": 0.91,
    "polygon": [[231, 150], [288, 147], [305, 196], [270, 236], [224, 214]],
    "area_px": 10412.0,
    "longest_diameter_px": 131.0,
    "border_irregularity": 1.21,
    "solidity": 0.94,
    "colour_variegation": 9.8,
}
COMPARE_EXAMPLE = {
    "verdict": "changed",
    "reasons": ["measured change in size: the area grew by 31 %"],
    "comparable": True,
    "registration": {
        "method": "sift-ransac-similarity",
        "inliers": 41,
        "scale": 1.02,
        "rotation_deg": 3.5,
    },
    "area_change_pct": 31.0,
    "diameter_change_pct": 12.4,
    "delta_e": 9.1,
    "shape_change": 0.18,
    "border_irregularity_change": 0.07,
    "appearance_change": 0.12,
    "outline_stability": 0.91,
    "change_score": 2.42,
    "differential_change": {"melanoma": 0.08, "melanocytic_nevus": -0.1},
    "measured_ng12": {"change_in_size": True, "change_in_shape": False, "change_in_colour": False},
    "earlier": _OUTLINE,
    "later": _OUTLINE | {"area_px": 13640.0, "longest_diameter_px": 147.0},
    "later_outline_on_earlier": [[226, 146], [292, 141], [312, 199], [272, 243], [219, 218]],
    "overlay_png": None,
    "later_urgency": None,
    "taken": ["2026-05-02", "2026-11-20"],
}
TIMELINE_EXAMPLE = {
    "lesion_ref": "back-left-1",
    "total": 2,
    "visits": [
        {
            "case_id": "5b0c9f3e2a7d4e61b8f0a1c2d3e4f5a6",
            "created_at": "2026-05-02T10:14:00Z",
            "photo_stored": True,
            "top_condition": "melanocytic_nevus",
            "top_probability": 0.62,
            "urgency": "routine",
            "outline": _OUTLINE,
        },
        {
            "case_id": "9c1f0e7a2b4d4e6f8a0b1c2d3e4f5a6b",
            "created_at": "2026-11-20T09:02:00Z",
            "photo_stored": True,
            "top_condition": "melanoma",
            "top_probability": 0.41,
            "urgency": "urgent",
            "outline": _OUTLINE,
        },
    ],
    "changes": [
        {
            "earlier_case_id": "5b0c9f3e2a7d4e61b8f0a1c2d3e4f5a6",
            "later_case_id": "9c1f0e7a2b4d4e6f8a0b1c2d3e4f5a6b",
            "verdict": "changed",
            "reasons": ["colour moved by Delta E 9.1 relative to the skin"],
            "area_change_pct": 31.0,
            "diameter_change_pct": 12.4,
            "delta_e": 9.1,
            "shape_change": 0.18,
        }
    ],
}
