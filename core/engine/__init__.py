"""Jobs, progress, cancellation and device choice (plain Python; the Qt bridge is qt_bridge.py)."""
