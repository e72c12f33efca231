"""Synthetic defects pasted into good images, for a model's self-check (issue 24, part 4).

A model that has only seen good parts can still be asked how well it would see a defect: paste
one into a held-out good image and see whether it scores above the good ones. Two kinds, each
seeded and at several sizes:

- ``cutpaste``: a rectangle cut from another good image (at another place), turned by a right
  angle half of the time, pasted at a random place (CutPaste: Li, Sohn, Yoon, Pfister, CVPR 2021:
  a patch of the image itself; here from another image, so the pasted content is normal and only
  its place is wrong, as with a foreign part or a misplaced feature).
- ``perlin``: a blob shaped by thresholded Perlin noise (as DRAEM, Zavrtanik et al., ICCV 2021,
  shapes its anomalies), filled with another good image's content made darker or brighter by
  20-40 % and blended in at 60-100 %: a stain, a spot, a burn, a scratch-like streak.

Where an image shows a part on a plain ground (:func:`core.data.ground.part_region`), a defect
is placed on the part and its content taken from the donor's part (fifth session): a defect on
the ground is not one an inspector meets, and on a dark ground a pasted patch of part is found
trivially, so the self-check overrated such models (and could not see what ``pose=outline`` gains).
Elsewhere the places are drawn over the whole image, as before (the same draws).

``size`` is the defect's side as a fraction of the image's shorter side (for a Perlin blob, the
side of the square it is drawn in). Images are float32 (H, W, C) in [0, 1], as
:mod:`core.data.images` decodes them.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Sequence
from dataclasses import dataclass

import cv2
import numpy as np

from core.data.ground import part_region

KINDS = ("cutpaste", "perlin")
#: defect sides as fractions of the image's shorter side
SIZES = (0.04, 0.08, 0.16)


@dataclass(frozen=True)
class SyntheticDefect:
    image: np.ndarray
    mask: np.ndarray  # (H, W) bool: where the image was changed
    kind: str
    size: float


def _rng(seed: int, *keys: object) -> np.random.Generator:
    digest = hashlib.sha256(":".join(map(str, (seed, *keys))).encode()).digest()
    return np.random.default_rng(int.from_bytes(digest[:8], "little"))


def perlin(shape: tuple[int, int], cells: int, rng: np.random.Generator) -> np.ndarray:
    """2-D Perlin gradient noise of ``shape`` with ``cells`` lattice cells along the shorter side,
    roughly in [-1, 1]."""
    h, w = shape
    cy = max(1, int(round(cells * h / min(h, w))))
    cx = max(1, int(round(cells * w / min(h, w))))
    angles = rng.uniform(0, 2 * math.pi, (cy + 1, cx + 1))
    gy, gx = np.sin(angles), np.cos(angles)
    y = np.linspace(0, cy, h, endpoint=False)[:, None] + np.zeros((1, w))
    x = np.linspace(0, cx, w, endpoint=False)[None, :] + np.zeros((h, 1))
    y0, x0 = np.floor(y).astype(int), np.floor(x).astype(int)
    fy, fx = y - y0, x - x0

    def dot(dy: int, dx: int) -> np.ndarray:
        return gy[y0 + dy, x0 + dx] * (fy - dy) + gx[y0 + dy, x0 + dx] * (fx - dx)

    def fade(t: np.ndarray) -> np.ndarray:
        return t * t * t * (t * (t * 6 - 15) + 10)

    u, v = fade(fx), fade(fy)
    top = dot(0, 0) * (1 - u) + dot(0, 1) * u
    bottom = dot(1, 0) * (1 - u) + dot(1, 1) * u
    return (top * (1 - v) + bottom * v) * math.sqrt(2)


def _like(img: np.ndarray, donor: np.ndarray) -> np.ndarray:
    """``donor`` with ``img``'s size and channels."""
    h, w = img.shape[:2]
    out = cv2.resize(donor, (w, h), interpolation=cv2.INTER_AREA) if donor.shape[:2] != (h, w) else donor
    if out.ndim == 2:
        out = out[:, :, None]
    c = img.shape[2]
    if out.shape[2] != c:
        out = out.mean(axis=2, keepdims=True) if c == 1 else np.repeat(out[:, :, :1], c, axis=2)
    return out.astype(np.float32, copy=False)


def _place(rng: np.random.Generator, h: int, w: int, ph: int, pw: int, where: np.ndarray | None) -> tuple[int, int]:
    """The top-left corner of a ph x pw patch in an h x w image: anywhere (``where`` None: the
    draws of the first self-check), or centred on a random pixel of ``where``, kept inside."""
    if where is None:
        return int(rng.integers(0, h - ph + 1)), int(rng.integers(0, w - pw + 1))
    ys, xs = np.nonzero(where)
    i = int(rng.integers(0, ys.size))
    return (int(np.clip(ys[i] - ph // 2, 0, h - ph)), int(np.clip(xs[i] - pw // 2, 0, w - pw)))


def cutpaste(img: np.ndarray, donor: np.ndarray, size: float, rng: np.random.Generator,
             where: np.ndarray | None = None, source: np.ndarray | None = None) -> SyntheticDefect:
    h, w = img.shape[:2]
    side = max(2, int(round(size * min(h, w))))
    aspect = float(rng.uniform(0.5, 2.0))
    ph = max(2, min(h - 1, int(round(side * math.sqrt(aspect)))))
    pw = max(2, min(w - 1, int(round(side / math.sqrt(aspect)))))
    src = _like(img, donor)
    sy, sx = _place(rng, h, w, ph, pw, source)
    patch = src[sy:sy + ph, sx:sx + pw]
    if rng.random() < 0.5 and ph <= w - 1 and pw <= h - 1:
        patch = np.rot90(patch)
    ph, pw = patch.shape[:2]
    ty, tx = _place(rng, h, w, ph, pw, where)
    out = img.copy()
    out[ty:ty + ph, tx:tx + pw] = patch
    mask = np.zeros((h, w), bool)
    mask[ty:ty + ph, tx:tx + pw] = True
    return SyntheticDefect(out, mask, "cutpaste", size)


def perlin_blob(img: np.ndarray, donor: np.ndarray, size: float, rng: np.random.Generator,
                where: np.ndarray | None = None, source: np.ndarray | None = None) -> SyntheticDefect:
    h, w = img.shape[:2]
    side = max(4, int(round(size * min(h, w))))
    side = min(side, h, w)
    for _ in range(8):  # a blob needs some area: draw again when the threshold leaves little
        noise = perlin((side, side), int(rng.integers(2, 5)), rng)
        blob = noise > float(rng.uniform(0.1, 0.4))
        # keep it inside the square's inscribed disc so that it is a blob, not a square's corner
        yy, xx = np.mgrid[:side, :side]
        blob &= (yy - (side - 1) / 2) ** 2 + (xx - (side - 1) / 2) ** 2 <= (side / 2) ** 2
        if blob.sum() >= max(4, 0.08 * side * side):
            break
    else:
        blob = np.zeros((side, side), bool)
        blob[side // 4:side - side // 4, side // 4:side - side // 4] = True
    ty, tx = _place(rng, h, w, side, side, where)
    src = _like(img, donor)
    sy, sx = _place(rng, h, w, side, side, source)
    fill = src[sy:sy + side, sx:sx + side]
    shift = float(rng.uniform(0.2, 0.4)) * (1.0 if rng.random() < 0.5 else -1.0)
    fill = np.clip(fill + shift, 0.0, 1.0)
    beta = float(rng.uniform(0.6, 1.0))
    out = img.copy()
    region = out[ty:ty + side, tx:tx + side]
    region[blob] = (1 - beta) * region[blob] + beta * fill[blob]
    mask = np.zeros((h, w), bool)
    mask[ty:ty + side, tx:tx + side] = blob
    return SyntheticDefect(out, mask, "perlin", size)


def synthetic_defects(images: Sequence[np.ndarray], seed: int = 0, sizes: Sequence[float] = SIZES,
                      kinds: Sequence[str] = KINDS) -> list[SyntheticDefect]:
    """One defect of every kind and size in each of ``images`` (good images, at least 2: the
    content of a defect comes from another of them), in the order image, size, kind. Seeded:
    the same images and seed give the same defects."""
    regions = part_regions(images)
    return [synthetic_defect(images, k, seed, sizes, kinds, regions)
            for k in range(len(images) * len(sizes) * len(kinds))]


def part_regions(images: Sequence[np.ndarray]) -> list[np.ndarray | None]:
    """Each image's part on a plain ground (:func:`core.data.ground.part_region`), found once for
    all the defects drawn in and from it (41 ms for a 900 px image here; a self-check draws six in
    each and takes content from others)."""
    return [part_region(np.asarray(img, np.float32)) for img in images]


def synthetic_defect(images: Sequence[np.ndarray], k: int, seed: int = 0, sizes: Sequence[float] = SIZES,
                     kinds: Sequence[str] = KINDS, regions: Sequence[np.ndarray | None] | None = None) -> SyntheticDefect:
    """The ``k``-th defect of :func:`synthetic_defects` alone (a caller that scores them a few at
    a time never holds them all: at 900 px, 20 images' 120 defects are 1.2 GB). ``regions``:
    :func:`part_regions` of ``images``, found once by a caller that draws many defects (the same
    defects as without)."""
    if len(images) < 2:
        raise ValueError("synthetic defects need at least 2 good images (one lends the other its content)")
    unknown = set(kinds) - set(KINDS)
    if unknown:
        raise ValueError(f"unknown synthetic defect kinds {sorted(unknown)} (known: {', '.join(KINDS)})")
    makers = {"cutpaste": cutpaste, "perlin": perlin_blob}
    i, rest = divmod(k, len(sizes) * len(kinds))
    size, kind = sizes[rest // len(kinds)], kinds[rest % len(kinds)]
    rng = _rng(seed, i, size, kind)
    j = int(rng.integers(0, len(images) - 1))
    d = j if j < i else j + 1
    img, donor = np.asarray(images[i], np.float32), np.asarray(images[d], np.float32)
    where = part_region(img) if regions is None else regions[i]
    # the content from the donor's part, in the donor as the makers see it (_like: at the image's
    # size and channels; a donor of the same shape is itself)
    source = None
    if where is not None:
        source = regions[d] if regions is not None and donor.shape == img.shape else part_region(_like(img, donor))
    return makers[kind](img, donor, size, rng, where, source)
