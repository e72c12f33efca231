"""Best F1 score over all decision thresholds."""

from __future__ import annotations

import numpy as np
from numpy.typing import ArrayLike

from core.metrics.auroc import binary_labels

__all__ = ["f1_max"]


def f1_max(labels: ArrayLike, scores: ArrayLike) -> float | None:
    """Maximum F1 of the anomalous class over all thresholds on ``scores``.

    Same points as ``sklearn.metrics.precision_recall_curve`` (one per distinct
    score, predicting anomalous when score >= threshold). ``None`` when there is
    no anomalous sample.
    """
    y = binary_labels(labels)
    s = np.asarray(scores, dtype=np.float64).ravel()
    if y.shape != s.shape:
        raise ValueError(f"labels ({y.size}) and scores ({s.size}) differ in length")
    n_pos = int(np.count_nonzero(y))
    if n_pos == 0:
        return None
    if not np.isfinite(s).all():
        raise ValueError("scores must be finite (no NaN or inf)")
    order = np.argsort(s)[::-1]  # order within ties does not matter
    s_sorted, y_sorted = s[order], y[order]
    last = np.append(np.flatnonzero(np.diff(s_sorted) != 0), s.size - 1)
    tp = np.cumsum(y_sorted, dtype=np.int64)[last].astype(np.float64)
    predicted = (last + 1).astype(np.float64)  # tp + fp
    # F1 = 2 tp / (predicted positives + actual positives); never 0/0 since n_pos > 0.
    return float(np.max(2.0 * tp / (predicted + n_pos)))
