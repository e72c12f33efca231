"""Restoration error maps (paper: score-based-perturbation-resilience, section 4.4, Algorithm 1).

For an image ``x`` and a fixed level ``k``, each of ``N`` draws perturbs and restores it:

    x~ = x + sigma_k eps,    x^ = x~ + sigma_k s_theta(x~, k).

The paper's signs disagree between eq. 4 (target ``(x - x~) / sigma_k = -eps``), eq. 5 and
Algorithm 1 (which write ``eps - s_theta``). We implement the meaning: ``s_theta ≈ -eps`` on
normal data, so ``x^ ≈ x`` there, and the restoration error is

    ||x - x^||^2 = sigma_k^2 ||eps + s_theta(x~, k)||^2,

per pixel summed over channels, with the constant ``sigma_k^2`` dropped (eq. 6), averaged over
the N draws (Algorithm 1, lines 4-8), then smoothed by a ``size x size`` mean filter (line 9).

Smoothing resolution (our choice; the paper says "maps are resized to 256x256 ... smoothed by
a 31x31 averaging filter" without the order): the filter runs on the map at the working
resolution (192 px in the paper's setting), before the map is resized to the input image,
so a kernel covers the same part of the image whatever the input size. Borders are reflected
(OpenCV ``blur``'s default). The kernel is clamped to the largest odd size that fits the map.
"""

from __future__ import annotations

import cv2
import numpy as np
import torch
import torch.nn.functional as F


def restoration_error(eps: torch.Tensor, score: torch.Tensor) -> torch.Tensor:
    """Eq. 6 for one draw: ``sum_c (eps + s_theta)^2`` -> (B, H, W) (= ||x - x^||^2 / sigma_k^2)."""
    return (eps.float() + score.float()).pow(2).sum(1)


def mean_filter(maps: torch.Tensor, size: int) -> torch.Tensor:
    """``size x size`` averaging filter of (B, H, W) maps with reflected borders; size <= 1 is a no-op."""
    h, w = maps.shape[-2:]
    fit = min(size, h if h % 2 else h - 1, w if w % 2 else w - 1)
    if fit <= 1:
        return maps
    r = fit // 2
    x = F.pad(maps[:, None].float(), (r, r, r, r), mode="reflect")
    # Separable box filter: two 1-D averages (exactly the 2-D mean of the window).
    x = F.avg_pool2d(x, (1, fit), stride=1)
    x = F.avg_pool2d(x, (fit, 1), stride=1)
    return x[:, 0]


def error_maps(eps: torch.Tensor, scores: torch.Tensor, n_draws: int, smooth: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Algorithm 1 for a batch: ``eps`` and ``scores`` are (B * N, C, H, W), draws of one image
    adjacent. Returns (raw mean-over-draws map, smoothed map), each (B, H, W)."""
    err = restoration_error(eps, scores)
    raw = err.view(-1, n_draws, *err.shape[-2:]).mean(1)
    return raw, mean_filter(raw, smooth)


def map_to_input_lanczos(map_small: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """Resize a working-resolution map to the input image's (H, W) with Lanczos (paper 5.3).

    Lanczos rings slightly around steep edges; the error is non-negative, so we clip at 0.
    """
    h, w = shape[:2]
    m = map_small.astype(np.float32)
    if m.shape != (h, w):
        m = cv2.resize(m, (w, h), interpolation=cv2.INTER_LANCZOS4)
    return np.maximum(m, 0.0, out=m)
