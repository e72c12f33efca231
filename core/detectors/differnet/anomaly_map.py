"""DifferNet localisation (paper section 3.3): gradient maps of the score.

The gradient of the score with respect to each transformed input copy is blurred with a
Gaussian per channel, made absolute and summed over the channels (eq. 7); the maps of the
rotated copies are rotated back and averaged ("Averaging the maps of multiple rotations of
one single image - after rotating back the obtained maps - gives a robust localization").
"""

from __future__ import annotations

import torch

from core.detectors.common import gaussian_blur
from core.detectors.differnet.torch_model import rotate


def gradient_maps(grads: torch.Tensor, sigma: float) -> torch.Tensor:
    """Eq. 7 for each copy: (T, C, H, W) gradients -> (T, H, W) = sum_c |grad_c * G_sigma|."""
    t, c, h, w = grads.shape
    blurred = gaussian_blur(grads.reshape(t * c, h, w), sigma).reshape(t, c, h, w)
    return blurred.abs().sum(dim=1)


def average_rotated_back(maps: torch.Tensor, degrees: torch.Tensor) -> torch.Tensor:
    """(T, H, W) maps of copies rotated by ``degrees`` -> one (H, W) map in the input's frame.

    Pixels a copy's rotation moved outside the frame (the corners) are averaged over the
    copies that saw them, so corners are not dimmed by zeros."""
    back = rotate(maps[:, None], -degrees)[:, 0]
    seen = rotate(torch.ones_like(maps[:, None]), -degrees)[:, 0]
    return back.sum(0) / seen.sum(0).clamp_min(1e-6)


def differnet_map(grads: torch.Tensor, degrees: torch.Tensor, sigma: float) -> torch.Tensor:
    return average_rotated_back(gradient_maps(grads, sigma), degrees)
