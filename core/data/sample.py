"""A generated sample batch so the application has something to show on a fresh machine.

Synthetic machined washers on a grey background, photographed from a fixed camera: the
part is aligned from image to image (as on a fixture), with mild lighting and noise
variation. ``good/`` holds defect-free parts for training; ``batch/`` a mix of good ones and
parts with a scratch, a dark spot or a chipped edge, named after what is wrong with them,
plus ``masks/`` (beside ``batch/``) with the ground truth.
"""

from __future__ import annotations

import os
from pathlib import Path

import cv2
import numpy as np

SIZE = 160
DEFECTS = ("scratch", "spot", "chip")


def _part(rng: np.random.Generator) -> np.ndarray:
    yy, xx = np.mgrid[0:SIZE, 0:SIZE].astype(np.float32)
    c = SIZE / 2 + rng.normal(0, 0.4, 2)
    r = np.hypot(yy - c[0], xx - c[1])
    img = np.full((SIZE, SIZE), 0.35, np.float32)
    ring = (r < SIZE * 0.40) & (r > SIZE * 0.16)
    shade = 0.65 + 0.08 * np.cos(np.arctan2(yy - c[0], xx - c[1]))  # directional light
    img[ring] = shade[ring]
    img[(r <= SIZE * 0.16)] = 0.12  # the hole
    img *= rng.uniform(0.95, 1.05)  # exposure
    img += rng.normal(0, 0.015, img.shape).astype(np.float32)
    rgb = np.stack([img * 0.98, img, img * 1.04], axis=2)
    return np.clip(rgb, 0, 1)


def _defect(img: np.ndarray, kind: str, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    mask = np.zeros(img.shape[:2], np.uint8)
    ang = rng.uniform(0, 2 * np.pi)
    cx, cy = SIZE / 2, SIZE / 2
    rad = SIZE * rng.uniform(0.22, 0.34)
    px, py = int(cx + rad * np.cos(ang)), int(cy + rad * np.sin(ang))
    if kind == "scratch":
        dx, dy = int(14 * np.cos(ang + 1.3)), int(14 * np.sin(ang + 1.3))
        cv2.line(mask, (px - dx, py - dy), (px + dx, py + dy), 255, 2)
        img[mask > 0] = img[mask > 0] * 0.45
    elif kind == "spot":
        cv2.circle(mask, (px, py), int(rng.integers(4, 7)), 255, -1)
        img[mask > 0] = 0.15
    else:  # chip: a bite out of the outer edge
        ex, ey = int(cx + SIZE * 0.40 * np.cos(ang)), int(cy + SIZE * 0.40 * np.sin(ang))
        cv2.circle(mask, (ex, ey), 8, 255, -1)
        yy, xx = np.mgrid[0:SIZE, 0:SIZE]
        part = np.hypot(yy - cy, xx - cx) < SIZE * 0.40
        mask = np.where(part, mask, 0).astype(np.uint8)
        img[mask > 0] = 0.35
    return img, mask


def _write(path: Path, rgb: np.ndarray) -> None:
    ok, buf = cv2.imencode(".png", (np.clip(rgb, 0, 1) * 255).round().astype(np.uint8)[:, :, ::-1])
    assert ok
    buf.tofile(str(path))


def generate_sample(folder: str | os.PathLike, n_good: int = 40, n_batch_good: int = 24,
                    n_defect: int = 12, seed: int = 7) -> Path:
    """Write the sample into ``folder`` (created) and return it. Re-running rewrites it identically."""
    root = Path(folder)
    (root / "good").mkdir(parents=True, exist_ok=True)
    (root / "batch").mkdir(parents=True, exist_ok=True)
    (root / "masks").mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for i in range(n_good):
        _write(root / "good" / f"good_{i:03d}.png", _part(rng))
    for i in range(n_batch_good):
        _write(root / "batch" / f"part_{i:03d}_ok.png", _part(rng))
    for i in range(n_defect):
        kind = DEFECTS[i % len(DEFECTS)]
        img, mask = _defect(_part(rng), kind, rng)
        stem = f"part_{n_batch_good + i:03d}_{kind}"
        _write(root / "batch" / f"{stem}.png", img)
        cv2.imencode(".png", mask)[1].tofile(str(root / "masks" / f"{stem}.png"))
    return root


def default_sample_dir() -> Path:
    """Where the sample lives unless told otherwise: the user's data folder."""
    from core.runtime.paths import data_dir

    return data_dir() / "sample"
