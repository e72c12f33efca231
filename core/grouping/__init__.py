"""Splitting a batch into a normal and a suspect group from its anomaly scores, without labels.

Paper: zero-shot-latent-diffusion-normalized-cut (Zavala-Jimenez et al.), sections 4.2 and 4.5.
The scores of a mixed, unlabelled batch are clustered into two groups: the normalized cut of
Shi & Malik (:mod:`.ncut`, the paper's choice), k-means (:mod:`.kmeans`) or a two-component
Gaussian mixture (:mod:`.gmm`), the paper's Table 2 alternatives. As in 4.2, the *larger*
cluster is taken as normal and the smaller one as suspect.

The default (:data:`DEFAULT_METHOD`) is k-means, not the paper's normalized cut: measured on the
paper's batches (training and test images together, docs/benchmarks.md "Grouping the paper's
batch"), our normalized cut of one score per image cuts off the single most extreme image (1 of 63
defects caught on MVTec AD bottle, 1 of 392 on MTD), while k-means catches 42 of 63 at 92.1 %
accuracy on bottle and 197 of 392 at 60.0 % on MTD, and splits synthetic bulk-plus-tail batches
correctly in 20 of 20 seeds where the cut does in none (``benchmarks/grouping_widths.py``).
Anomaly scores are a dense bulk and a sparse tail; the cut's Gaussian graph falls apart along
the tail and isolates its end. ``group=ncut`` remains the paper's method. Where the two are the same size
(the paper does not say) the cluster with the higher mean score is suspect.

:func:`group_scores` is the one entry point; it raises :class:`GroupingError` with a message
an inspector can act on for a batch that cannot be split (empty, one image, non-finite scores).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

import numpy as np

METHODS = ("ncut", "kmeans", "gmm")
#: The method a zero-shot scan uses unless told otherwise (see the module docstring for why not ncut).
DEFAULT_METHOD = "kmeans"
NORMAL, SUSPECT = 0, 1
GROUP_NAMES = ("normal", "suspect")


class GroupingError(ValueError):
    """The scores cannot be split into two groups; the message says why."""


@dataclass
class Grouping:
    """Two groups of a batch: ``labels[i]`` is 0 (normal) or 1 (suspect) for image ``i``.

    ``cut_value`` is the normalized-cut value Ncut(A, B) of the split the algorithm found
    (``None`` for k-means and GMM); an inspector's moves (``moved``) do not change it.
    """

    labels: np.ndarray
    method: str
    cut_value: Optional[float] = None
    moved: list[int] = field(default_factory=list)

    @property
    def sizes(self) -> tuple[int, int]:
        """(normal, suspect) image counts."""
        n_suspect = int(np.count_nonzero(self.labels == SUSPECT))
        return int(self.labels.size - n_suspect), n_suspect

    def group_of(self, index: int) -> str:
        return GROUP_NAMES[int(self.labels[index])]

    def describe(self) -> str:
        normal, suspect = self.sizes
        text = f"{self.method}: {normal} normal, {suspect} suspect"
        if self.cut_value is not None:
            text += f", cut value {self.cut_value:.4g}"
        if self.moved:
            text += f" ({len(self.moved)} moved by hand)"
        return text


def as_features(scores) -> np.ndarray:
    """Scores as an (n, d) float64 array (a 1-D score vector becomes one column)."""
    x = np.asarray(scores, dtype=np.float64)
    if x.ndim == 1:
        x = x[:, None]
    if x.ndim != 2:
        raise GroupingError(f"scores must be one value or one vector per image, got shape {x.shape}")
    return x


def check_scores(x: np.ndarray) -> None:
    n = x.shape[0]
    if n == 0:
        raise GroupingError("no scores to group: the batch is empty (no image could be scored)")
    if n == 1:
        raise GroupingError("grouping needs at least 2 images: a batch of one image cannot be split into a "
                            "normal and a suspect group")
    if not np.isfinite(x).all():
        bad = int((~np.isfinite(x)).any(axis=1).sum())
        raise GroupingError(f"{bad} of {n} scores are not finite (NaN or infinite); they cannot be grouped")


def orient(clusters: np.ndarray, x: np.ndarray) -> np.ndarray:
    """Two-cluster assignment (0/1, arbitrary) -> 0 normal / 1 suspect: the larger cluster is
    normal (paper 4.2); on a tie the cluster with the higher mean (first feature) is suspect."""
    c = np.asarray(clusters).astype(np.int64)
    n1 = int(c.sum())
    n0 = c.size - n1
    if n0 == 0 or n1 == 0:  # one cluster only: nothing is suspect
        return np.zeros(c.size, dtype=np.int8)
    if n1 < n0:
        suspect = 1
    elif n0 < n1:
        suspect = 0
    else:
        suspect = 1 if x[c == 1, 0].mean() > x[c == 0, 0].mean() else 0
    return (c == suspect).astype(np.int8)


def group_scores(scores, method: str = DEFAULT_METHOD, seed: int = 0, sigma: Optional[float] = None) -> Grouping:
    """Split a batch by its ``scores`` (one value, or one vector, per image) into two groups.

    ``method`` is ``ncut`` (normalized cut, the paper's), ``kmeans`` or ``gmm``; ``seed`` seeds
    k-means and GMM; ``sigma`` is the normalized cut's Gaussian width (default: see
    :func:`.ncut.normalized_cut`).
    """
    if method not in METHODS:
        raise GroupingError(f"unknown grouping method '{method}' (known: {', '.join(METHODS)})")
    x = as_features(scores)
    check_scores(x)
    if np.ptp(x, axis=0).max() == 0:  # all images score the same: one group, nothing is suspect
        return Grouping(np.zeros(len(x), dtype=np.int8), method, None)
    if method == "ncut":
        from core.grouping.ncut import normalized_cut

        clusters, value = normalized_cut(x, sigma=sigma)
        return Grouping(orient(clusters, x), method, value)
    if method == "kmeans":
        from core.grouping.kmeans import kmeans_two

        return Grouping(orient(kmeans_two(x, seed), x), method, None)
    from core.grouping.gmm import gmm_two

    return Grouping(orient(gmm_two(x, seed), x), method, None)


__all__ = ["DEFAULT_METHOD", "GROUP_NAMES", "METHODS", "NORMAL", "SUSPECT", "Grouping", "GroupingError", "group_scores"]
