"""Greedy coreset subsampling of the memory bank (paper 3.2, Algorithm 1).

The minimax facility location problem (the coreset M_C whose farthest bank point is nearest)
is NP-hard; the paper uses the greedy k-center approximation (Sener & Savarese 2018), which is
within a factor 2 of the optimal radius, and runs it on random linear projections of the
features (Johnson-Lindenstrauss, d* = 128) to make the distance computations cheaper.
"""

from __future__ import annotations

from typing import Optional

import torch

from core.runtime.cancel import CancelToken, check
from core.runtime.progress import ProgressFn


def random_projection(features: torch.Tensor, dim: int, seed: int = 0) -> torch.Tensor:
    """Features projected by a seeded Gaussian matrix to ``dim`` (unchanged if already smaller;
    ``dim`` <= 0 switches the projection off)."""
    d = features.shape[1]
    if dim <= 0 or dim >= d:
        return features
    gen = torch.Generator().manual_seed(seed)
    proj = torch.randn(d, dim, generator=gen, dtype=features.dtype) / dim ** 0.5
    return features @ proj.to(features.device)


def greedy_coreset(features: torch.Tensor, n_select: int, projection_dim: int = 128, seed: int = 0,
                   progress: Optional[ProgressFn] = None, cancel: Optional[CancelToken] = None,
                   check_every: int = 64) -> torch.Tensor:
    """Indices of ``n_select`` rows of ``features`` (N, D) chosen by greedy k-center.

    Algorithm 1: start from one (seeded random) point; repeatedly add the point whose distance
    to its nearest selected point is largest, then lower every point's nearest distance by its
    distance to the new one (one fused matrix-vector product a step:
    ||a - b||^2 = |a|^2 - 2 a.b + |b|^2). The cost is N x n_select x projection_dim; it is the
    slowest part of fitting on a CPU. (Pruning by the triangle inequality was tried: the same
    selections, no faster on real patch features, whose projected distances are too uniform.)
    The cancel token is checked every ``check_every`` selections.
    """
    n = features.shape[0]
    if n_select >= n:
        return torch.arange(n)
    if n_select <= 0:
        raise ValueError("n_select must be positive")
    x = random_projection(features.float(), projection_dim, seed)
    sq = (x * x).sum(1)
    gen = torch.Generator().manual_seed(seed)
    first = int(torch.randint(n, (1,), generator=gen))
    selected = torch.empty(n_select, dtype=torch.long)
    selected[0] = first
    min_d = torch.addmv(sq, x, x[first], alpha=-2.0).add_(sq[first])  # squared distances
    min_d[first] = 0.0
    for i in range(1, n_select):
        j = int(torch.argmax(min_d))
        selected[i] = j
        torch.minimum(min_d, torch.addmv(sq, x, x[j], alpha=-2.0).add_(sq[j]), out=min_d)
        min_d[j] = 0.0
        if i % check_every == 0:
            check(cancel)
            if progress:
                progress(i, n_select, f"coreset {i}/{n_select}")
    if progress:
        progress(n_select, n_select, f"coreset {n_select}/{n_select}")
    return selected
