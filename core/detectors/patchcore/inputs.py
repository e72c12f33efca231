"""What PatchCore's backbone sees: the working frame of each image (square, aspect kept, padded),
the training images' augmented copies, and where the padded part of a frame lies.

Nothing here is in the paper, which resizes every image to 256 x 256 and crops 224 x 224
(3.1 / 4.1): it works for MVTec's aligned square photographs. Parts that are not held in a
fixture come in other shapes (MTD's tiles are 1 : 1 to 1 : 2.8) and in any orientation, and
squashing a 1 : 2.5 strip into a square stretches its texture 2.5 times along one axis, so that
a patch of one image never matches the same texture in another (issue 24; measured in
docs/benchmarks.md, "PatchCore without a fixture").

Resize rules (``resize``):
- ``square`` (the paper's, without its crop): ``size`` x ``size`` whatever the shape.
- ``keep``: the aspect kept, the area that of the square (so the same compute), each side a
  multiple of the backbone's deepest stride.
- ``pad``: the longer side ``size``, the aspect kept, padded to the square at the bottom and the
  right with the image's mean colour; the padded patches are never scored or mapped.
- ``native``: the aspect AND the relative scale kept: every image is resized by one factor, the
  one that gives the training images' median area the square's area (learned when training), so
  a texture has the same scale in every image whatever its crop (one camera, tiles of any size);
  a frame's area is bounded by :data:`NATIVE_MAX_AREA` squares.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import cv2
import numpy as np

from core.data.images import resize, to_channels

RESIZE_RULES = ("square", "keep", "pad")
#: the rules that need a scale learned from the training images (not for zero-shot batches)
TRAINED_RESIZE_RULES = RESIZE_RULES + ("native",)
NATIVE_MAX_AREA = 4
AUGMENTS = ("none", "flip", "rot4", "rot4+flip", "rot8")
#: how an image is resized into its frame (issue 24): ``area`` is OpenCV's pixel-area rule for
#: both directions (it enlarges by near-copies of pixels: blocky edges the backbone responds to);
#: ``smooth`` shrinks an axis by area and enlarges it bilinearly, as an antialiased resize does
RESAMPLES = ("area", "smooth")
#: smallest working side (pixels); below it the stride-16 stage has almost no positions
MIN_SIDE = 32


@dataclass(frozen=True)
class Frame:
    """One image's working frame: the tensor's (height, width) and the part of it the image
    fills (the rest is padding), both in working pixels."""

    shape: tuple[int, int]
    valid: tuple[int, int]


def _multiple(x: float, m: int) -> int:
    return max(m, int(round(x / m)) * m)


def native_scale(shapes: list[tuple[int, int]], size: int) -> float:
    """``native``'s one factor: the square's area over the median area of ``shapes``."""
    areas = sorted(h * w for h, w in shapes)
    return size / math.sqrt(areas[len(areas) // 2])


def working_frame(height: int, width: int, size: int, rule: str, stride: int, scale: float | None = None) -> Frame:
    """The frame an image of ``height`` x ``width`` is resized into under ``rule`` (``native``
    needs its ``scale``)."""
    if rule == "square":
        return Frame((size, size), (size, size))
    if rule in ("keep", "native"):
        if rule == "native":
            if not scale or scale <= 0:
                raise ValueError("resize=native needs the scale learned from the training images")
            h, w = height * scale, width * scale
            cap = NATIVE_MAX_AREA * size * size
            if h * w > cap:
                h, w = h * math.sqrt(cap / (h * w)), w * math.sqrt(cap / (h * w))
        else:
            aspect = height / width
            h = math.sqrt(size * size * aspect)
            w = size * size / h
        lo = max(stride, min(MIN_SIDE, size))
        if min(h, w) < lo:  # a very long strip: its short side at the floor, the aspect kept
            h, w = h * lo / min(h, w), w * lo / min(h, w)
        hh, ww = max(lo, _multiple(h, stride)), max(lo, _multiple(w, stride))
        return Frame((hh, ww), (hh, ww))
    if rule == "pad":
        scale = size / max(height, width)
        vh = max(1, min(size, int(round(height * scale))))
        vw = max(1, min(size, int(round(width * scale))))
        return Frame((size, size), (vh, vw))
    raise ValueError(f"unknown resize rule '{rule}' (known: {', '.join(RESIZE_RULES)})")


def resample_to(img: np.ndarray, size: tuple[int, int], rule: str = "area") -> np.ndarray:
    """``img`` resized to ``size`` = (height, width) by ``rule`` (:data:`RESAMPLES`)."""
    if rule == "area":
        return resize(img, size)
    if rule != "smooth":
        raise ValueError(f"unknown resample rule '{rule}' (known: {', '.join(RESAMPLES)})")
    h, w = img.shape[:2]
    th, tw = size
    if (th <= h) == (tw <= w):  # both axes shrink (area) or both enlarge (bilinear): one resize
        return resize(img, size, cv2.INTER_AREA if th <= h else cv2.INTER_LINEAR)
    # one axis of each: each its own rule, the shrinking one first (less to interpolate)
    if th < h:
        return resize(resize(img, (th, w), cv2.INTER_AREA), size, cv2.INTER_LINEAR)
    return resize(resize(img, (h, tw), cv2.INTER_AREA), size, cv2.INTER_LINEAR)


def to_frame(img: np.ndarray, frame: Frame, resample: str = "area") -> np.ndarray:
    """(3, H, W) float32 array of ``img`` (H, W, C in [0, 1]) in its frame: resized into the
    valid part (``resample``), the rest filled with the image's mean colour."""
    vh, vw = frame.valid
    small = to_channels(resample_to(img, (vh, vw), resample), 3).astype(np.float32, copy=False)
    if frame.valid == frame.shape:
        out = small
    else:
        out = np.empty((*frame.shape, 3), np.float32)
        out[...] = small.reshape(-1, 3).mean(0)
        out[:vh, :vw] = small
    return np.ascontiguousarray(np.clip(out, 0.0, 1.0).transpose(2, 0, 1))


def valid_grid(frame: Frame, stride: int) -> tuple[int, int]:
    """Rows and columns of the stride-``stride`` feature grid whose patch centre lies inside
    the valid part of the frame (the grid of a padded frame is cropped to them)."""
    vh, vw = frame.valid
    return max(1, int(math.ceil(vh / stride - 0.5))), max(1, int(math.ceil(vw / stride - 0.5)))


def augment_views(img: np.ndarray, rule: str) -> list[np.ndarray]:
    """The copies of one training image that go into the memory bank (the image first).

    ``flip``: and its mirror image; ``rot4``: the four right-angle rotations (exact);
    ``rot4+flip``: those and their mirror images (the 8 symmetries of the square); ``rot8``: the
    rotations by multiples of 45 degrees, the diagonal ones about the centre with the corners
    filled by reflection (as ``benchmarks/unaligned.py`` fills them)."""
    if rule == "none":
        return [img]
    if rule == "flip":
        return [img, img[:, ::-1]]
    rots = [np.rot90(img, k) for k in range(4)]
    if rule == "rot4":
        return rots
    if rule == "rot4+flip":
        return rots + [r[:, ::-1] for r in rots]
    if rule == "rot8":
        h, w = img.shape[:2]
        m = cv2.getRotationMatrix2D(((w - 1) / 2.0, (h - 1) / 2.0), 45.0, 1.0)
        diag = cv2.warpAffine(np.ascontiguousarray(img), m, (w, h), flags=cv2.INTER_LINEAR,
                              borderMode=cv2.BORDER_REFLECT_101)
        if diag.ndim == 2:
            diag = diag[:, :, None]
        return rots + [np.rot90(diag, k) for k in range(4)]
    raise ValueError(f"unknown augmentation '{rule}' (known: {', '.join(AUGMENTS)})")


def n_views(rule: str) -> int:
    return {"none": 1, "flip": 2, "rot4": 4, "rot4+flip": 8, "rot8": 8}[rule]
