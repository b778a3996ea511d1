"""How far to trust one answer: calibration, conformal sets, out-of-distribution statistics and the gates.

Runtime room. May import `models.knowledge` and the contract in `models.uncertainty.contract`; never
`models.fitting`.
"""
