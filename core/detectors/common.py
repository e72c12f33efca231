"""Small pieces several detectors share: resizing to a working resolution, channel choice,
map smoothing and returning maps at the input resolution (the training loop and the training-image
cache are in :mod:`core.detectors.training`)."""

from __future__ import annotations

import math
from collections.abc import Sequence

import cv2
import numpy as np
import torch
import torch.nn.functional as F

from core.data.images import resize, to_channels


def infer_channels(images: Sequence[np.ndarray]) -> int:
    """3 if any image has colour, else 1."""
    return 3 if any(img.shape[2] == 3 for img in images) else 1


def to_tensor_batch(images: Sequence[np.ndarray], size: int, channels: int) -> torch.Tensor:
    """(N, C, size, size) float32 tensor on the CPU, area-resized."""
    arrs = [to_channels(resize(img, (size, size)), channels) for img in images]
    return torch.from_numpy(np.stack(arrs).transpose(0, 3, 1, 2).copy())


def gaussian_kernel1d(sigma: float, device: torch.device | None = None) -> torch.Tensor:
    radius = max(1, int(math.ceil(3.0 * sigma)))
    x = torch.arange(-radius, radius + 1, dtype=torch.float32, device=device)
    k = torch.exp(-0.5 * (x / sigma) ** 2)
    return k / k.sum()


def gaussian_blur(maps: torch.Tensor, sigma: float) -> torch.Tensor:
    """Separable Gaussian blur of (N, H, W) maps with reflect padding; sigma <= 0 is a no-op."""
    if sigma <= 0:
        return maps
    k = gaussian_kernel1d(sigma, maps.device)
    r = k.numel() // 2
    x = maps[:, None]
    pad_h = min(r, x.shape[-1] - 1)
    pad_v = min(r, x.shape[-2] - 1)
    if pad_h < r or pad_v < r:  # tiny maps: fall back to replicate padding
        x = F.pad(x, (r, r, r, r), mode="replicate")
    else:
        x = F.pad(x, (r, r, r, r), mode="reflect")
    x = F.conv2d(x, k.view(1, 1, 1, -1))
    x = F.conv2d(x, k.view(1, 1, -1, 1))
    return x[:, 0]


def gaussian_blur_np(m: np.ndarray, sigma: float) -> np.ndarray:
    """:func:`gaussian_blur` of one (H, W) float32 map with OpenCV (the same kernel and borders:
    reflected, or replicated when the map is smaller than the kernel's radius; equal within float
    rounding). Single-threaded and about ten times cheaper than the torch convolution on a
    224 x 224 map, which matters when a scan scores tens of images a second."""
    if sigma <= 0:
        return m
    k = gaussian_kernel1d(sigma).numpy()
    r = k.size // 2
    border = cv2.BORDER_REFLECT_101 if min(m.shape[0], m.shape[1]) - 1 >= r else cv2.BORDER_REPLICATE
    return cv2.sepFilter2D(np.ascontiguousarray(m, dtype=np.float32), -1, k, k, borderType=border)


def upsample_np(m: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Bilinear resize of an (h, w) float32 map to ``shape`` (H, W), half-pixel centres (as
    ``F.interpolate(..., mode="bilinear", align_corners=False)``, within float rounding)."""
    return cv2.resize(np.ascontiguousarray(m, dtype=np.float32), (int(shape[1]), int(shape[0])),
                      interpolation=cv2.INTER_LINEAR)


def map_to_input(map_small: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """Bilinear resize of a working-resolution map back to the input image (H, W)."""
    h, w = shape[:2]
    return cv2.resize(map_small.astype(np.float32), (w, h), interpolation=cv2.INTER_LINEAR)


def check_unet_shape(block_out_channels: Sequence[int], norm_num_groups: int, sample_size: int) -> None:
    """Refuse a diffusers U-Net shape that would fail deep inside its forward pass."""
    levels = len(block_out_channels)
    if levels < 1:
        raise ValueError("block_out_channels needs at least one level")
    bad = [c for c in block_out_channels if c % norm_num_groups]
    if bad:
        raise ValueError(f"norm_num_groups={norm_num_groups} must divide every block width; it does not divide {bad}")
    stride = 2 ** (levels - 1)
    if sample_size % stride:
        raise ValueError(f"image size {sample_size} must be a multiple of 2^(levels - 1) = {stride} "
                         f"for {levels} U-Net levels")
