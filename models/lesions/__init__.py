"""Has it changed? The same lesion photographed at two visits: comparability, registration,
measures of change and a verdict (`compare`)."""

from models.lesions.compare import ChangeThresholds, Comparison, PhotoSide, compare, compare_segmented

__all__ = ["ChangeThresholds", "Comparison", "PhotoSide", "compare", "compare_segmented"]
