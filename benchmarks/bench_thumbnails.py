"""Micro-benchmark: thumbnail generation (read an image, shrink it to 128 px on the long side).

Compares the plain way (``read_image`` then ``cv2.resize`` with INTER_AREA) with decoding at
reduced size (``cv2.IMREAD_REDUCED_*``: JPEG decodes straight at 1/2, 1/4 or 1/8 scale;
PNG decodes fully, then subsamples), both ending in a uint8 thumbnail of the same size.

    .venv/bin/python benchmarks/bench_thumbnails.py [--n 48] [--size 128] [--repeat 3]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import cv2
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks._common import DATASETS, machine, summary, timed  # noqa: E402
from benchmarks.bench_decode import sets  # noqa: E402
from core.data.images import read_image  # noqa: E402


def _fit(img: np.ndarray, size: int) -> np.ndarray:
    h, w = img.shape[:2]
    scale = size / max(h, w)
    if scale >= 1.0:
        return img
    return cv2.resize(img, (max(1, round(w * scale)), max(1, round(h * scale))), interpolation=cv2.INTER_AREA)


def thumb_plain(path: Path, size: int) -> np.ndarray:
    img = read_image(path)
    return (np.clip(_fit(img, size), 0, 1) * 255).astype(np.uint8)


def thumb_reduced(path: Path, size: int) -> np.ndarray:
    from PIL import Image

    with Image.open(path) as im:  # reads the header only
        long_side = max(im.size)
    flag = cv2.IMREAD_COLOR
    for f, fl in ((8, cv2.IMREAD_REDUCED_COLOR_8), (4, cv2.IMREAD_REDUCED_COLOR_4), (2, cv2.IMREAD_REDUCED_COLOR_2)):
        if long_side // f >= size:  # the largest reduction that keeps >= size pixels
            flag = fl
            break
    img = cv2.imdecode(np.fromfile(path, dtype=np.uint8), flag)
    return _fit(img, size)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=48, help="images per set (default 48)")
    ap.add_argument("--size", type=int, default=128, help="thumbnail long side in pixels (default 128)")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--bottle", type=Path, default=DATASETS / "mvtec_ad" / "bottle")
    ap.add_argument("--mtd", type=Path, default=DATASETS / "mtd")
    args = ap.parse_args()
    print(f"# thumbnail benchmark ({args.size} px long side): {machine()}")
    found = sets(args.n, args.bottle, args.mtd)
    if not found:
        print(f"no data sets found under {args.bottle} or {args.mtd}", file=sys.stderr)
        return 1
    for name, files in found.items():
        print(f"\n{name}: {len(files)} files")
        for label, fn in (("read_image + INTER_AREA resize", thumb_plain), ("IMREAD_REDUCED_* + resize", thumb_reduced)):
            seconds = timed(lambda fn=fn, files=files: [fn(p, args.size) for p in files], args.repeat)
            print(f"  {label:<32} {summary(seconds, len(files))}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
