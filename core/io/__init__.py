"""Checkpoints, exports and (later) the weights store."""
