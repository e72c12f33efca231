"""Evaluation metrics: image/pixel AUROC, AUPRO, F1-max, accuracy and recall.

Plain numpy / OpenCV; no torch and no Qt.
"""

from __future__ import annotations

from collections.abc import Sequence

from numpy.typing import ArrayLike, NDArray

from core.metrics.aupro import aupro, pro_curve
from core.metrics.auroc import image_auroc
from core.metrics.decision import accuracy_recall
from core.metrics.f1 import f1_max
from core.metrics.pixel import pixel_auroc

__all__ = [
    "accuracy_recall",
    "aupro",
    "compute_all",
    "f1_max",
    "image_auroc",
    "pixel_auroc",
    "pro_curve",
]


def compute_all(
    labels: ArrayLike,
    scores: ArrayLike | None,
    predicted: ArrayLike | None,
    masks: Sequence[NDArray | None] | None,
    maps: Sequence[NDArray | None] | None,
    size: int = 256,
) -> dict[str, float | None]:
    """Every metric at once, keyed ``image_auroc, pixel_auroc, aupro, f1_max, accuracy, recall``.

    A value is ``None`` where it does not apply: no scores, no predictions, no maps,
    no mask information, or a single class. Defective images without a mask are left
    out of the pixel metrics; good images without a mask count as all normal.
    """
    result: dict[str, float | None] = dict.fromkeys(
        ("image_auroc", "pixel_auroc", "aupro", "f1_max", "accuracy", "recall")
    )
    if scores is not None:
        result["image_auroc"] = image_auroc(labels, scores)
        result["f1_max"] = f1_max(labels, scores)
    if predicted is not None:
        result["accuracy"], result["recall"] = accuracy_recall(labels, predicted)
    if maps is not None and masks is not None and any(m is not None for m in masks):
        result["pixel_auroc"] = pixel_auroc(masks, maps, size, labels=labels)
        result["aupro"] = aupro(masks, maps, size, labels=labels)
    return result
