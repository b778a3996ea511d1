"""The artefact check ISIC's ATTRIBUTION.md asks for: does the melanoma score move with dermoscope
artefacts that correlate with the label (ink markings, dark vignettes) rather than with the lesion?

Heuristics, on the image as stored (256x256 RGB), documented so the counts can be reproduced:
- dark vignette: at least 2 of the 4 corner squares (VIGNETTE_PATCH px a side) have mean luminance
  (ITU-R 601: 0.299 R + 0.587 G + 0.114 B, 0-255) below VIGNETTE_LUMA: the dermatoscope's round
  field of view leaves black corners;
- purple/blue ink: more than INK_FRACTION of the pixels have hue in INK_HUE (degrees), saturation
  >= INK_SAT and value >= INK_VALUE (HSV, 0-1): skin and pigment are red-brown, surgical markers
  and gentian violet are violet-blue; a blue-white veil is far less saturated.
Rulers are not detected (no simple heuristic was reliable enough to state); the vignette flag is
the most common artefact here.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image
from sklearn.metrics import roc_auc_score

VIGNETTE_PATCH = 24
VIGNETTE_LUMA = 40.0
INK_HUE = (250.0, 330.0)
INK_SAT = 0.45
INK_VALUE = 0.25
INK_FRACTION = 0.005


def artefact_flags(path: Path) -> dict[str, bool]:
    """{"vignette": ..., "ink": ...} for one image file."""
    rgb = np.asarray(Image.open(path).convert("RGB"), dtype=np.float32)
    luma = rgb @ np.array([0.299, 0.587, 0.114], dtype=np.float32)
    k = VIGNETTE_PATCH
    corners = [luma[:k, :k], luma[:k, -k:], luma[-k:, :k], luma[-k:, -k:]]
    dark = sum(float(c.mean()) < VIGNETTE_LUMA for c in corners)
    hsv = np.asarray(Image.open(path).convert("RGB").convert("HSV"), dtype=np.float32) / 255.0
    hue = hsv[..., 0] * 360.0
    ink = (hue >= INK_HUE[0]) & (hue <= INK_HUE[1]) & (hsv[..., 1] >= INK_SAT) & (hsv[..., 2] >= INK_VALUE)
    return {"vignette": dark >= 2, "ink": float(ink.mean()) > INK_FRACTION}


def artefact_report(
    paths: Sequence[Path], labels: Sequence[str], p_melanoma: np.ndarray, melanoma: str = "melanoma"
) -> dict[str, object]:
    """Per flag: counts, mean melanoma score with and without it (all images and within each true
    class, since artefacts and labels are correlated), and melanoma AUROC on images with no flag."""
    flags = [artefact_flags(p) for p in paths]
    labels_a = np.asarray(labels)
    out: dict[str, object] = {}
    for name in ("vignette", "ink"):
        has = np.array([f[name] for f in flags])
        block: dict[str, object] = {"n_with": int(has.sum()), "n_without": int((~has).sum())}
        for cls in ["all", *sorted(set(labels))]:
            sel = np.ones(len(has), bool) if cls == "all" else labels_a == cls
            w, wo = p_melanoma[sel & has], p_melanoma[sel & ~has]
            block[cls] = {
                "n_with": len(w),
                "n_without": len(wo),
                "mean_with": float(w.mean()) if len(w) else None,
                "mean_without": float(wo.mean()) if len(wo) else None,
                "difference": float(w.mean() - wo.mean()) if len(w) and len(wo) else None,
            }
        out[name] = block
    clean = ~np.array([f["vignette"] or f["ink"] for f in flags])
    is_mel = labels_a == melanoma
    if is_mel[clean].any() and (~is_mel[clean]).any():
        out["melanoma_auroc_no_artefact"] = float(roc_auc_score(is_mel[clean], p_melanoma[clean]))
    out["n_no_artefact"] = int(clean.sum())
    return out
