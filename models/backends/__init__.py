"""Backends: one small class per CLIP-style model family behind one protocol, the spec registry and
the artifacts (with the one identity check) a loaded model carries.

Runtime room. May import `models.embedded` (the registry builds it); nothing else from `models`.
"""
