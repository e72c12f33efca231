"""Metrics of hard good / anomalous decisions at a chosen threshold."""

from __future__ import annotations

import numpy as np
from numpy.typing import ArrayLike

from core.metrics.auroc import binary_labels

__all__ = ["accuracy_recall"]


def accuracy_recall(
    labels: ArrayLike, predicted: ArrayLike
) -> tuple[float | None, float | None]:
    """``(accuracy, anomaly_recall)`` of 0/1 ``predicted`` against ``labels`` (1 = anomalous).

    Accuracy is ``None`` for no sample; recall (the fraction of anomalous samples
    predicted anomalous) is ``None`` when there is no anomalous sample.
    """
    y = binary_labels(labels)
    p = binary_labels(predicted)
    if y.shape != p.shape:
        raise ValueError(
            f"labels ({y.size}) and predictions ({p.size}) differ in length"
        )
    if y.size == 0:
        return None, None
    accuracy = float(np.mean(y == p))
    n_pos = int(np.count_nonzero(y))
    recall = float(np.count_nonzero(p & y) / n_pos) if n_pos else None
    return accuracy, recall
