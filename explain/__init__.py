"""Why the model said it: heatmaps per differential, their rendering and their faithfulness.

Imports run one way: `service -> explain -> models`; nothing here imports `service`.
`faithfulness.py`, `offcentre.py`, `composites.py` and `sanity.py` measure offline and are never
imported per request; `capture.py` holds the per-call hooks the CAM methods use.
"""

from explain.gradcam import (
    DEFAULT_METHOD,
    METHODS,
    BaseCAM,
    CamPass,
    GradCAM,
    GradCAMPlusPlus,
    LayerCapture,
    SimilarityTarget,
    get_method,
)
from explain.heatmaps import CropBox, Heatmap, explain_differentials, prepare_heatmaps

__all__ = [
    "DEFAULT_METHOD",
    "METHODS",
    "BaseCAM",
    "CamPass",
    "CropBox",
    "GradCAM",
    "GradCAMPlusPlus",
    "Heatmap",
    "LayerCapture",
    "SimilarityTarget",
    "explain_differentials",
    "get_method",
    "prepare_heatmaps",
]
