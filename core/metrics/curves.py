"""ROC and precision-recall curves, and the threshold that reaches a chosen recall.

Built for the inspector's own labels (verdicts OK = 0, NG = 1) over a run's scores: an image
is flagged when its score is *above* the threshold (as :class:`core.results.threshold.Threshold`
flags it). Plain numpy.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from numpy.typing import ArrayLike, NDArray

from core.metrics.auroc import binary_labels

__all__ = ["Curves", "RecallThreshold", "threshold_for_recall", "verdict_curves"]


@dataclass(frozen=True)
class Curves:
    """One point per distinct score (flag at score >= that score), highest first."""

    thresholds: NDArray[np.float64]
    fpr: NDArray[np.float64]
    tpr: NDArray[np.float64]  # = recall
    precision: NDArray[np.float64]
    n_pos: int
    n_neg: int

    @property
    def auroc(self) -> float:
        """Area under the ROC (from (0, 0) through every point; the last one flags every image)."""
        x = np.concatenate([[0.0], self.fpr])
        y = np.concatenate([[0.0], self.tpr])
        return float(np.sum((x[1:] - x[:-1]) * (y[1:] + y[:-1]) / 2.0))


@dataclass(frozen=True)
class RecallThreshold:
    threshold: float  # flags (score > threshold) at least the asked share of the NG images
    recall: float  # reached on the labelled images
    fpr: float  # share of the OK images flagged too
    n_pos: int
    n_neg: int

    def describe(self) -> str:
        return (f"threshold {self.threshold:.6g} flags {self.recall:.0%} of {self.n_pos} NG and "
                f"{self.fpr:.0%} of {self.n_neg} OK images")


def _check(labels: ArrayLike, scores: ArrayLike) -> tuple[NDArray[np.bool_], NDArray[np.float64]]:
    y = binary_labels(labels)
    s = np.asarray(scores, dtype=np.float64).ravel()
    if y.shape != s.shape:
        raise ValueError(f"labels ({y.size}) and scores ({s.size}) differ in length")
    if not np.isfinite(s).all():
        raise ValueError("scores must be finite (no NaN or inf)")
    return y, s


def verdict_curves(labels: ArrayLike, scores: ArrayLike) -> Curves | None:
    """ROC and precision-recall points; None unless both classes are present."""
    y, s = _check(labels, scores)
    n_pos = int(y.sum())
    n_neg = int(y.size - n_pos)
    if n_pos == 0 or n_neg == 0:
        return None
    order = np.argsort(-s, kind="stable")
    s_sorted, y_sorted = s[order], y[order]
    last = np.r_[np.flatnonzero(np.diff(s_sorted)), s_sorted.size - 1]  # end of each run of equal scores
    tp = np.cumsum(y_sorted)[last].astype(np.float64)
    fp = (last + 1) - tp
    return Curves(s_sorted[last], fp / n_neg, tp / n_pos, tp / (tp + fp), n_pos, n_neg)


def threshold_for_recall(labels: ArrayLike, scores: ArrayLike, recall: float) -> RecallThreshold | None:
    """The highest threshold whose flags (score > threshold) catch at least ``recall`` of the
    positive (NG) images: halfway between the weakest NG image it must catch and the next lower
    score. None without a positive image."""
    if not 0.0 < recall <= 1.0:
        raise ValueError(f"recall must be in (0, 1], not {recall}")
    y, s = _check(labels, scores)
    pos = np.sort(s[y])[::-1]
    if pos.size == 0:
        return None
    k = max(1, math.ceil(recall * pos.size - 1e-9))
    weakest = float(pos[k - 1])
    below = s[s < weakest]
    t = (float(below.max()) + weakest) / 2.0 if below.size else float(np.nextafter(weakest, -np.inf))
    flagged = s > t
    n_neg = int((~y).sum())
    return RecallThreshold(t, float(flagged[y].mean()), float(flagged[~y].mean()) if n_neg else 0.0,
                           int(pos.size), n_neg)
