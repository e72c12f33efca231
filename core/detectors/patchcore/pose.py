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

The part and its outline come from :mod:`core.data.ground` (a plain ground: most of the image's
outer ring within 0.02 of its median); the outline's minimum-area rectangle is the pose. Where
the ring is not plain, no part is found or the part's rectangle covers nearly the whole frame
(:data:`~core.data.ground.MAX_PART`: a texture filling it), the image is scored as it is.
Finding the outline takes about 40 ms on a 900 px image on this CPU, once an image (fit and score).
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from core.data.ground import MAX_PART, part_outline
from core.data.images import ImageReadError

#: the pose rules (the ``pose`` setting)
POSES = ("none", "outline")
#: :func:`shows_parts` looks at this many training images, evenly spread ...
SHOWS_SAMPLE = 12
#: ... and needs a part on a plain ground in at least this share of the readable ones
SHOWS_SHARE = 0.5


@dataclass(frozen=True)
class Pose:
    """The affine map from the input to the part's upright frame (2 x 3, float64) and that frame's
    (height, width)."""

    matrix: np.ndarray
    shape: tuple[int, int]


def find_pose(img: np.ndarray) -> Pose | None:
    """The part's pose in ``img`` (float (H, W[, C]) in [0, 1]), or None when the ground is not
    plain, no part is found (:func:`core.data.ground.part_outline`) or its rectangle covers more
    than :data:`~core.data.ground.MAX_PART` of the frame (a texture filling it)."""
    outline = part_outline(img)
    if outline is None:
        return None
    h, w = np.asarray(img).shape[:2]
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


def shows_parts(images, sample: int = SHOWS_SAMPLE) -> bool:
    """Whether the images show parts on a plain ground: :func:`find_pose` finds one in at least
    :data:`SHOWS_SHARE` of up to ``sample`` of them, evenly spread (unreadable ones skipped). The
    test ``train --auto`` makes before it tries ``pose=outline`` (about 40 ms an image)."""
    n = len(images)
    picks = sorted({int(i) for i in np.linspace(0, n - 1, min(n, sample)).round()}) if n else []
    seen = found = 0
    for i in picks:
        try:
            img = images[i]
        except ImageReadError:
            continue
        seen += 1
        found += find_pose(img) is not None
    return seen > 0 and found >= SHOWS_SHARE * seen
