"""The one colormap used for heat maps everywhere (overlay, gallery badges, exports).

Matplotlib's *inferno* (perceptually uniform, readable in grey print), taken from OpenCV so no
plotting library is needed in the engine.
"""

from __future__ import annotations

from functools import lru_cache

import cv2
import numpy as np

COLORMAP_NAME = "inferno"


@lru_cache(maxsize=1)
def lut() -> np.ndarray:
    """(256, 3) uint8 RGB lookup table."""
    ramp = np.arange(256, dtype=np.uint8).reshape(256, 1)
    bgr = cv2.applyColorMap(ramp, cv2.COLORMAP_INFERNO).reshape(256, 3)
    return np.ascontiguousarray(bgr[:, ::-1])


def normalise(m: np.ndarray, lo: float, hi: float) -> np.ndarray:
    span = hi - lo if hi > lo else 1.0
    return np.clip((m.astype(np.float32) - lo) / span, 0.0, 1.0)


def colorize(m: np.ndarray, lo: float, hi: float) -> np.ndarray:
    """(H, W) float map -> (H, W, 3) uint8 RGB with the shared colormap."""
    idx = np.round(normalise(m, lo, hi) * 255.0).astype(np.uint8)
    return lut()[idx]


def robust_range(maps: list[np.ndarray], upper_percentile: float = 99.9) -> tuple[float, float]:
    """One scale for a batch of maps: the lowest value and a high percentile of all pixels."""
    if not maps:
        return 0.0, 1.0
    lo = float(min(np.nanmin(m) for m in maps))
    sample = np.concatenate([m[:: max(1, m.shape[0] // 64), :: max(1, m.shape[1] // 64)].ravel() for m in maps])
    hi = float(np.nanpercentile(sample, upper_percentile))
    if not hi > lo:
        hi = float(max(np.nanmax(m) for m in maps))
    if not hi > lo:
        hi = lo + 1.0
    return lo, hi
