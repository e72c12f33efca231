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


def expect_tensor(tensors: dict[str, torch.Tensor], name: str, *, dtype: torch.dtype,
                  shape: Sequence[int | None] | None = None, low: float | None = None, high: float | None = None,
                  why: str = "") -> torch.Tensor:
    """``tensors[name]`` when it is of ``dtype`` and ``shape`` (``None``: any size on that axis),
    finite, and within ``[low, high]``; else ``ValueError`` naming the tensor and what is wrong
    (``why`` says where the range comes from). A model folder is untrusted input: a variance of
    -1 or 1e30 loads as easily as a trained one and scores every image 0."""
    if name not in tensors:
        raise KeyError(f"the weights hold no '{name}'")
    t = tensors[name]
    if t.dtype != dtype:
        raise ValueError(f"'{name}' is {str(t.dtype).replace('torch.', '')}, not "
                         f"{str(dtype).replace('torch.', '')}")
    if shape is not None and (t.dim() != len(shape) or any(s is not None and s != n for s, n in zip(shape, t.shape))):
        want = "(" + ", ".join("*" if s is None else str(s) for s in shape) + ")"
        raise ValueError(f"'{name}' has shape {tuple(t.shape)}, not {want}")
    if t.is_floating_point() and not bool(torch.isfinite(t).all()):
        raise ValueError(f"'{name}' holds NaN or infinite values")
    if t.numel() and ((low is not None and float(t.min()) < low) or (high is not None and float(t.max()) > high)):
        span = f"[{'-inf' if low is None else f'{low:g}'}, {'inf' if high is None else f'{high:g}'}]"
        raise ValueError(f"'{name}' holds values outside {span}" + (f" ({why})" if why else "")
                         + f": {float(t.min()):g} to {float(t.max()):g}")
    return t


def check_same_layout(loaded: dict[str, torch.Tensor], held: dict[str, torch.Tensor]) -> None:
    """What a model holds after loading is what the file held: the same tensor names, dtypes and
    shapes (``load_state_dict`` converts an int8 or float64 tensor into a float32 parameter
    without a word; a model folder with such weights was not written by this program)."""
    extra, missing = sorted(set(loaded) - set(held)), sorted(set(held) - set(loaded))
    if extra or missing:
        raise ValueError(f"unexpected tensors {extra[:3]}" if extra else f"missing tensors {missing[:3]}")
    for k in sorted(loaded):
        a, b = loaded[k], held[k]
        if a.dtype != b.dtype:
            raise ValueError(f"'{k}' is {str(a.dtype).replace('torch.', '')}, the model holds "
                             f"{str(b.dtype).replace('torch.', '')}")
        if tuple(a.shape) != tuple(b.shape):
            raise ValueError(f"'{k}' has shape {tuple(a.shape)}, the model holds {tuple(b.shape)}")


def load_module_state(module: torch.nn.Module, tensors: dict[str, torch.Tensor], prefix: str = "") -> None:
    """``module.load_state_dict(tensors, strict=True)`` after :func:`check_same_layout`, so that a
    tensor of another dtype or shape is refused naming it (``prefix`` + its name, as saved)."""
    check_same_layout({prefix + k: v for k, v in tensors.items()},
                      {prefix + k: v for k, v in module.state_dict().items()})
    module.load_state_dict(tensors, strict=True)
