"""Pixel-level AUROC over all pixels of all test images."""

from __future__ import annotations

from collections.abc import Sequence

import cv2
import numpy as np
from numpy.typing import ArrayLike, NDArray

from core.metrics.auroc import auroc_from_split, binary_labels

__all__ = ["pixel_auroc", "prepare_pixels"]

MaskLike = NDArray | None
MapLike = NDArray | None


def _as_2d(array: NDArray, what: str, index: int) -> NDArray:
    arr = np.asarray(array)
    if arr.ndim > 2:  # (1, H, W) or (H, W, 1)
        arr = np.squeeze(arr)
    if arr.ndim != 2:
        raise ValueError(f"{what} {index} has shape {arr.shape}, expected (H, W)")
    return arr


def prepare_pixels(
    masks: Sequence[MaskLike] | None,
    maps: Sequence[MapLike],
    size: int = 256,
    labels: ArrayLike | None = None,
) -> list[tuple[NDArray[np.bool_], NDArray[np.float32]]]:
    """Resize each (mask, map) pair to ``size`` x ``size`` for pixel metrics.

    Maps are resized bilinearly, masks with nearest neighbour and binarised (> 0).
    A mask of ``None`` means "all normal", except for an image whose label is 1
    (when ``labels`` is given): such an image has no ground truth and is left out.
    Images whose map is ``None`` are left out too.
    """
    n = len(maps)
    if masks is None:
        masks = [None] * n
    if len(masks) != n:
        raise ValueError(f"masks ({len(masks)}) and maps ({n}) differ in length")
    flags = None if labels is None else binary_labels(labels)
    if flags is not None and flags.size != n:
        raise ValueError(f"labels ({flags.size}) and maps ({n}) differ in length")
    if size < 1:
        raise ValueError(f"size must be positive, got {size}")

    pairs: list[tuple[NDArray[np.bool_], NDArray[np.float32]]] = []
    for i, (mask, amap) in enumerate(zip(masks, maps, strict=True)):
        if amap is None or (mask is None and flags is not None and flags[i]):
            continue
        m = _as_2d(amap, "map", i).astype(np.float32, copy=False)
        m = cv2.resize(m, (size, size), interpolation=cv2.INTER_LINEAR)
        if mask is None:
            gt = np.zeros((size, size), dtype=bool)
        else:
            g = _as_2d(mask, "mask", i)
            g = (g > 0).astype(np.uint8)
            gt = cv2.resize(g, (size, size), interpolation=cv2.INTER_NEAREST) > 0
        pairs.append((gt, m))
    return pairs


def pixel_auroc(
    masks: Sequence[MaskLike] | None,
    maps: Sequence[MapLike],
    size: int = 256,
    labels: ArrayLike | None = None,
) -> float | None:
    """Pixel AUROC of anomaly ``maps`` against ground-truth ``masks``.

    Both are resized to ``size`` x ``size`` (see :func:`prepare_pixels`); ties are
    handled as in ``sklearn.metrics.roc_auc_score``. ``None`` if there is no
    anomalous or no normal pixel.
    """
    pairs = prepare_pixels(masks, maps, size, labels)
    if not pairs:
        return None
    gt = np.stack([p[0] for p in pairs])
    scores = np.stack([p[1] for p in pairs])
    return auroc_from_split(scores[gt], scores[~gt])
