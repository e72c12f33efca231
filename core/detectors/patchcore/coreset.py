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
                   check_every: int = 64, start: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Indices of ``n_select`` rows of ``features`` (N, D) chosen by greedy k-center.

    Algorithm 1: start from one (seeded random) point; repeatedly add the point whose distance
    to its nearest selected point is largest, then lower every point's nearest distance by its
    distance to the new one (one fused matrix-vector product a step:
    ||a - b||^2 = |a|^2 - 2 a.b + |b|^2). The cost is N x n_select x projection_dim; it is the
    slowest part of fitting on a CPU. (Pruning by the triangle inequality was tried: the same
    selections, no faster on real patch features, whose projected distances are too uniform.)
    The cancel token is checked every ``check_every`` selections.

    ``start`` (ours): indices already selected (the greedy run continues from them, so the result
    begins with ``start``). Cross-calibration starts each fold's bank from the points of the full
    bank that belong to the fold's own training images: the greedy steps then only fill the
    holes the held-out images' points leave, a fifth of the steps of a fresh run, and the bank
    holds no patch of a held-out image.
    """
    n = features.shape[0]
    if n_select >= n:
        return torch.arange(n)
    if n_select <= 0:
        raise ValueError("n_select must be positive")
    x = random_projection(features.float(), projection_dim, seed)
    sq = (x * x).sum(1)
    selected = torch.empty(n_select, dtype=torch.long)
    if start is not None and len(start):
        begin = min(len(start), n_select)
        selected[:begin] = start[:begin]
        min_d = torch.full((n,), float("inf"))
        rows = max(1, (16 * 1024 * 1024) // n)  # about 64 MB of distances a block
        for a in range(0, begin, rows):
            s_x = x[selected[a:min(begin, a + rows)]]
            block = torch.addmm(sq[:, None], x, s_x.T, alpha=-2.0).add_((s_x * s_x).sum(1)[None])
            torch.minimum(min_d, block.min(dim=1).values, out=min_d)
            check(cancel)
        min_d[selected[:begin]] = 0.0
    else:
        gen = torch.Generator().manual_seed(seed)
        first = int(torch.randint(n, (1,), generator=gen))
        selected[0] = first
        begin = 1
        min_d = torch.addmv(sq, x, x[first], alpha=-2.0).add_(sq[first])  # squared distances
        min_d[first] = 0.0
    for i in range(begin, n_select):
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
