"""The embedded default model: architecture, loader, weights, card and its fitted files.

Runtime room. May import `models.backends`; its training lives in `models/fitting/train_embedded.py`.
"""
