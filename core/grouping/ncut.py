"""Normalized cut (Shi & Malik, "Normalized cuts and image segmentation", PAMI 2000) into two
clusters, as the paper uses it (zero-shot-latent-diffusion-normalized-cut, 4.2 and 4.5).

Graph (paper 4.5: "a fully connected graph" over the images' noise estimation errors): every
pair of images is joined by an edge of weight ``w_ij = exp(-||x_i - x_j||^2 / (2 sigma^2))``,
``i = j`` included (``w_ii = 1``, as in Shi & Malik's ``||X(i) - X(j)|| < r`` graph, which holds
for ``i = j``). The self-loop matters: without it, a single image alone on one side has
``assoc(B, V) = cut(A, B)`` and an Ncut of at least 1 however far it lies, so one clear outlier
could never be cut off. The paper writes "edge weights are defined as the distances"; a cut of
distances would *keep* dissimilar images together, so we use the Gaussian similarity of
Shi & Malik (their eq. 11), which is what "normalized cut" means.

Our choices where the paper is silent:
- features are standardised per dimension (a score's units do not matter), and the default
  ``sigma`` is the median, over the images, of the distance to the ``ceil(sqrt(n))``-th
  nearest neighbour (a local scale in the spirit of Zelnik-Manor & Perona's self-tuning
  spectral clustering): the median of *all* pairwise distances would be a between-cluster
  distance whenever the suspect group is large, and would blur the two clusters together.
  An explicit ``sigma`` is in the units of the raw scores (no standardising);
- the split (Shi & Malik section 3, steps 2-4): solve ``(D - W) y = lambda D y`` through the
  symmetric form ``D^-1/2 (D - W) D^-1/2 z = lambda z``, take the eigenvector of the second
  smallest eigenvalue, ``y = D^-1/2 z``, and try every splitting point along the sorted ``y``,
  keeping the one with the smallest Ncut (their "search for the splitting point").

Ncut(A, B) = cut(A, B) / assoc(A, V) + cut(A, B) / assoc(B, V), with cut(A, B) the summed
weight of the edges between A and B and assoc(A, V) that of all edges from A (eq. 2).
"""

from __future__ import annotations

from typing import Optional

import numpy as np


def similarity(x: np.ndarray, sigma: Optional[float] = None) -> np.ndarray:
    """Fully connected Gaussian similarity graph of the rows of ``x`` (unit diagonal)."""
    x = np.asarray(x, dtype=np.float64)
    if sigma is None:
        std = x.std(axis=0)
        x = (x - x.mean(axis=0)) / np.where(std > 0, std, 1.0)
    d2 = ((x[:, None, :] - x[None, :, :]) ** 2).sum(-1)
    if sigma is None:
        sigma = local_scale(np.sqrt(d2))
    return np.exp(-d2 / (2.0 * sigma * sigma))


def neighbour_distances(dist: np.ndarray) -> np.ndarray:
    """Each image's distance to its ``ceil(sqrt(n))``-th nearest neighbour (column 0 of a sorted
    row is the image itself)."""
    n = len(dist)
    k = min(n - 1, max(1, int(np.ceil(np.sqrt(n)))))
    return np.sort(dist, axis=1)[:, k]


def local_scale(dist: np.ndarray) -> float:
    """Median distance of an image to its ``ceil(sqrt(n))``-th nearest neighbour (> 0)."""
    n = len(dist)
    kth = neighbour_distances(dist)
    pos = kth[kth > 0]
    if pos.size:
        return float(np.median(pos))
    off = dist[~np.eye(n, dtype=bool)]
    off = off[off > 0]
    return float(np.median(off)) if off.size else 1.0


def ncut_value(w: np.ndarray, in_a: np.ndarray) -> float:
    """Ncut(A, B) of the split ``in_a`` (bool) of graph ``w`` (eq. 2)."""
    a = np.asarray(in_a, bool)
    cut = float(w[a][:, ~a].sum())
    assoc_a, assoc_b = float(w[a].sum()), float(w[~a].sum())
    if assoc_a <= 0 or assoc_b <= 0:
        return float("inf") if cut == 0 else 2.0
    return cut / assoc_a + cut / assoc_b


def normalized_cut(x: np.ndarray, sigma: Optional[float] = None) -> tuple[np.ndarray, Optional[float]]:
    """Two clusters of the rows of ``x`` (n >= 2): (0/1 labels, Ncut value of the split).

    When all rows are equal there is nothing to cut: one cluster, value ``None``.
    """
    x = np.asarray(x, dtype=np.float64)
    if np.ptp(x, axis=0).max() == 0:
        return np.zeros(len(x), dtype=np.int8), None
    return cut_graph(similarity(x, sigma))


def cut_graph(w: np.ndarray) -> tuple[np.ndarray, float]:
    """Shi & Malik's two-way cut of the similarity graph ``w`` (n x n, symmetric, positive
    diagonal): (0/1 labels, Ncut value of the split)."""
    n = len(w)
    d = w.sum(1)
    inv_sqrt = 1.0 / np.sqrt(d)
    lap = np.eye(n) - inv_sqrt[:, None] * w * inv_sqrt[None, :]
    _vals, vecs = np.linalg.eigh(lap)
    y = inv_sqrt * vecs[:, 1]
    order = np.argsort(y, kind="stable")
    # Every splitting point at once: A_k = the k images with the smallest y (k = 1..n-1).
    # assoc(A_k, V) is a prefix sum of degrees; the weight inside A_k grows by the added
    # image's self-loop and twice its edges to those before it; cut = assoc(A_k, V) - inside(A_k).
    ws = w[np.ix_(order, order)]
    deg = ws.sum(1)
    assoc_a = np.cumsum(deg)[:-1]
    inside = np.cumsum(2.0 * np.tril(ws, -1).sum(1) + np.diag(ws))[:-1]
    cut = np.maximum(assoc_a - inside, 0.0)
    assoc_b = deg.sum() - assoc_a
    with np.errstate(divide="ignore", invalid="ignore"):
        values = np.where((assoc_a > 0) & (assoc_b > 0), cut / assoc_a + cut / assoc_b, np.inf)
    k = int(np.argmin(values)) + 1
    labels = np.zeros(n, dtype=np.int8)
    labels[order[k:]] = 1
    return labels, float(ncut_value(w, labels == 0))
