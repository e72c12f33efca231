"""Micro-benchmark: image decoding throughput of ``core.data.images.read_image``.

For MVTec bottle PNGs (900x900 RGB) and MTD JPEGs (grey, ~100-630 px) it times, per image:
reading the bytes, ``cv2.imdecode`` alone, and the whole ``read_image`` (decode + channel
normalisation + float32 in [0, 1]). Files are read once untimed first, so the page cache is
warm and the figures are decoding, not disk.

    .venv/bin/python benchmarks/bench_decode.py [--n 48] [--repeat 3]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import cv2
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks._common import DATASETS, machine, summary, timed  # noqa: E402
from core.data.images import read_image  # noqa: E402


def sets(n: int, bottle: Path, mtd: Path) -> dict[str, list[Path]]:
    out = {}
    if bottle.is_dir():
        out["MVTec bottle png 900x900 RGB"] = sorted((bottle / "train" / "good").glob("*.png"))[:n]
    if mtd.is_dir():
        out["MTD jpg grey (MT_Free)"] = sorted((mtd / "MT_Free" / "Imgs").glob("*.jpg"))[:n]
    return {k: v for k, v in out.items() if v}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=48, help="images per set (default 48)")
    ap.add_argument("--repeat", type=int, default=3, help="timed passes over the set (default 3)")
    ap.add_argument("--bottle", type=Path, default=DATASETS / "mvtec_ad" / "bottle")
    ap.add_argument("--mtd", type=Path, default=DATASETS / "mtd")
    args = ap.parse_args()
    print(f"# decode benchmark: {machine()}")
    found = sets(args.n, args.bottle, args.mtd)
    if not found:
        print(f"no data sets found under {args.bottle} or {args.mtd}", file=sys.stderr)
        return 1
    for name, files in found.items():
        blobs = [np.fromfile(p, dtype=np.uint8) for p in files]
        mean_px = np.mean([read_image(p).shape[0] * read_image(p).shape[1] for p in files[:8]])
        print(f"\n{name}: {len(files)} files, {sum(b.size for b in blobs) / len(files) / 1024:.0f} KiB/file, "
              f"~{mean_px / 1e6:.2f} Mpx/image")
        cases = {
            "read bytes (np.fromfile)": lambda files=files: [np.fromfile(p, dtype=np.uint8) for p in files],
            "cv2.imdecode (uint8, in memory)": lambda blobs=blobs: [cv2.imdecode(b, cv2.IMREAD_UNCHANGED)
                                                                    for b in blobs],
            "read_image (file -> float32)": lambda files=files: [read_image(p) for p in files],
        }
        for label, fn in cases.items():
            print(f"  {label:<34} {summary(timed(fn, args.repeat), len(files))}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
