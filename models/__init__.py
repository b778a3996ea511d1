"""Pixels and words to numbers; knows nothing of HTTP and imports neither `service` nor `explain`.

Rooms by when they run (each `__init__` says its job and what it may import; `tests/test_layout.py`
checks it): `backends`, `embedded`, `knowledge`, `scoring`, `uncertainty` and `photos.py` at run time;
`fitting` offline only.
"""
