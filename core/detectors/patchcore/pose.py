"""A part's pose on a plain ground (``pose=outline``, fifth session, issue 24).

A part that is not held in a fixture lies at any angle and place in the frame. Where it lies on a
plain ground, its outline gives its pose: the image is turned so that the part's minimum-area
rectangle is upright (long side horizontal) and cropped to it, so that the part fills its own
frame as it would under a fixture, and its edges are the frame's edges again (what
``border=zeros`` tells apart). The map is turned back into the input's frame afterwards; outside
the part it is 0 (the ground is never scored). Measured on the rotated MTD on a black ground
(``benchmarks/unaligned.py --fill black``): 0.765 -> 0.922 image AUROC (0.887 -> 0.912 pixel)
(docs/benchmarks.md "What limits the rotated MTD"). A half turn remains (the rectangle cannot
tell the part's two ends apart): the training images give both.

The ground is plain when most of the image's outer ring of pixels is (:data:`PLAIN_SHARE` of it
within :data:`PART_STEP` of its median: the part may touch the border); the part is every pixel that differs from the ring's median by more than
:data:`PART_STEP`, closed over small gaps; its largest outline's minimum-area rectangle is the
pose. Where the ring is not plain, no part is found or the part's rectangle covers nearly the
whole frame (:data:`MAX_PART`: a texture filling it), the image is scored as it is.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

#: the ground is plain when at least this share of the ring's pixels lies within PART_STEP of
#: the ring's median (a part may touch the border, so not all of them)
PLAIN_SHARE = 0.6
#: a "part" whose rectangle covers more of the frame than this is a texture filling it: no pose
MAX_PART = 0.9
#: a pixel belongs to the part when it differs from the ground by more than this (values in [0, 1])
PART_STEP = 0.02
#: the part must cover at least this share of the frame (smaller: specks, not a part)
MIN_PART = 0.01
#: the pose rules (the ``pose`` setting)
POSES = ("none", "outline")
#: the ring: this share of the shorter side (at least one pixel)
RING = 0.02


@dataclass(frozen=True)
class Pose:
    """The affine map from the input to the part's upright frame (2 x 3, float64) and that frame's
    (height, width)."""

    matrix: np.ndarray
    shape: tuple[int, int]


def _grey(img: np.ndarray) -> np.ndarray:
    x = np.asarray(img, dtype=np.float32)
    return x.max(axis=2) if x.ndim == 3 else x


def find_pose(img: np.ndarray) -> Pose | None:
    """The part's pose in ``img`` (float (H, W[, C]) in [0, 1]), or None when the ground is not
    plain or no part is found."""
    g = _grey(img)
    h, w = g.shape
    r = max(1, int(round(RING * min(h, w))))
    if h <= 4 * r or w <= 4 * r:
        return None
    ring = np.concatenate([g[:r].ravel(), g[-r:].ravel(), g[r:-r, :r].ravel(), g[r:-r, -r:].ravel()])
    if not np.isfinite(g).all():
        return None
    ground = float(np.median(ring))
    if float((np.abs(ring - ground) <= PART_STEP).mean()) < PLAIN_SHARE:
        return None
    part = (np.abs(g - ground) > PART_STEP).astype(np.uint8)
    k = max(3, (min(h, w) // 100) | 1)
    part = cv2.morphologyEx(part, cv2.MORPH_CLOSE, np.ones((k, k), np.uint8))
    contours, _ = cv2.findContours(part, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    if not contours:
        return None
    outline = max(contours, key=cv2.contourArea)
    if cv2.contourArea(outline) < MIN_PART * h * w:
        return None
    (cx, cy), (rw, rh), angle = cv2.minAreaRect(outline)
    if rw * rh > MAX_PART * h * w:
        return None
    if rw < rh:  # the long side horizontal
        rw, rh, angle = rh, rw, angle + 90.0
    ow, oh = max(1, int(round(rw))), max(1, int(round(rh)))
    m = cv2.getRotationMatrix2D((cx, cy), angle, 1.0)
    m[0, 2] += ow / 2.0 - cx
    m[1, 2] += oh / 2.0 - cy
    return Pose(m, (oh, ow))


def to_pose(img: np.ndarray, pose: Pose) -> np.ndarray:
    """The part in its upright frame (the input's type and channels)."""
    oh, ow = pose.shape
    out = cv2.warpAffine(np.ascontiguousarray(img), pose.matrix, (ow, oh), flags=cv2.INTER_LINEAR,
                         borderMode=cv2.BORDER_REPLICATE)
    return out[:, :, None] if img.ndim == 3 and out.ndim == 2 else out


def from_pose(amap: np.ndarray, pose: Pose, shape: tuple[int, int]) -> np.ndarray:
    """A map of the part's upright frame put back into the input's frame ``shape`` (H, W); 0
    outside the part."""
    h, w = shape
    return cv2.warpAffine(np.ascontiguousarray(amap, dtype=np.float32), pose.matrix, (w, h),
                          flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP, borderMode=cv2.BORDER_CONSTANT, borderValue=0.0)
