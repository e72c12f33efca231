"""A diagnostic for the no-fixture MTD: every image turned so that its dominant texture
orientation is the same (fifth session, issue 24).

Each image's orientation is the structure tensor's (the gradient-energy-weighted direction of its
gradients, on a grey copy 256 px on the long side); the image is turned by that angle minus 90
degrees on a canvas that holds all of it (border black), its mask with it. The lines of MTD's
texture then all run one way (up to a half turn), so a detector scored on the result shows what
the rotation itself costs, apart from the scale and the border. No label is used; the angles
go to ``orient.json``.

    python benchmarks/orient_variant.py /work/data/mtd-unaligned2 /work/data/mtd-u2-oriented

A diagnostic, not a product setting: docs/benchmarks.md ("What limits the rotated MTD") says what
it found.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

import cv2
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from unaligned import canvas_size, motion, move_image, move_mask  # noqa: E402


def orientation(img: np.ndarray) -> float:
    """The dominant gradient direction in degrees (-90, 90], image axes (x right, y down)."""
    g = cv2.cvtColor(img, cv2.COLOR_BGR2GRAY) if img.ndim == 3 and img.shape[2] == 3 else img
    if g.ndim == 3:
        g = g[:, :, 0]
    f = 256 / max(g.shape)
    g = cv2.resize(g, (max(1, round(g.shape[1] * f)), max(1, round(g.shape[0] * f))), interpolation=cv2.INTER_AREA)
    g = cv2.GaussianBlur(g.astype(np.float32), (0, 0), 1.0)
    gx = cv2.Sobel(g, cv2.CV_32F, 1, 0, ksize=3)
    gy = cv2.Sobel(g, cv2.CV_32F, 0, 1, ksize=3)
    jxx, jyy, jxy = float((gx * gx).sum()), float((gy * gy).sum()), float((gx * gy).sum())
    return 0.5 * math.degrees(math.atan2(2 * jxy, jxx - jyy))


def turn(img: np.ndarray, angle: float, nearest: bool = False) -> np.ndarray:
    """``img`` turned by ``angle`` on a canvas that holds all of it, the border black (a mask:
    nearest neighbour, the border empty)."""
    h, w = img.shape[:2]
    size = canvas_size((h, w), angle, 0.0, "whole")
    m = motion((h, w), angle, 0.0, 0.0, size)
    return move_mask(img, m, size) if nearest else move_image(img, m, size, fill="black")


def make(src: Path, out: Path) -> dict[str, float]:
    angles: dict[str, float] = {}
    for p in sorted(src.rglob("*.png")):
        rel = p.relative_to(src)
        if rel.parts[0] == "ground_truth":
            continue
        img = cv2.imread(str(p), cv2.IMREAD_UNCHANGED)
        angle = orientation(img) - 90.0
        target = out / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        cv2.imwrite(str(target), turn(img, angle))
        if rel.parts[0] == "test" and rel.parts[1] != "good":
            mask = src / "ground_truth" / rel.parts[1] / f"{p.stem}_mask.png"
            moved = out / "ground_truth" / rel.parts[1] / f"{p.stem}_mask.png"
            moved.parent.mkdir(parents=True, exist_ok=True)
            cv2.imwrite(str(moved), turn(cv2.imread(str(mask), cv2.IMREAD_GRAYSCALE), angle, nearest=True))
        angles[rel.as_posix()] = round(angle, 3)
    (out / "orient.json").write_text(json.dumps(angles, indent=1))
    return angles


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("source", type=Path, help="a data set in the MVTec layout (PNG), e.g. a no-fixture variant")
    ap.add_argument("out", type=Path, help="the turned copy's folder (must not exist)")
    args = ap.parse_args(argv)
    if args.out.exists():
        raise SystemExit(f"{args.out} exists: choose a new folder")
    print(f"{args.out}: {len(make(args.source, args.out))} images")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
