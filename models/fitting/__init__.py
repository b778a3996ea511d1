"""Offline only: train, fit (fusion, calibration, OOD statistics), evaluate and report on labelled photos.

May import every other room of `models`; nothing that runs per request imports this package (tested).
"""
