"""Which patches belong to the part, for objects on a plain background (optional, ``foreground``).

After AnomalyDINO (Damm, Laurer, Meuwissen, Huber, Lukas, "AnomalyDINO: Boosting Patch-based
Few-shot Anomaly Detection with DINOv2", WACV 2025, 3.2 "masking"): the first principal
component of the good images' patch features separates the object from the background; patches
of the background are never the image score. The paper thresholds DINOv2's first component at a
fixed value and decides per category by hand whether to mask. DEPARTURES, because our features
are a CNN's and nobody should pick a category by hand:

- the threshold is the Otsu split of the first component over the training patches;
- which side is the background is read from the frame's border: the side that holds at least
  80 % of the border patches of the training images;
- the mask is used only when the split is clear (between-class variance at least half of the
  total) and the background side holds 5-90 % of the patches; otherwise the model records that it
  found no background and every patch counts (a texture such as MTD's has none);
- the mask is dilated by one patch (as AnomalyDINO dilates), so a defect on the part's edge is
  not cut away; an empty mask counts every patch.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

#: patches of the training images used to learn the split (a seeded subset above it)
MAX_PATCHES = 50_000
BORDER_SHARE = 0.8
CLEAR_SPLIT = 0.5
BACKGROUND_SHARE = (0.05, 0.9)


def otsu(values: torch.Tensor, bins: int = 256) -> tuple[float, float]:
    """(threshold, between-class variance / total variance) of a 1-D sample (Otsu 1979)."""
    v = values.double().flatten()
    lo, hi = float(v.min()), float(v.max())
    if not hi > lo:
        return lo, 0.0
    hist = torch.histc(v, bins=bins, min=lo, max=hi)
    centres = lo + (torch.arange(bins, dtype=torch.float64) + 0.5) * (hi - lo) / bins
    p = hist / hist.sum()
    w0 = torch.cumsum(p, 0)
    m0 = torch.cumsum(p * centres, 0)
    mt = m0[-1]
    w1 = 1.0 - w0
    between = (mt * w0 - m0) ** 2 / (w0 * w1).clamp_min(1e-12)
    between[(w0 <= 0) | (w1 <= 0)] = 0.0
    k = int(torch.argmax(between))
    total = float(((centres - mt) ** 2 * p).sum())
    return float(centres[k] + 0.5 * (hi - lo) / bins), float(between[k]) / total if total > 0 else 0.0


def _border(grid: torch.Tensor) -> torch.Tensor:
    """The outer ring of an (h, w, ...) grid, flattened over the ring."""
    h, w = grid.shape[:2]
    if h <= 2 or w <= 2:
        return grid.reshape(h * w, *grid.shape[2:])
    return torch.cat([grid[0], grid[-1], grid[1:-1, 0], grid[1:-1, -1]])


def fit_foreground(grids: list[torch.Tensor], seed: int = 0) -> dict[str, torch.Tensor]:
    """Learn the split from training feature grids (each (h, w, D)); returns the tensors a model
    saves: ``mean`` (D,), ``direction`` (D,), ``threshold`` and ``side`` (1: the background lies
    above the threshold, -1: below, 0: no background found), and the split's ``clarity``."""
    flat = torch.cat([g.reshape(-1, g.shape[-1]) for g in grids]).float()
    gen = torch.Generator().manual_seed(seed)
    if flat.shape[0] > MAX_PATCHES:
        flat = flat[torch.randperm(flat.shape[0], generator=gen)[:MAX_PATCHES]]
    mean = flat.mean(0)
    centred = flat - mean
    # the first principal component (a seeded low-rank SVD: D may be 1000+)
    _, _, v = torch.svd_lowrank(centred, q=min(6, *centred.shape), niter=4, M=None)
    direction = v[:, 0]
    proj = centred @ direction
    threshold, clarity = otsu(proj)
    border = torch.cat([_border((g.float() - mean) @ direction) for g in grids])
    above_border = float((border > threshold).float().mean())
    above_all = float((proj > threshold).float().mean())
    side = 0
    if clarity >= CLEAR_SPLIT:
        if above_border >= BORDER_SHARE and BACKGROUND_SHARE[0] <= above_all <= BACKGROUND_SHARE[1]:
            side = 1
        elif above_border <= 1.0 - BORDER_SHARE and BACKGROUND_SHARE[0] <= 1.0 - above_all <= BACKGROUND_SHARE[1]:
            side = -1
    return {"mean": mean, "direction": direction, "threshold": torch.tensor(threshold, dtype=torch.float32),
            "side": torch.tensor(side, dtype=torch.int64), "clarity": torch.tensor(clarity, dtype=torch.float32)}


def foreground_mask(grid: torch.Tensor, model: dict[str, torch.Tensor]) -> torch.Tensor:
    """(h, w) bool: the part's patches of one (h, w, D) feature grid, dilated by one patch; all
    True when the model found no background or the mask would be empty."""
    h, w = grid.shape[:2]
    side = int(model["side"])
    if side == 0:
        return torch.ones(h, w, dtype=torch.bool, device=grid.device)
    proj = (grid.float() - model["mean"].to(grid.device)) @ model["direction"].to(grid.device)
    background = proj > float(model["threshold"]) if side == 1 else proj < float(model["threshold"])
    fg = ~background
    if not bool(fg.any()):
        return torch.ones(h, w, dtype=torch.bool, device=grid.device)
    return F.max_pool2d(fg[None, None].float(), 3, stride=1, padding=1)[0, 0] > 0


def check_model(model: dict[str, torch.Tensor], dim: int) -> None:
    """Refuse saved foreground tensors of the wrong shape or with non-finite values."""
    if model["mean"].shape != (dim,) or model["direction"].shape != (dim,):
        raise ValueError(f"foreground model of shape {tuple(model['mean'].shape)} does not fit {dim} features")
    for k in ("mean", "direction", "threshold"):
        if not bool(torch.isfinite(model[k]).all()):
            raise ValueError(f"foreground {k} is not finite")
    if int(model["side"]) not in (-1, 0, 1):
        raise ValueError("foreground side must be -1, 0 or 1")
