"""Pixels and words to numbers: model backends, taxonomy, zero-shot scoring. Knows nothing of HTTP."""
