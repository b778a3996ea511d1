"""How far to trust one answer: calibration, conformal sets, out-of-distribution statistics and the gates.

Runtime room. May import `models.backends` and `models.knowledge`; never `models.fitting` (the
calibration's fitting maths live in `models/fitting/calibration_stats.py`).
"""
