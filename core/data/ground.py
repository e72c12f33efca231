"""A part on a plain ground: where it is (fifth session, issue 24).

The ground is plain when most of the image's outer ring of pixels is: :data:`PLAIN_SHARE` of it
within :data:`PART_STEP` of its median (a part may touch the border, so not all of it). The part
is every pixel that differs from that ground by more than :data:`PART_STEP`, closed over small
gaps; its outline is the largest such region's. Used by patchcore's ``pose=outline`` (the part
turned upright) and by the self-check (synthetic defects pasted onto the part, not the ground).
"""

from __future__ import annotations

import cv2
import numpy as np

#: a pixel belongs to the part when it differs from the ground by more than this (values in [0, 1])
PART_STEP = 0.02
#: the ground is plain when at least this share of the ring's pixels lies within PART_STEP of
#: the ring's median
PLAIN_SHARE = 0.6
#: the part must cover at least this share of the frame (smaller: specks, not a part)
MIN_PART = 0.01
#: a "part" covering more of the frame than this is a texture filling it
MAX_PART = 0.9
#: the ring: this share of the shorter side (at least one pixel)
RING = 0.02


def _grey(img: np.ndarray) -> np.ndarray:
    x = np.asarray(img, dtype=np.float32)
    return x.max(axis=2) if x.ndim == 3 else x


def part_outline(img: np.ndarray) -> np.ndarray | None:
    """The outline (an OpenCV contour) of the part in ``img`` (float (H, W[, C]) in [0, 1]), or
    None when the ground is not plain or no part of at least :data:`MIN_PART` of the frame is found."""
    g = _grey(img)
    h, w = g.shape
    r = max(1, int(round(RING * min(h, w))))
    if h <= 4 * r or w <= 4 * r or not np.isfinite(g).all():
        return None
    ring = np.concatenate([g[:r].ravel(), g[-r:].ravel(), g[r:-r, :r].ravel(), g[r:-r, -r:].ravel()])
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
    return outline if cv2.contourArea(outline) >= MIN_PART * h * w else None


def part_region(img: np.ndarray) -> np.ndarray | None:
    """(H, W) bool: the part's pixels (inside its outline), or None where there is no part on a
    plain ground, or the "part" covers more than :data:`MAX_PART` of the frame (a texture)."""
    outline = part_outline(img)
    if outline is None:
        return None
    h, w = np.asarray(img).shape[:2]
    region = np.zeros((h, w), np.uint8)
    cv2.drawContours(region, [outline], -1, 1, thickness=cv2.FILLED)
    region = region.astype(bool)
    return None if region.sum() > MAX_PART * h * w else region
