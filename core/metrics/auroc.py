"""Image-level AUROC.

The area under the ROC curve equals the Mann-Whitney U statistic divided by
``n_pos * n_neg``, with ties between a positive and a negative counted as one
half; this is exactly what ``sklearn.metrics.roc_auc_score`` computes with its
trapezoidal rule, but needs only one sort and no curve.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from numpy.typing import ArrayLike, NDArray

__all__ = ["auroc_from_split", "binary_labels", "image_auroc"]


def binary_labels(labels: ArrayLike | Sequence[int]) -> NDArray[np.bool_]:
    """Return ``labels`` as a flat bool array (1 / True = anomalous); reject other values."""
    arr = np.asarray(labels).ravel()
    if arr.dtype == np.bool_:
        return arr
    if arr.size and not np.isin(arr, (0, 1)).all():
        raise ValueError("labels must be 0 (good) or 1 (anomalous)")
    return arr.astype(bool)


def auroc_from_split(
    positive: NDArray[np.floating], negative: NDArray[np.floating]
) -> float | None:
    """AUROC from the scores of positive and negative samples, ties counted as 1/2.

    Sorts the negatives once and places every positive with a binary search, so it is
    fast for millions of pixels. ``None`` when either group is empty.
    """
    pos = np.asarray(positive).ravel()
    neg = np.asarray(negative).ravel()
    if pos.size == 0 or neg.size == 0:
        return None
    if not (np.isfinite(pos).all() and np.isfinite(neg).all()):
        raise ValueError("scores must be finite (no NaN or inf)")
    # Compare in one dtype so that float32 maps and float64 thresholds tie exactly.
    dtype = np.result_type(pos.dtype, neg.dtype)
    neg_sorted = np.sort(neg.astype(dtype, copy=False))
    pos = np.sort(
        pos.astype(dtype, copy=False)
    )  # sorted queries: cache-friendly search
    below = np.searchsorted(neg_sorted, pos, side="left").astype(np.float64)
    not_above = np.searchsorted(neg_sorted, pos, side="right").astype(np.float64)
    # U = sum over positives of (#negatives below + 1/2 #negatives tied).
    u = 0.5 * (below.sum() + not_above.sum())
    return float(u / (float(pos.size) * float(neg.size)))


def image_auroc(labels: ArrayLike, scores: ArrayLike) -> float | None:
    """Image AUROC of ``scores`` (higher = more anomalous) against ``labels`` (1 = anomalous).

    ``None`` when only one class is present.
    """
    y = binary_labels(labels)
    s = np.asarray(scores, dtype=np.float64).ravel()
    if y.shape != s.shape:
        raise ValueError(f"labels ({y.size}) and scores ({s.size}) differ in length")
    return auroc_from_split(s[y], s[~y])
