"""Backends: one small class per CLIP-style model family behind one protocol."""
