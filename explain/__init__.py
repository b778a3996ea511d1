"""Why the model said it: heatmaps per differential, their rendering and their faithfulness.

Imports run one way: `service -> explain -> models`; nothing here imports `service`.
`faithfulness.py` measures offline and is never imported per request.
"""

from explain.gradcam import (
    DEFAULT_METHOD,
    METHODS,
    BaseCAM,
    CropBox,
    GradCAM,
    GradCAMPlusPlus,
    Heatmap,
    LayerCapture,
    SimilarityTarget,
    explain_differentials,
    get_method,
)

__all__ = [
    "DEFAULT_METHOD",
    "METHODS",
    "BaseCAM",
    "CropBox",
    "GradCAM",
    "GradCAMPlusPlus",
    "Heatmap",
    "LayerCapture",
    "SimilarityTarget",
    "explain_differentials",
    "get_method",
]
