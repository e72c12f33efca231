"""The bottom layer: plain runtime primitives every other package may use (cancel tokens,
progress callbacks, device choice, per-user folders). Imports nothing from ``core``."""
