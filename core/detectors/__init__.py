"""Anomaly detectors: one sub-package per method, registered by name in registry.py."""
